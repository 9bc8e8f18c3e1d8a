"""Asset checks of the tick run: the rounds it applied are complete, the ledger's invariants hold, sessions stay
within budget.

The tick run evaluates them on its own ledger connection and reports them on its assets: a session
whose applied rounds still have open requests (a corrupt step) gets no views recorded; the budget is a
warning.
"""

import dagster as dg

from batch_pipeline.batching.pricing import format_usd
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reader import LedgerReader

ROUNDS_TERMINAL = dg.AssetCheckSpec(
    "applied_rounds_terminal",
    asset="session_steps",
    description="Every request of the applied rounds of each session the tick moved reached a terminal state: "
    "a round is only applied once all its answers are in, so anything else means a corrupt step "
    "(that session's views are not recorded).",
)
BUDGETS = dg.AssetCheckSpec(
    "session_budgets",
    asset="session_steps",
    description="Each session the tick moved is within its optional budget_usd. The budget is a hard stop in "
    "the core (a round that would exceed it is never sent); this check shows any breach.",
)
INVARIANTS = dg.AssetCheckSpec(
    "ledger_invariants",
    asset="batch_results",
    blocking=True,
    description="The ledger's invariants hold (no request finished twice, none left in a finished batch, no "
    "remote batch recorded twice) and no custom_id is live in two batches.",
)
TICK_CHECKS = [ROUNDS_TERMINAL, BUDGETS, INVARIANTS]


def rounds_terminal_result(corrupt: dict[str, dict[str, dict[str, int]]], checked: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=ROUNDS_TERMINAL.name,
        asset_key=ROUNDS_TERMINAL.asset_key,
        passed=not corrupt,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if not corrupt else f"applied rounds with unfinished requests: {corrupt}",
        metadata={"sessions_checked": checked, "sessions_with_open_requests": len(corrupt)},
    )


def budgets_result(reader: LedgerReader, session_ids: list[str]) -> dg.AssetCheckResult:
    over = {}
    for session_id, budget in reader.session_budgets(session_ids).items():
        paid = reader.cost_figures(session_id=session_id).paid
        if paid > budget:
            over[session_id] = f"spent {format_usd(paid)} of a {format_usd(budget)} budget"
    return dg.AssetCheckResult(
        check_name=BUDGETS.name,
        asset_key=BUDGETS.asset_key,
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{s}: {w}" for s, w in over.items()) or None,
        metadata={"sessions_checked": len(session_ids), "over_budget": len(over)},
    )


def invariants_result(ledger: Ledger, reader: LedgerReader) -> dg.AssetCheckResult:
    problems = ledger.check_invariants()
    problems += [f"custom_id {rid} is a member of {n} live batches" for rid, n in reader.live_duplicate_members()]
    return dg.AssetCheckResult(
        check_name=INVARIANTS.name,
        asset_key=INVARIANTS.asset_key,
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems[:10]) or None,
        metadata={"violations": len(problems)},
    )
