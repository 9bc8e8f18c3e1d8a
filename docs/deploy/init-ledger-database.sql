-- NOT RUN HERE. Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d):
-- the Dagster instance gets POSTGRES_DB (`dagster`), the ledger a database of its own.
CREATE DATABASE ledger;
