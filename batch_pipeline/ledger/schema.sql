-- The ledger's tables, in the SQL DuckDB and PostgreSQL share. Times are epoch seconds (DOUBLE PRECISION) from
-- the caller's clock, so tests can drive them; money is DECIMAL (12 places: a token costs fractions of a micro-dollar), never float.

CREATE TABLE IF NOT EXISTS requests (
    request_id        VARCHAR PRIMARY KEY,   -- = the batch line's custom_id
    session_id        VARCHAR,
    operation         VARCHAR NOT NULL,      -- expand, refine, image, compare, ...
    endpoint          VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    tier              VARCHAR NOT NULL,      -- standard | flex | batch (the tier that runs it next)
    tier_reason       VARCHAR,
    body              JSON NOT NULL,         -- normalised body; images as bp-image: refs
    body_hash         VARCHAR NOT NULL,      -- cache identity
    est_prompt_tokens BIGINT NOT NULL,
    line_bytes        BIGINT NOT NULL,
    state             VARCHAR NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    batch_key         VARCHAR,               -- the batch it is (or was last) a member of
    iteration         INTEGER,               -- with `round`, the session step that asked for it (RoundId)
    round             VARCHAR,               -- the search's round name (text | image | vision)
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    last_error        VARCHAR
);

CREATE TABLE IF NOT EXISTS request_events (
    request_id VARCHAR NOT NULL,
    event_at   DOUBLE PRECISION NOT NULL,
    from_state VARCHAR,
    to_state   VARCHAR NOT NULL,
    batch_key  VARCHAR,
    reason     VARCHAR
);

CREATE TABLE IF NOT EXISTS batches (
    batch_key         VARCHAR PRIMARY KEY,   -- ours; also sent as metadata so we can find it remotely
    endpoint          VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    phase             VARCHAR NOT NULL,      -- intent | uploaded | created | ingested | abandoned
    status            VARCHAR,               -- the remote status, once known
    request_count     INTEGER NOT NULL,
    input_bytes       BIGINT NOT NULL,
    est_prompt_tokens BIGINT NOT NULL,
    input_file_id     VARCHAR,
    openai_batch_id   VARCHAR UNIQUE,
    create_sent_at    DOUBLE PRECISION,                -- when a create request last went out (it may land late)
    output_file_id    VARCHAR,
    error_file_id     VARCHAR,
    completed_count   INTEGER,
    failed_count      INTEGER,
    errors            JSON,
    polls             INTEGER NOT NULL DEFAULT 0,
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    ended_at          DOUBLE PRECISION
);

-- Ledgers made before these columns existed.
ALTER TABLE batches ADD COLUMN IF NOT EXISTS create_sent_at DOUBLE PRECISION;
-- A create that may have landed without an answer: the remote list is swept for its key until then
-- (the API's 24 h window), whatever else is in flight, so a late duplicate is found and accounted.
ALTER TABLE batches ADD COLUMN IF NOT EXISTS sweep_until DOUBLE PRECISION;
-- Ingestion attempts that failed on a permanent-looking error (unreadable file); bounded, never forever.
ALTER TABLE batches ADD COLUMN IF NOT EXISTS ingest_errors INTEGER DEFAULT 0;
-- Set on a remote batch that carries another batch's key (a create that landed late): a duplicate.
ALTER TABLE batches ADD COLUMN IF NOT EXISTS duplicate_of VARCHAR;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS lease_owner VARCHAR;   -- the process running it (sync tiers)
ALTER TABLE requests ADD COLUMN IF NOT EXISTS lease_until DOUBLE PRECISION;    -- after this, a `running` row is lost
-- Ledgers that kept the round as one 'i1-vision' key get the two columns (filled by Ledger._migrate).
ALTER TABLE requests ADD COLUMN IF NOT EXISTS iteration INTEGER;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS round VARCHAR;

-- Lines a duplicate batch ran for requests that had their answer already: paid for, so recorded and
-- costed (the cost report shows them), but not an attempt of the request.
CREATE TABLE IF NOT EXISTS duplicate_results (
    batch_key         VARCHAR NOT NULL,      -- the duplicate batch's row in `batches`
    request_id        VARCHAR NOT NULL,
    outcome           VARCHAR NOT NULL,
    input_tokens      BIGINT NOT NULL DEFAULT 0,
    output_tokens     BIGINT NOT NULL DEFAULT 0,
    images            INTEGER NOT NULL DEFAULT 0,
    cost_usd          DECIMAL(24, 12) NOT NULL DEFAULT 0,
    standard_cost_usd DECIMAL(24, 12) NOT NULL DEFAULT 0,
    recorded_at       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (batch_key, request_id)
);

CREATE TABLE IF NOT EXISTS batch_members (
    batch_key  VARCHAR NOT NULL,
    request_id VARCHAR NOT NULL,
    line_no    INTEGER NOT NULL,             -- 1-based line in the input file (validation errors name lines)
    PRIMARY KEY (batch_key, request_id)
);

CREATE TABLE IF NOT EXISTS results (
    request_id        VARCHAR NOT NULL,
    attempt           INTEGER NOT NULL,
    batch_key         VARCHAR,               -- null for synchronous tiers and cache hits
    tier              VARCHAR NOT NULL,
    outcome           VARCHAR NOT NULL,
    status_code       INTEGER,
    response          JSON,
    error_code        VARCHAR,
    error_message     VARCHAR,
    input_tokens      BIGINT NOT NULL DEFAULT 0,
    cached_tokens     BIGINT NOT NULL DEFAULT 0,
    output_tokens     BIGINT NOT NULL DEFAULT 0,
    images            INTEGER NOT NULL DEFAULT 0,
    cost_usd          DECIMAL(24, 12) NOT NULL DEFAULT 0,
    standard_cost_usd DECIMAL(24, 12) NOT NULL DEFAULT 0,
    price_version     VARCHAR,
    recorded_at       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request_id, attempt)
);

-- Beam-search sessions: the resumable state after every step, and a flat record of candidates
-- and rounds for reports and the UI (rewritten from the state on every save).
CREATE TABLE IF NOT EXISTS sessions (
    session_id  VARCHAR PRIMARY KEY,
    user_prompt VARCHAR NOT NULL,
    config      JSON NOT NULL,                 -- tier mode, deadline, budget, search parameters
    status      VARCHAR NOT NULL,              -- running | completed | failed | cancelled
    state       JSON NOT NULL,                 -- search.SearchState after the last applied step
    iteration   INTEGER NOT NULL,
    next_round  VARCHAR,
    winner_id   VARCHAR,
    error       VARCHAR,
    deadline_at DOUBLE PRECISION NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS candidates (
    session_id   VARCHAR NOT NULL,
    candidate_id VARCHAR NOT NULL,
    iteration    INTEGER NOT NULL,
    parent_id    VARCHAR,
    what         VARCHAR,
    how          VARCHAR,
    combined     VARCHAR,
    critique     VARCHAR,
    image_path   VARCHAR,
    failed       BOOLEAN NOT NULL,
    score        DOUBLE PRECISION,                       -- combined Bradley-Terry score in the iteration it was ranked last
    rank         INTEGER,
    survived     BOOLEAN,
    votes_won    INTEGER,
    votes_lost   INTEGER,
    PRIMARY KEY (session_id, candidate_id)
);

CREATE TABLE IF NOT EXISTS rounds (
    session_id    VARCHAR NOT NULL,
    iteration     INTEGER NOT NULL,
    round         VARCHAR NOT NULL,            -- text | image | vision
    seq           INTEGER,                     -- the round's place in the session, 0 first
    calls         INTEGER NOT NULL,
    succeeded     INTEGER NOT NULL,
    failed        INTEGER NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd          DECIMAL(24, 12) NOT NULL,
    standard_cost_usd DECIMAL(24, 12) NOT NULL,
    PRIMARY KEY (session_id, iteration, round)
);
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS seq INTEGER;  -- ledgers made before rounds kept their order


-- A batch we cancelled because it ran past its round's deadline: its members that never ran go to this
-- tier (flex or standard, per BATCH_FALLBACK_TO_STANDARD) instead of ending cancelled, with the reason.
ALTER TABLE batches ADD COLUMN IF NOT EXISTS deadline_tier VARCHAR;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS deadline_reason VARCHAR;
-- When the session's current round is due (deadlines.py plans it); the Dagster sensor ticks once it passes.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS round_due_at DOUBLE PRECISION;

-- Observed batch turnaround (create sent -> seen completed), by model, endpoint and size: the basis of
-- completion estimates and of the tier policy's expected wait. Duplicates and batches we cancelled are no sample.
CREATE OR REPLACE VIEW batch_turnaround AS
    SELECT model, endpoint, request_count, ended_at - coalesce(create_sent_at, created_at) AS seconds, ended_at
    FROM batches
    WHERE status = 'completed' AND ended_at IS NOT NULL AND duplicate_of IS NULL AND deadline_tier IS NULL;

-- Every line that was (or would have been) paid: each attempt's result row, and each line a duplicate batch ran
-- (paid for, answer not needed). The one source of money: the cost figures, a session's tiers and rounds, the
-- CLI summary and the cost report all aggregate this view. `tier` is 'duplicate' for a duplicate batch's line,
-- 'lost' for an answer lost in flight (its cost estimated); `counted_tier` is the tier it ran on in either case.
CREATE OR REPLACE VIEW spend AS
    SELECT q.session_id, q.iteration, q.round, q.model, q.operation, r.request_id,
           CASE WHEN r.price_version LIKE 'estimate:%' THEN 'lost' ELSE r.tier END AS tier, r.tier AS counted_tier,
           r.outcome, r.input_tokens, r.output_tokens, r.images, r.cost_usd, r.standard_cost_usd,
           coalesce(r.price_version LIKE 'unpriced:%' OR r.price_version LIKE 'estimate:unpriced:%', false) AS unpriced,
           r.recorded_at
    FROM results r JOIN requests q USING (request_id)
    UNION ALL
    SELECT q.session_id, q.iteration, q.round, q.model, q.operation, d.request_id, 'duplicate', 'batch', d.outcome,
           d.input_tokens, d.output_tokens, d.images, d.cost_usd, d.standard_cost_usd, false, d.recorded_at
    FROM duplicate_results d JOIN requests q USING (request_id);
