"""Which errors are worth waiting out: the one rule every driver, the batch core and the API ask.

    transient   (is_transient)   the API unreachable, timing out, 429/5xx, a 409 race; the ledger held by
                                 another process; a download cut short -> back off and try again
    permanent   (is_permanent_ingest_error)  a batch's result file gone (404) -> end that batch, not the others
    fatal       (is_auth_error)  the API refuses the key (401/403) -> the sessions end `failed` with the reason
    anything else is a bug: it propagates with its traceback.
"""
from __future__ import annotations

import duckdb
import openai

from batch_pipeline.ledger.db import is_lock_error

_TRANSIENT_API = (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                  openai.RateLimitError, openai.ConflictError)


class DownloadIncomplete(IOError):
    """A result file arrived shorter than the API said it is (large downloads break mid-stream)."""


def is_transient(exc: BaseException) -> bool:
    """Waiting and trying again may succeed; nothing is lost by doing so."""
    if isinstance(exc, (*_TRANSIENT_API, DownloadIncomplete)):
        return True
    if is_lock_error(exc) or is_ledger_busy(exc):
        return True
    # Two connections of one process updating one row: the loser is told to try again.
    return isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()


def is_ledger_busy(exc: BaseException) -> bool:
    """Another process holds the ledger (DuckDB admits one writer): wait, don't fail."""
    from batch_pipeline.ledger.reports import LedgerBusy  # the read-only reader's own error

    return isinstance(exc, LedgerBusy) or is_lock_error(exc)


def is_permanent_ingest_error(exc: BaseException) -> bool:
    """Reading a batch's results can never succeed: its file is gone or refused."""
    return isinstance(exc, (openai.NotFoundError, openai.PermissionDeniedError, openai.BadRequestError))


def is_auth_error(exc: BaseException) -> bool:
    """The API does not accept our credentials: no retry will help; the user must fix the key."""
    return isinstance(exc, openai.AuthenticationError)
