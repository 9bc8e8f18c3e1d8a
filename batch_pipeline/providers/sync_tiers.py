"""The synchronous tiers: standard and flex calls made now, recorded in the ledger like batch results.

Flex (`service_tier="flex"`) is billed at batch rates but may answer 429 "resource unavailable";
such calls are backed off a few times and then run on standard, and the ledger says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import openai
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.leases import DEFAULT_LEASE_S, owner_is_dead, this_process
from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.batching.requests import resolve_image_refs
from batch_pipeline.batching.results import RETRYABLE_STATUS, estimate_lost, price_outcome, store_images
from batch_pipeline.failpoints import failpoint
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.ledger import RequestRow
from batch_pipeline.records import RequestOutcome
from batch_pipeline.vocabulary import Endpoint, Outcome, Tier

log = logging.getLogger(__name__)

# Flex calls may queue for minutes before the model runs: OpenAI suggests ~15 minute timeouts.
FLEX_TIMEOUT_S = 900.0


class SyncTierRunner:
    """Runs queued standard/flex requests with bounded concurrency and records each outcome."""

    def __init__(
        self,
        client: openai.OpenAI,
        ledger: Ledger,
        *,
        image_store: ImageStore,
        catalog: PriceCatalog,
        max_attempts: int = 3,
        concurrency: int = 4,
        flex_attempts: int = 3,
        flex_backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        lease_s: float = DEFAULT_LEASE_S,
    ):
        self.client = client
        self.ledger = ledger
        self.image_store = image_store
        self.catalog = catalog
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.flex_attempts = flex_attempts
        self.flex_backoff_s = flex_backoff_s
        self.sleep = sleep
        self.lease_s = lease_s

    def run(self, request_ids: Sequence[str], tier: Tier, reason: str | None = None) -> None:
        """Call each request now and record each answer as soon as it returns (a crash loses at most the
        calls in flight, whose leases then lapse and send them back to the queue)."""
        if not request_ids:
            return
        if tier == Tier.BATCH:
            raise ValueError("batch requests go through BatchLifecycle, not the synchronous runner")
        started = self.ledger.start_sync(request_ids, tier, reason, lease_owner=this_process(), lease_s=self.lease_s)
        rows = self.ledger.request_rows(started)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            pending = {pool.submit(self._run_one, rows[rid], tier): rid for rid in started}
            renewed_at = time.monotonic()
            while pending:
                # The calls take seconds: the ledger file is let go meanwhile, so readers in other processes
                # (the sensor, the API's GETs) need not wait for them; each answer is recorded as it returns.
                with self.ledger.released():
                    done, _ = wait(pending, timeout=self.lease_s / 3, return_when=FIRST_COMPLETED)
                for future in done:
                    rid = pending.pop(future)
                    try:
                        outcome, used_tier, why = future.result()
                    except openai.AuthenticationError:
                        # Refused before it ran (nothing billed): this and the rest go back; the driver decides.
                        self._unstarted([rid, *pending.values()], tier)
                        raise
                    self.ledger.record_sync_outcomes([outcome], used_tier, max_attempts=self.max_attempts, reason=why)
                    failpoint("sync-outcome-recorded")
                if pending and time.monotonic() - renewed_at >= self.lease_s / 3:
                    self.ledger.renew_leases(list(pending.values()), self.lease_s)
                    renewed_at = time.monotonic()

    def _unstarted(self, request_ids: list[str], tier: Tier) -> None:
        outcomes = [
            RequestOutcome(
                request_id=rid,
                outcome=Outcome.FAILED_RETRYABLE,
                error_code="not_started",
                error_message="the API refused the credentials; not run",
            )
            for rid in request_ids
        ]
        self.ledger.record_sync_outcomes(outcomes, tier, max_attempts=self.max_attempts)

    def recover_lost(self, *, session_ids: Sequence[str] | None = None) -> list[str]:
        """Running requests whose process died (or whose lease lapsed) go back to the queue, their lost
        answers recorded at an estimated cost. Returns the ids recovered."""
        now = self.ledger.clock()
        lost = [
            (row, est)
            for row, owner, until, est in self.ledger.running_leases(session_ids=session_ids)
            if owner != this_process() and (owner_is_dead(owner) or (until is not None and until < now))
        ]
        if not lost:
            return []
        outcomes = [
            estimate_lost(
                row.request_id,
                endpoint=row.endpoint,
                model=row.model,
                tier=Tier(row.tier),
                body=row.body,
                est_prompt_tokens=est,
                catalog=self.catalog,
                reason="lost in flight: the process running this call ended before its answer "
                "was recorded (cost estimated)",
            )
            for row, est in lost
        ]
        recovered = self.ledger.record_lost(outcomes, max_attempts=self.max_attempts)
        if recovered:
            log.warning("%d request(s) lost in flight by a process that ended go back to the queue", len(recovered))
        return recovered

    def _run_one(self, row: RequestRow, tier: Tier) -> tuple[RequestOutcome, Tier, str | None]:
        request_id = row.request_id
        body = resolve_image_refs(row.body, self.image_store)
        used, why = tier, None
        if tier == Tier.FLEX:
            try:
                outcome = self._flex_call(request_id, row.endpoint, body)
            except RetryError:
                # Flex capacity is not there: pay standard rather than miss the deadline.
                used, why = Tier.STANDARD, "flex unavailable (429 after retries); fell back to standard"
                outcome = self._call(request_id, row.endpoint, body, {})
        else:
            outcome = self._call(request_id, row.endpoint, body, {})
        outcome = store_images(outcome, self.image_store)
        outcome = price_outcome(
            outcome,
            endpoint=row.endpoint,
            model=row.model,
            tier=used,
            catalog=self.catalog,
            request_body=lambda: row.body,
        )
        return outcome, used, why

    def _flex_call(self, request_id: str, endpoint: str, body: dict[str, Any]) -> RequestOutcome:
        for attempt in Retrying(
            retry=retry_if_exception_type(_FlexUnavailable),
            stop=stop_after_attempt(self.flex_attempts),
            wait=wait_exponential(multiplier=self.flex_backoff_s, max=60),
            sleep=self.sleep,
        ):
            with attempt:
                outcome = self._call(request_id, endpoint, body, {"service_tier": "flex"}, timeout=FLEX_TIMEOUT_S)
                if outcome.status_code == 429:
                    raise _FlexUnavailable(outcome.error_message)
                return outcome
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(
        self, request_id: str, endpoint: str, body: dict[str, Any], extra: dict[str, Any], timeout: float | None = None
    ) -> RequestOutcome:
        # Flex 429s are ours to handle (back off, then standard): the SDK must not retry them itself.
        client = self.client.with_options(max_retries=0) if extra.get("service_tier") == "flex" else self.client
        if timeout:
            client = client.with_options(timeout=timeout)
        try:
            if endpoint == Endpoint.IMAGES:
                response = client.images.generate(**body, **extra)
            else:
                response = client.chat.completions.create(**body, **extra)
        except openai.AuthenticationError:
            raise  # not this request's failure: no call can succeed until the key is fixed
        except openai.APIStatusError as exc:
            error = (exc.body or {}).get("error", exc.body) if isinstance(exc.body, dict) else {}
            retryable = exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
            return RequestOutcome(
                request_id=request_id,
                status_code=exc.status_code,
                outcome=Outcome.FAILED_RETRYABLE if retryable else Outcome.FAILED_PERMANENT,
                error_code=(error or {}).get("code"),
                error_message=(error or {}).get("message") or str(exc),
            )
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            return RequestOutcome(
                request_id=request_id,
                outcome=Outcome.FAILED_RETRYABLE,
                error_code=type(exc).__name__,
                error_message=str(exc),
            )
        return RequestOutcome(
            request_id=request_id,
            outcome=Outcome.SUCCEEDED,
            status_code=200,
            response=response.model_dump(mode="json", exclude_unset=True),
        )


class _FlexUnavailable(Exception):
    pass
