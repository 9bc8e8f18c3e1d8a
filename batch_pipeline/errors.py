"""The project's errors and the one rule for which of them, and of the libraries', are worth waiting out.

Every error the project raises descends from one root; a `Transient` one is waited out, never fatal:

    BatchPipelineError
    ├── SettingsError (ValueError)        settings.py: a variable or option is invalid, named
    ├── ApiConfigError (ValueError)       api/app.py: the API's security settings do not fit the bind address
    ├── RequestValidationError (ValueError)  batching/requests.py: a request the API would refuse
    ├── UnknownPriceError (LookupError)   batching/pricing.py: a model or size the catalog does not price
    ├── UnpricedModelError (ValueError)   batching/pricing.py: a session names such a model: refused at launch
    ├── ResultFileError (ValueError)      batching/results.py: a result line that cannot be read
    ├── SessionConflict (ValueError)      sessions.py: a session id reused with other settings
    ├── SearchFailed                      search/steps.py: a round cannot go on (too few answers)
    ├── LedgerError                       the ledger refused an operation
    │   ├── StateTransitionError          a state change the state machines do not allow: a bug
    │   └── LedgerBusy (Transient)        a writer held the ledger longer than a reader would wait
    └── Transient                         the marker: waiting and trying again may succeed
        └── DownloadIncomplete (IOError)  a result file arrived shorter than the API said it is

How the libraries' errors are read, by every driver, the batch core and the API:

    transient   (is_transient)   the API unreachable, timing out, 429/5xx, a 409 race; the ledger held by
                                 another process or its server unreachable; a write that lost a conflict
                                 (is_write_conflict); a download cut short -> back off and try again
    permanent   (is_permanent_ingest_error)  a batch's result file gone (404) -> end that batch, not the others
    fatal       (is_auth_error)  the API refuses the key (401/403) -> the sessions end `failed` with the reason
    anything else is a bug: it propagates with its traceback.
"""

from __future__ import annotations

# The classes import nothing, so the pure search can raise them; the rules import the libraries they read.


class BatchPipelineError(Exception):
    """The root of every error this project raises."""


class Transient(BatchPipelineError):
    """Marks an error that waiting and trying again may clear; `is_transient` says yes to all of them."""


class LedgerError(BatchPipelineError):
    """The ledger refused an operation."""


class StateTransitionError(LedgerError):
    """A change the state machine does not allow: a bug, never silently ignored."""


class LedgerBusy(LedgerError, Transient):
    """A writer held the ledger for longer than the reader was willing to wait."""


class DownloadIncomplete(Transient, IOError):
    """A result file arrived shorter than the API said it is (large downloads break mid-stream)."""


def is_lock_error(exc: BaseException) -> bool:
    """The ledger cannot be opened now: another process holds the DuckDB file (its single-writer lock), or the
    PostgreSQL server does not answer (restarting, or out of connections). Worth a short, bounded retry."""
    import duckdb
    import psycopg

    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.TransactionRollback):
        return True
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def is_transient(exc: BaseException) -> bool:
    """Waiting and trying again may succeed; nothing is lost by doing so."""
    import openai

    if isinstance(
        exc,
        (
            openai.APIConnectionError,
            openai.APITimeoutError,
            openai.InternalServerError,
            openai.RateLimitError,
            openai.ConflictError,
            Transient,
        ),
    ):
        return True
    if is_lock_error(exc):
        return True
    return is_write_conflict(exc)


def is_write_conflict(exc: BaseException) -> bool:
    """Two writers changed the same rows at once and this one lost: its transaction was rolled back whole, as
    if it had never started (DuckDB: two connections of one process updating one row; PostgreSQL: a
    SERIALIZABLE transaction that could not be ordered, or a deadlock). Trying again is safe."""
    import duckdb
    import psycopg

    if isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower():
        return True
    return isinstance(exc, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected))


def is_ledger_busy(exc: BaseException) -> bool:
    """Another process holds the ledger (DuckDB admits one writer): wait, don't fail."""
    return isinstance(exc, LedgerBusy) or is_lock_error(exc)


def is_permanent_ingest_error(exc: BaseException) -> bool:
    """Reading a batch's results can never succeed: its file is gone or refused."""
    import openai

    return isinstance(exc, (openai.NotFoundError, openai.PermissionDeniedError, openai.BadRequestError))


def is_auth_error(exc: BaseException) -> bool:
    """The API does not accept our credentials: no retry will help; the user must fix the key."""
    import openai

    return isinstance(exc, openai.AuthenticationError)
