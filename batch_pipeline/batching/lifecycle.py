"""Job manager: queued requests -> submitted batches -> ingested results, safe across crashes.

Submission is two-phase: the ledger records the intent (members, batch key) before anything is
sent, the batch carries its key in `metadata`, and before every create the remote batch list is
searched for that key. A crash or an ambiguous error at any point therefore re-attaches to the
batch that exists instead of paying for a second one.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import openai
from openai.types import Batch
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from batch_pipeline.batching.assembly import plan_batches, write_batch_file
from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.limits import BATCH_WINDOW_SECONDS, COMPLETION_WINDOW, SplitLimits
from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.batching.results import ResultFileError, line_pricing, price_results, read_result_table
from batch_pipeline.errors import DownloadIncomplete, is_permanent_ingest_error, is_transient
from batch_pipeline.failpoints import failpoint
from batch_pipeline.ledger.ledger import BatchRecord, Ledger, RemoteStatus
from batch_pipeline.ledger.states import BatchPhase
from batch_pipeline.records import RequestOutcome
from batch_pipeline.vocabulary import ACTIVE_STATUSES, ENDED_STATUSES, BatchEndpoint, Outcome, Tier

log = logging.getLogger(__name__)

METADATA_KEY = "bp_batch_key"
# A create request that got no answer may still land on the server after the client gave up (or died).
# It is given its timeout plus this margin to show up in the list before the same batch is created again.
CREATE_SETTLE_MARGIN_S = 30.0


def create_settle_s(create_timeout_s: float) -> float:
    """How long after a create was sent it may still land: no second create for the batch before then."""
    return create_timeout_s + CREATE_SETTLE_MARGIN_S


# Errors after which we cannot know whether the server acted: look before trying again.
AMBIGUOUS_ERRORS = (
    openai.APIConnectionError,
    openai.APITimeoutError,
    openai.InternalServerError,
    openai.RateLimitError,
    openai.ConflictError,
)
# Our side of a batch once its create has been settled one way or the other: a remote batch carrying
# its key under another id is a duplicate (before that, it is the batch itself, found by `find_remote`).
_SETTLED_PHASES = frozenset({BatchPhase.CREATED, BatchPhase.INGESTED, BatchPhase.ABANDONED})


def _serialised(method):
    """Run under the manager's lock: two threads sending the same planned batch could both create it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class BatchLifecycle:
    def __init__(
        self,
        client: openai.OpenAI,
        ledger: Ledger,
        *,
        files_dir: Path | str,
        image_store: ImageStore | None = None,
        catalog: PriceCatalog | None = None,
        limits: SplitLimits | None = None,
        max_attempts: int = 3,
        poll_policy: PollPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        reconcile_lookback_s: float = 2 * BATCH_WINDOW_SECONDS,
        download_attempts: int = 4,
        create_timeout_s: float = 60.0,
        max_ingest_errors: int = 3,
    ):
        self.client = client
        # The SDK retries POSTs without an idempotency key; a retried create after a timeout or
        # 5xx can bill a second batch. Creates go out once and are reconciled by us instead; a short
        # timeout bounds how long an unanswered create may still land (see `_create`).
        self.create_client = client.with_options(max_retries=0, timeout=create_timeout_s)
        self.create_settle_s = create_settle_s(create_timeout_s)
        self.ledger = ledger
        self.files_dir = Path(files_dir)
        self.image_store = image_store
        self.catalog = catalog or PriceCatalog.load()
        self.limits = limits or SplitLimits()
        self.max_attempts = max_attempts
        self.poll_policy = poll_policy or PollPolicy()
        self.clock = clock
        self.sleep = sleep
        self.reconcile_lookback_s = reconcile_lookback_s
        self.download_attempts = download_attempts
        self.max_ingest_errors = max_ingest_errors
        # One process may drive several sessions from threads (the HTTP API); across processes the
        # Dagster `ledger` pool serialises writers.
        self._lock = threading.RLock()
        # Batches this manager's own list walk saw ended: their recorded file ids are final already.
        self._seen_ended: set[str] = set()

    # -- submit -----------------------------------------------------------------------------

    @_serialised
    def submit_queued(self, *, session_id: str | None = None, session_ids: Iterable[str] | None = None) -> list[str]:
        """Finish half-sent batches, then plan and send batches for the queued batch-tier requests
        (all of them, or those of `session_id` / `session_ids`: what the calling driver owns).

        Returns the keys of the batches planned in this call (sent, or left to be retried).
        """
        scope = [session_id] if session_id is not None else (list(session_ids) if session_ids is not None else None)
        self.resume(session_ids=scope)
        plan = plan_batches(
            self.ledger.queued_rows(tier=Tier.BATCH, session_ids=scope),
            self.limits,
            self.ledger.inflight_tokens_by_model(),
        )
        if plan.oversized:
            self.ledger.fail_queued(
                [r.request_id for r in plan.oversized],
                f"larger than one batch file allows ({self.limits.max_bytes} bytes or the model's token queue)",
            )
        if plan.held_back:
            log.info("%d requests wait for the enqueued-token queue to drain", len(plan.held_back))
        keys = []
        for planned in plan.batches:
            key = f"bpb_{uuid.uuid4().hex}"
            if self.ledger.create_batch_intent(key, planned.endpoint, planned.model, planned.members) is not None:
                keys.append(key)
        for key in keys:
            self._send(key)
        return keys

    @_serialised
    def resume(self, *, session_ids: Iterable[str] | None = None) -> None:
        """Carry every batch that was planned but not confirmed created through to `created` (or, when
        every session it serves has ended, abandon it: a cancelled session's batch is never sent)."""
        for record in self.ledger.batches([BatchPhase.INTENT, BatchPhase.UPLOADED], session_ids=session_ids):
            if self.ledger.batch_serves_no_running_session(record.batch_key):
                self.ledger.abandon_batch(
                    record.batch_key, "every session it serves has ended", max_attempts=self.max_attempts
                )
                continue
            self._send(record.batch_key)

    def _send(self, key: str) -> None:
        record = self.ledger.batch(key)
        if record.phase == BatchPhase.INTENT:
            # We may have crashed after creating it remotely: look before uploading again.
            if not _never_sent(record) and (remote := self.find_remote(record)) is not None:
                self._attach(record, remote)
                return
            path, _size, _lines = write_batch_file(self.ledger, key, self.files_dir, self.image_store)
            with path.open("rb") as fh, self.ledger.released():
                uploaded = self.client.files.create(file=(path.name, fh), purpose="batch")
            self.ledger.mark_uploaded(key, uploaded.id)
            record = self.ledger.batch(key)
        if record.phase == BatchPhase.UPLOADED:
            self._create(record)

    def _create(self, record: BatchRecord) -> None:
        if not _never_sent(record) and (remote := self.find_remote(record)) is not None:
            self._attach(record, remote)
            return
        if record.create_sent_at is not None and self.clock() - record.create_sent_at < self.create_settle_s:
            # An earlier create (of a process that died, or that timed out) may still land: creating
            # again now could bill the batch twice. The next submit looks again.
            log.info(
                "batch %s: a create sent %.0f s ago may still land; not sending another yet",
                record.batch_key,
                self.clock() - record.create_sent_at,
            )
            return
        assert record.input_file_id is not None, "an uploaded batch has its input file"
        first_create = record.create_sent_at is None
        self.ledger.mark_create_sent(record.batch_key, sweep_window_s=BATCH_WINDOW_SECONDS)
        try:
            with self.ledger.released():  # the intent (create_sent_at) is committed; the outcome is recorded after
                remote = self.create_client.batches.create(
                    input_file_id=record.input_file_id,
                    endpoint=cast(BatchEndpoint, record.endpoint),  # the ledger holds an Endpoint value
                    completion_window=COMPLETION_WINDOW,
                    metadata={
                        METADATA_KEY: record.batch_key,
                        "bp_model": record.model,
                        "bp_requests": str(record.request_count),
                    },
                )
        except AMBIGUOUS_ERRORS as exc:
            # The server may have created it before failing to answer: look, never blindly retry.
            if (remote := self.find_remote(record)) is not None:
                log.warning(
                    "batch %s: create answered %s but the batch exists; re-attached",
                    record.batch_key,
                    type(exc).__name__,
                )
                self._attach(record, remote)
                return
            if isinstance(exc, openai.InternalServerError) and exc.status_code == 500:
                # The server itself answered and the batch is not there: it will not appear later.
                self.ledger.mark_create_sent(record.batch_key, answered=True)
                log.warning("batch %s: create failed (%s); will retry on the next submit", record.batch_key, exc)
            else:
                # No answer, or a gateway's: the create may still land, so wait before creating again.
                log.warning(
                    "batch %s: create unanswered (%s); looking again after %.0f s",
                    record.batch_key,
                    type(exc).__name__,
                    self.create_settle_s,
                )
            return
        except openai.APIStatusError as exc:
            # A definite rejection (4xx): this file will never become a batch.
            self.ledger.abandon_batch(
                record.batch_key, f"create rejected: {exc.status_code} {exc.message}", max_attempts=self.max_attempts
            )
            return
        if first_create:
            self.ledger.create_answered(record.batch_key)  # no earlier create can land late: no sweep needed
        self._attach(record, remote)
        if self.ledger.batch_serves_no_running_session(record.batch_key):
            # Every session it serves was cancelled while the create was on the wire (the ledger is not held
            # then): the cancel found no remote id to cancel, so it is cancelled here.
            self.cancel(record.batch_key)

    def _attach(self, record: BatchRecord, remote: Batch) -> None:
        self.ledger.mark_created(record.batch_key, remote.id, input_file_id=remote.input_file_id)
        self.ledger.record_remote_status([_remote_status(record.batch_key, remote)])
        failpoint("batch-created")

    def find_remote(self, record: BatchRecord) -> Batch | None:
        """The remote batch tagged with this record's key, searching back from the newest.

        Errors propagate: "could not read the list" must never be taken for "not there".
        """
        oldest_wanted = record.created_at - self.reconcile_lookback_s
        with self.ledger.released():
            for remote in self.client.batches.list(limit=100):
                if (remote.metadata or {}).get(METADATA_KEY) == record.batch_key:
                    return remote
                if remote.created_at < oldest_wanted:
                    return None
        return None

    # -- poll ---------------------------------------------------------------------------------

    @_serialised
    def refresh(self, *, session_ids: Iterable[str] | None = None) -> list[BatchRecord]:
        """Poll the in-flight batches (of `session_ids`, or all) with one paginated list call (retrieve only
        the stragglers), then sweep for creates that landed late."""
        inflight = [
            b
            for b in self.ledger.batches([BatchPhase.CREATED], session_ids=session_ids)
            if b.status not in ENDED_STATUSES
        ]
        if inflight:
            wanted = {b.openai_batch_id: b for b in inflight if b.openai_batch_id is not None}
            with self.ledger.released():
                seen = find_batches(
                    self.client, wanted, created_after=min(b.created_at for b in inflight) - self.reconcile_lookback_s
                )
            self.ledger.record_remote_status(
                [_remote_status(wanted[bid].batch_key, remote) for bid, remote in seen.items()]
            )
            self._seen_ended |= {
                wanted[bid].batch_key for bid, remote in seen.items() if remote.status in ENDED_STATUSES
            }
        self.sweep_duplicates()
        return [self.ledger.batch(b.batch_key) for b in inflight]

    def sweep_duplicates(self) -> list[str]:
        """Find batches created under one of our keys but not recorded (a create that landed after we gave up
        on it), for the API's 24 h window after any unanswered create, whatever else is in flight.

        Each is recorded as a duplicate batch (polled, ingested and costed like any other: it is paid for,
        so its answers are used) and cancelled while it still runs. Returns the duplicates found now.
        """
        keys = self.ledger.sweep_keys()
        if not keys:
            return []
        found = []
        oldest = min(sent for _bid, sent in keys.values()) - CREATE_SETTLE_MARGIN_S
        with self.ledger.released():  # the few ledger calls below open their own connections
            for remote in self.client.batches.list(limit=100):
                key = (remote.metadata or {}).get(METADATA_KEY)
                if key in keys and remote.id != keys[key][0] and self.ledger.batch(key).phase in _SETTLED_PHASES:
                    duplicate = self.ledger.record_duplicate(key, remote.id, remote.status)
                    if duplicate is not None:
                        found.append(duplicate.batch_key)
                        log.error(
                            "batch %s: remote batch %s carries its key but is not the one recorded (a create "
                            "that landed late); recorded as duplicate %s",
                            key,
                            remote.id,
                            duplicate.batch_key,
                        )
                        if remote.status in ACTIVE_STATUSES and remote.status != "cancelling":
                            try:
                                self.client.batches.cancel(remote.id)
                            except openai.ConflictError:
                                log.warning("duplicate batch %s finished before it could be cancelled", remote.id)
                if remote.created_at < oldest:
                    break
        return found

    def cancel(self, batch_key: str) -> None:
        record = self.ledger.batch(batch_key)
        if record.openai_batch_id is None:
            raise ValueError(f"batch {batch_key} was never created remotely")
        try:
            with self.ledger.released():
                self.client.batches.cancel(record.openai_batch_id)
        except openai.ConflictError:
            log.info("batch %s already finished; nothing to cancel", batch_key)

    # -- ingest -------------------------------------------------------------------------------

    @_serialised
    def ingest_ended(self, *, session_ids: Iterable[str] | None = None) -> list[str]:
        """Download, map and record every ended batch not ingested yet (of `session_ids`, or all).

        Each batch on its own: a batch whose results cannot be read is ended with the reason when the
        failure is permanent (`errors.is_permanent_ingest_error`) or repeats `max_ingest_errors` times, and
        a transient error leaves it for the next call; neither stops the other batches. Returns the keys
        ingested now.
        """
        done = []
        for record in self.ledger.batches([BatchPhase.CREATED], session_ids=session_ids):
            if record.status not in ENDED_STATUSES:
                continue
            try:
                if record.batch_key not in self._seen_ended:
                    # Read the final state once more: file ids are only trustworthy after the batch ended.
                    # (A status this manager saw ended in its own list walk is such a read already.)
                    assert record.openai_batch_id is not None, "a created batch has its remote id"
                    with self.ledger.released():
                        remote = self.client.batches.retrieve(record.openai_batch_id)
                    self.ledger.record_remote_status([_remote_status(record.batch_key, remote)])
                if self.ingest(self.ledger.batch(record.batch_key)):
                    done.append(record.batch_key)
            except Exception as exc:
                unreadable = isinstance(exc, (ResultFileError, DownloadIncomplete))  # may heal: counted
                if not unreadable and not is_permanent_ingest_error(exc):
                    if not is_transient(exc):
                        raise
                    log.warning(
                        "batch %s: ingestion failed (%s: %s); trying again later",
                        record.batch_key,
                        type(exc).__name__,
                        exc,
                    )
                    continue
                ended = self.ledger.fail_ingest(
                    record.batch_key,
                    f"{type(exc).__name__}: {exc}",
                    permanent=not unreadable,
                    max_errors=self.max_ingest_errors,
                    max_attempts=self.max_attempts,
                )
                log.error(
                    "batch %s: results unreadable (%s: %s)%s",
                    record.batch_key,
                    type(exc).__name__,
                    exc,
                    "; ended, its requests go back to the queue" if ended else "; will try again",
                )
        return done

    def ingest(self, record: BatchRecord) -> bool:
        if (
            record.status != "failed"
            and not record.output_file_id
            and not record.error_file_id
            and (record.completed_count or record.failed_count)
        ):
            # Lines ran but no file is named: re-submitting would pay twice. Wait for a consistent read.
            log.error(
                "batch %s is %s with %s lines done but names no result file; not ingesting yet",
                record.batch_key,
                record.status,
                (record.completed_count or 0) + (record.failed_count or 0),
            )
            return False
        downloads = self.files_dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        with self.ledger.released():  # nothing is recorded until the files are whole (`record_batch_outcome`)
            paths = [
                self.download(file_id, downloads / f"{record.batch_key}-{kind}.jsonl")
                for kind, file_id in (("output", record.output_file_id), ("error", record.error_file_id))
                if file_id
            ]
        pricing = line_pricing(self.catalog, endpoint=record.endpoint, model=record.model, tier=Tier.BATCH)
        table = read_result_table(paths, self.image_store, pricing=pricing)
        if record.status == "failed":
            for outcome in self._validation_outcomes(record).values():
                table.add_outcome(outcome, replace=True)
        price_results(
            table,
            endpoint=record.endpoint,
            model=record.model,
            tier=Tier.BATCH,
            catalog=self.catalog,
            request_bodies=lambda ids: {rid: row.body for rid, row in self.ledger.request_rows(ids).items()},
        )
        failpoint("ingest-downloaded")
        if record.duplicate_of is not None:  # rare: the per-outcome path
            ingested = self.ledger.record_duplicate_outcome(
                record.batch_key, table.outcomes(), max_attempts=self.max_attempts
            )
        else:
            ingested = self.ledger.record_batch_results(
                record.batch_key,
                table,
                max_attempts=self.max_attempts,
                missing_reason=f"batch {record.status} without a result line for this request",
            )
        for path in [*paths, self.files_dir / f"{record.batch_key}.jsonl"]:
            path.unlink(missing_ok=True)
        return ingested

    def _validation_outcomes(self, record: BatchRecord) -> dict[str, RequestOutcome]:
        """A batch that failed validation: lines it names failed for good; the rest may go again."""
        members = self.ledger.batch_members(record.batch_key)
        outcomes = {}
        for err in record.errors or []:
            line = err.get("line")
            if line and line in members:
                rid = members[line]
                outcomes[rid] = RequestOutcome(
                    request_id=rid,
                    outcome=Outcome.FAILED_PERMANENT,
                    error_code=err.get("code"),
                    error_message=err.get("message"),
                )
        return outcomes

    def download(self, file_id: str, dest: Path) -> Path:
        """Stream a file to disk, check it is whole, retry if not (large downloads break mid-stream)."""

        @retry(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.download_attempts),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            reraise=True,
        )
        def attempt() -> Path:
            expected = self.client.files.retrieve(file_id).bytes
            part = dest.with_name(dest.name + ".part")
            with self.client.files.with_streaming_response.content(file_id) as response, part.open("wb") as fh:
                for chunk in response.iter_bytes(1 << 20):
                    fh.write(chunk)
            size = part.stat().st_size
            if expected and size != expected:
                raise DownloadIncomplete(f"file {file_id}: got {size} of {expected} bytes")
            os.replace(part, dest)
            return dest

        return attempt()


def find_batches(
    client: openai.OpenAI,
    wanted: Iterable[str],
    *,
    created_after: float,
    also: Iterable[str] = (),
    max_retrieves: int | None = None,
    passed: list[Batch] | None = None,
) -> dict[str, Batch]:
    """Remote batches by id, for many batches at the cost of a few calls.

    One paginated `batches.list` walk, newest first, that stops once every `wanted` id was seen or the
    walk passes `created_after`; batches in `also` are kept when the walk passes them, and every batch
    it passes is appended to `passed` if given. Wanted batches the walk missed are retrieved one by one
    (at most `max_retrieves`; the rest are left out).
    """
    wanted, keep = set(wanted), set(wanted) | set(also)
    seen: dict[str, Batch] = {}
    for remote in client.batches.list(limit=100):
        if passed is not None:
            passed.append(remote)
        if remote.id in keep:
            seen[remote.id] = remote
        if wanted <= seen.keys() or remote.created_at < created_after:
            break
    for batch_id in sorted(wanted - seen.keys())[:max_retrieves]:
        seen[batch_id] = client.batches.retrieve(batch_id)
    return seen


def _never_sent(record: BatchRecord) -> bool:
    """No create of this batch ever went out without a definite answer, so no remote batch can carry its
    key: looking for one in the list before the first create would only cost a list walk."""
    return record.create_sent_at is None and record.sweep_until is None


def _remote_status(batch_key: str, remote: Batch) -> RemoteStatus:
    counts = remote.request_counts
    return RemoteStatus(
        batch_key=batch_key,
        status=remote.status,
        output_file_id=remote.output_file_id,
        error_file_id=remote.error_file_id,
        completed_count=counts.completed if counts else None,
        failed_count=counts.failed if counts else None,
        errors=[e.model_dump() for e in remote.errors.data] if remote.errors and remote.errors.data else None,
    )
