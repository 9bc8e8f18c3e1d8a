"""Asset checks: a step's rounds are complete, the ledger's invariants hold, a session stays within budget.

Blocking ERROR checks stop the views (or the next stage) from rendering a corrupt round; the budget is a warning.
"""

import warnings

import dagster as dg

from batch_pipeline.batching.pricing import format_usd
from batch_pipeline.defs.batch_assets import batch_results
from batch_pipeline.defs.launch import SESSIONS
from batch_pipeline.defs.resources import LEDGER_POOL, LedgerResource
from batch_pipeline.defs.session_assets import queued_requests
from batch_pipeline.ledger.states import TERMINAL_REQUEST_STATES

_TERMINAL = {str(s) for s in TERMINAL_REQUEST_STATES}

# Checks per session partition are "preview" in Dagster 1.13; without a partition the checks could not
# say which session they judged. The warning would be printed by every process that loads the code.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)


@dg.asset_check(asset=queued_requests, partitions_def=SESSIONS, blocking=True, pool=LEDGER_POOL,
                description="Every request of the session's applied rounds reached a terminal state: a round is "
                            "only applied once all its answers are in, so anything else means a corrupt step.")
def queued_requests_rounds_terminal_check(context: dg.AssetCheckExecutionContext,
                                          ledger: LedgerResource) -> dg.AssetCheckResult:
    session_id = context.partition_key
    applied = {f"i{r['iteration']}-{r['round']}" for r in ledger.ledger().session_rounds(session_id)}
    states = ledger.reader(lock_timeout_s=10.0).round_request_states(session_id)
    open_requests = {key: {s: n for s, n in by_state.items() if s not in _TERMINAL}
                     for key, by_state in states.items() if key in applied}
    open_requests = {key: v for key, v in open_requests.items() if v}
    return dg.AssetCheckResult(
        passed=not open_requests, severity=dg.AssetCheckSeverity.ERROR,
        description=None if not open_requests else f"applied rounds with unfinished requests: {open_requests}",
        metadata={"applied_rounds": len(applied), "rounds_with_open_requests": len(open_requests)})


def _invariants_result(ledger: LedgerResource) -> dg.AssetCheckResult:
    problems = ledger.ledger().check_invariants()
    duplicates = ledger.reader(lock_timeout_s=10.0).live_duplicate_members()
    problems += [f"custom_id {rid} is a member of {n} live batches" for rid, n in duplicates]
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems[:10]) or None, metadata={"violations": len(problems)})


@dg.asset_check(asset=queued_requests, partitions_def=SESSIONS, blocking=True, pool=LEDGER_POOL,
                description="The ledger's invariants hold (no request finished twice, none left in a finished "
                            "batch, no remote batch recorded twice) and no custom_id is live in two batches.")
def queued_requests_ledger_invariants_check(ledger: LedgerResource) -> dg.AssetCheckResult:
    return _invariants_result(ledger)


@dg.asset_check(asset=queued_requests, partitions_def=SESSIONS, pool=LEDGER_POOL,
                description="The session's spend so far is within its optional budget_usd. The budget is a hard "
                            "stop in the core (a round that would exceed it is never sent); this check shows the margin.")
def queued_requests_budget_check(context: dg.AssetCheckExecutionContext, ledger: LedgerResource) -> dg.AssetCheckResult:
    session_id = context.partition_key
    reader = ledger.reader(lock_timeout_s=10.0)
    paid, standard, avoided = reader.session_spend(session_id)
    budget = reader.session_budget(session_id)
    metadata = {"spent_usd": float(paid), "standard_price_usd": float(standard), "cache_avoided_usd": float(avoided),
                "budget_usd": float(budget) if budget is not None else "none"}
    return dg.AssetCheckResult(
        passed=budget is None or paid <= budget, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
        description=None if budget is None or paid <= budget else f"spent {format_usd(paid)} of a {format_usd(budget)} budget")


@dg.asset_check(asset=batch_results, blocking=True, pool=LEDGER_POOL,
                description="The ledger's invariants hold after ingestion; a violation stops anything downstream.")
def batch_results_invariants_check(ledger: LedgerResource) -> dg.AssetCheckResult:
    return _invariants_result(ledger)


ALL_CHECKS = [queued_requests_rounds_terminal_check, queued_requests_ledger_invariants_check,
              queued_requests_budget_check, batch_results_invariants_check]
