"""Round executor: a search round's Calls -> ledger requests on the chosen tier -> CallResults.

Every call, whatever its tier, is a ledger request, so accounting, the response cache and
resumption work the same on all tiers. `submit` is idempotent (custom ids are derived from the
call keys), `pending` says whether the round is still waiting, `collect` reads its results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TypeGuard

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.batching.requests import ChatRequest, ImageRequest, QueuedRequest, build_request, make_custom_id
from batch_pipeline.estimates import request_cost
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.states import TERMINAL_REQUEST_STATES
from batch_pipeline.providers.capabilities import providers_for
from batch_pipeline.providers.sync_tiers import SyncTierRunner
from batch_pipeline.providers.tier_policy import TierMode, TierPolicy
from batch_pipeline.records import RequestOutcome
from batch_pipeline.search.calls import Call, CallResult, ImageCall
from batch_pipeline.vocabulary import Endpoint, Outcome, RoundId, Tier

log = logging.getLogger(__name__)

CONTENT_POLICY_CODES = {"content_policy_violation", "moderation_blocked"}


class RoundExecutor:
    def __init__(
        self,
        ledger: Ledger,
        sync_runner: SyncTierRunner,
        *,
        image_store: ImageStore,
        catalog: PriceCatalog,
        policy: TierPolicy,
        max_attempts: int = 3,
        rephrase_model: str = "gpt-4o-mini",
        clock: Callable[[], float] = time.time,
    ):
        self.ledger = ledger
        self.sync = sync_runner
        self.image_store = image_store
        self.catalog = catalog
        self.policy = policy
        self.max_attempts = max_attempts
        self.rephrase_model = rephrase_model
        self.clock = clock
        self.providers = providers_for(image_store)

    # -- submit -----------------------------------------------------------------------------

    def plan(
        self,
        session_id: str,
        calls: Sequence[Call],
        *,
        mode: TierMode,
        deadline_at: float,
        round_id: RoundId | None = None,
        turnaround: dict[tuple[str, str], tuple[float, int]] | None = None,
    ) -> list[QueuedRequest]:
        """A round's calls as requests on the tier the policy picks for the time this round has
        (`deadline_at`: the round's planned deadline) and the ledger's observed batch turnaround (read
        here unless a caller planning many rounds passes it, read once)."""
        seconds_left = deadline_at - self.clock()
        turnaround = self.ledger.observed_turnaround() if turnaround is None else turnaround
        by_operation: dict[str, list[Call]] = {}
        for call in calls:
            by_operation.setdefault(call.operation, []).append(call)
        requests: list[QueuedRequest] = []
        for operation, group in by_operation.items():
            endpoint = Endpoint.IMAGES if group[0].kind == "image" else Endpoint.CHAT
            observed = turnaround.get((group[0].model, str(endpoint)), (None, 0))[0]
            choice = self.policy.choose(
                mode=mode,
                operation=operation,
                model=group[0].model,
                round_size=len(calls),
                seconds_left=seconds_left,
                catalog=self.catalog,
                observed_s=observed,
            )
            requests += [self._request(session_id, call, choice.tier, choice.reason, round_id) for call in group]
        return requests

    def estimate_cost(self, requests: Sequence[QueuedRequest]) -> Decimal:
        """What these requests will likely cost on their tiers; what the cache will answer costs nothing."""
        hits = self.ledger.find_cached_results([r.body_hash for r in requests])
        history = self.ledger.observed_output_tokens()
        return sum((request_cost(r, self.catalog, history) for r in requests if r.body_hash not in hits), Decimal(0))

    def submit(
        self,
        session_id: str,
        calls: Sequence[Call],
        *,
        mode: TierMode,
        deadline_at: float,
        round_id: RoundId | None = None,
        requests: Sequence[QueuedRequest] | None = None,
    ) -> list[str]:
        """Queue a round's calls (once), answer what the cache can, run what is synchronous."""
        if not calls:
            return []
        if requests is None:
            requests = self.plan(session_id, calls, mode=mode, deadline_at=deadline_at, round_id=round_id)
        new_ids = set(self.ledger.enqueue(requests))
        self.answer_from_cache([r for r in requests if r.request_id in new_ids])
        self.run_sync(session_id)
        return [r.request_id for r in requests]

    def _request(self, session_id: str, call: Call, tier: Tier, reason: str, round_id: RoundId | None) -> QueuedRequest:
        request: ChatRequest | ImageRequest = self.providers[call.kind].to_request(call)
        return build_request(
            request,
            namespace="",
            operation=call.operation,
            session_id=session_id,
            tier=tier,
            tier_reason=reason,
            round_id=round_id,
            image_store=self.image_store,
        )

    def answer_from_cache(self, requests: Sequence[QueuedRequest]) -> set[str]:
        """Identical bodies answered before cost nothing now (ensemble votes and siblings carry nonces,
        so they never collide with each other and stay independent samples). Returns the ids answered."""
        if not requests:
            return set()
        hits = self.ledger.find_cached_results([r.body_hash for r in requests])
        cached = [(r, hits[r.body_hash]) for r in requests if r.body_hash in hits]
        if not cached:
            return set()
        self.ledger.start_sync(
            [r.request_id for r, _ in cached], Tier.CACHE, "cache: an identical request was answered before"
        )
        outcomes = [
            RequestOutcome(
                request_id=r.request_id,
                outcome=Outcome.SUCCEEDED,
                status_code=200,
                response=hit.response,
                cost_usd=0,
                standard_cost_usd=hit.standard_cost_usd,
                price_version=hit.price_version,
            )
            for r, hit in cached
        ]
        self.ledger.record_sync_outcomes(
            outcomes,
            Tier.CACHE,
            max_attempts=self.max_attempts,
            reason="cache: identical body answered as " + ", ".join(h.request_id for _, h in cached[:3]),
        )
        return {r.request_id for r, _ in cached}

    def run_sync(self, session_id: str) -> None:
        """Run every queued standard/flex request of the session (including fallbacks and retries).

        One query finds both tiers' requests: a batch-tier session, which has none, costs one look."""
        for _ in range(self.max_attempts):  # retryable failures come back queued: bounded by attempts
            rows = self.ledger.queued_rows(tier=(Tier.STANDARD, Tier.FLEX), session_id=session_id)
            if not rows:
                break
            for tier in (Tier.STANDARD, Tier.FLEX):
                if ids := [r.request_id for r in rows if r.tier == tier]:
                    self.sync.run(ids, tier)

    def apply_fallback(self, session_id: str, *, deadline_at: float) -> list[str]:
        """Requests back from a failed/expired batch go to standard when another batch won't do."""
        moved = []
        seconds_left = deadline_at - self.clock()
        for row in self.ledger.queued_rows(tier=Tier.BATCH, session_id=session_id, retried=True):
            choice = self.policy.fallback(
                attempts=row.attempts, max_attempts=self.max_attempts, seconds_left=seconds_left
            )
            if choice is not None:
                self.ledger.requeue([row.request_id], tier=choice.tier, reason=choice.reason)
                moved.append(row.request_id)
        if moved:
            log.info("session %s: %d requests fall back to standard", session_id, len(moved))
            self.run_sync(session_id)
        return moved

    # -- wait and collect ---------------------------------------------------------------------

    def pending(self, calls: Sequence[Call]) -> int:
        """How many of the round's requests have not reached a terminal state."""
        states = self.ledger.request_states([self.request_id(c) for c in calls])
        return sum(1 for c in calls if states.get(self.request_id(c)) not in TERMINAL_REQUEST_STATES)

    def collect(
        self,
        calls: Sequence[Call],
        *,
        finals: dict[str, RequestOutcome] | None = None,
        tiers: dict[str, str] | None = None,
    ) -> dict[str, CallResult]:
        """The round's results by call key (`finals` and their `tiers`: read here unless a caller collecting
        many rounds passes them, read once)."""
        ids = {self.request_id(c): c for c in calls}
        if finals is None:
            finals = self.ledger.final_results(list(ids))
        if tiers is None:
            tiers = {rid: row.tier for rid, row in self.ledger.request_rows(list(finals)).items()}
        results = {}
        for rid, call in ids.items():
            outcome = finals.get(rid) or RequestOutcome(
                request_id=rid, outcome=Outcome.FAILED_PERMANENT, error_message="no result recorded"
            )
            tier = tiers.get(rid)
            results[call.key] = self.providers[call.kind].to_result(call, outcome, tier)
        return results

    def retry_refused_images(
        self, session_id: str, calls: Sequence[Call], results: dict[str, CallResult]
    ) -> dict[str, CallResult]:
        """An image refused for content policy gets one rephrase and one retry, on standard: it is the
        exception path, and two more batches would cost a whole extra round. The candidate keeps its
        prompt; the image is drawn from the rephrased one."""
        for call in calls:
            if not refused_for_content(call, results[call.key]):
                continue
            rephrased = self._run_now(
                session_id,
                "rephrase",
                ChatRequest(
                    key=f"{call.key}-rph",
                    model=self.rephrase_model,
                    max_completion_tokens=400,
                    messages=[
                        {
                            "role": "system",
                            "content": "Rewrite this image prompt so it keeps the scene and style "
                            "but avoids anything a content policy could refuse. Answer with the prompt only.",
                        },
                        {"role": "user", "content": call.prompt},
                    ],
                ),
            )
            if rephrased is None or rephrased.response is None:
                continue
            retry = call.model_copy(
                update={
                    "key": f"{call.key}-rt",
                    "prompt": rephrased.response["choices"][0]["message"]["content"].strip(),
                }
            )
            outcome = self._run_now(session_id, "image", self.providers["image"].to_request(retry))
            if outcome is not None:
                results[call.key] = (
                    self.providers["image"].to_result(retry, outcome, "standard").model_copy(update={"key": call.key})
                )
        return results

    def _run_now(self, session_id: str, operation: str, request: ChatRequest | ImageRequest) -> RequestOutcome | None:
        """Run one request on standard now (once: a resumed step finds it in the ledger); its success or None."""
        queued = build_request(
            request,
            namespace="",
            operation=operation,
            session_id=session_id,
            tier=Tier.STANDARD,
            tier_reason="content-policy rephrase and retry",
            image_store=self.image_store,
        )
        if self.ledger.enqueue([queued]):
            self.sync.run([queued.request_id], Tier.STANDARD)
        final = self.ledger.final_results([queued.request_id]).get(queued.request_id)
        return final if final is not None and final.outcome == Outcome.SUCCEEDED else None

    @staticmethod
    def request_id(call: Call) -> str:
        return make_custom_id("", call.key)


def refused_for_content(call: Call, result: CallResult) -> TypeGuard[ImageCall]:
    """An image call the API refused for its content (`retry_refused_images` rephrases and retries it)."""
    return (
        isinstance(call, ImageCall) and not result.ok and any(c in (result.error or "") for c in CONTENT_POLICY_CODES)
    )
