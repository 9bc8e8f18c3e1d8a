"""What the sensors decide, as plain functions: which session steps, polls, flushes and ingestions are due.

`sensors.py` feeds them the ledger's read-only snapshot, the API's batch list and the runs Dagster
knows of, and turns their answers into RunRequests. Nothing here imports Dagster, so each rule is
unit-tested on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.ledger.reader import QueueState, SessionRound, WatchedBatch
from batch_pipeline.vocabulary import ENDED_STATUSES

# A run key that failed (or finished without doing the work) this many times is not requested again:
# the problem needs a person, and a loop of failing runs would hide it.
MAX_RUN_ATTEMPTS = 5

RunState = Literal["in_progress", "finished"]


@dataclass(frozen=True)
class PriorRun:
    """The latest run Dagster holds for one run key: still going, or finished (when)."""

    state: RunState
    ended_at: float | None = None
    succeeded: bool = False


def next_attempt(
    base_key: str,
    prior_run: Callable[[str], PriorRun | None],
    *,
    snapshot_at: float,
    max_attempts: int = MAX_RUN_ATTEMPTS,
    again_after_success: bool = True,
) -> int | None:
    """The attempt number to request for `base_key`, or None to request nothing now.

    Dagster never launches a run key twice (even after a failure), so each retry needs a new key:
    `{base}:a0`, `{base}:a1`, ... The sensor asks again only because the ledger still shows the work
    undone. An attempt whose run is in progress is waited for; one that finished *before* the ledger
    snapshot was read evidently did not do the work, so the next attempt goes out. One that finished
    after the snapshot may have done it: wait for a fresh snapshot rather than run it twice. With
    `again_after_success=False` a successful run settles the key even if the ledger looks the same
    (a retry step that rightly left requests for the next batch must not be repeated).
    """
    for attempt in range(max_attempts):
        prior = prior_run(f"{base_key}:a{attempt}")
        if prior is None:
            return attempt
        if prior.state == "in_progress":
            return None
        if prior.ended_at is None or prior.ended_at >= snapshot_at:
            return None
        if prior.succeeded and not again_after_success:
            return None
    return None


def short_hash(items: Iterable[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(items)).encode(), digest_size=6).hexdigest()


# -- the session driver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepDue:
    session_id: str
    base_key: str
    reason: str
    again_after_success: bool = True


def step_due(r: SessionRound) -> StepDue | None:
    """Does this running session need a step now (in the next tick run), and under which base key?

    A step applies the round the session waits for (once all its requests are terminal) and queues the
    next round. The same (iteration, round) can need two steps, so the key names the phase:
    `queue` (the round has no requests yet: a new session, or a crash between saving and queueing),
    `apply` (every request of the round is terminal), `retry{n}` (requests came back from a failed or
    expired batch after n attempts: the step lets the fallback policy move them to standard).
    """
    base = f"{r.session_id}:i{r.iteration}:{r.next_round}"
    if r.requests == 0:
        return StepDue(r.session_id, f"{base}:queue", "the round has no requests yet")
    if r.pending == 0:
        return StepDue(r.session_id, f"{base}:apply", f"all {r.requests} requests of the round are finished")
    if r.requeued_attempts:
        # The step may rightly leave them for another batch (the fallback policy's call): once is enough.
        return StepDue(
            r.session_id,
            f"{base}:retry{r.requeued_attempts}",
            f"requests are back in the queue after {r.requeued_attempts} attempt(s)",
            again_after_success=False,
        )
    return None


# -- the flush ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlushDue:
    base_key: str
    reason: str


def flush_due(
    queue: QueueState, *, mode: Literal["immediate", "deferred"], max_requests: int, max_age_s: float, now: float
) -> FlushDue | None:
    """Whether a `submitted_batches` run is due.

    Deferred mode accumulates batch-tier requests from every session and flushes when the queue reaches
    `max_requests` or its oldest request `max_age_s`, so concurrent sessions share batches. In both modes
    a batch left half-sent by a crash (intent or uploaded) is finished at once: in immediate mode no
    step of its session would otherwise run again, its requests being `submitted`.
    """
    reasons, parts = [], []
    if queue.half_sent:
        reasons.append(f"{len(queue.half_sent)} half-sent batch(es) to resume")
        parts.append(f"resume-{short_hash(queue.half_sent)}")
    if mode == "deferred" and queue.queued and queue.oldest_queued_at is not None:
        age = now - queue.oldest_queued_at
        if queue.queued >= max_requests or age >= max_age_s:
            why = (
                f"{queue.queued} queued >= {max_requests}"
                if queue.queued >= max_requests
                else f"oldest queued {age:.0f} s ago >= {max_age_s:g} s"
            )
            reasons.append(why)
            # The queue's identity: its oldest request and its size. Both change after a flush.
            parts.append(f"q{queue.oldest_queued_at:.6f}-{queue.queued}")
    if not parts:
        return None
    return FlushDue("flush:" + ":".join(parts), "; ".join(reasons))


# -- polling in-flight batches --------------------------------------------------------------------


@dataclass
class PollRecord:
    polls: int = 0
    last_polled_at: float = 0.0
    errors: int = 0
    ended_status: str | None = None  # set once the API says the batch ended; the ledger learns it at ingestion


@dataclass
class BatchCursor:
    """The batch sensor's memory between ticks, keyed by OpenAI batch id; stored as compact JSON."""

    batches: dict[str, PollRecord] = field(default_factory=dict)
    # Retry steps already requested (base keys): asked for once, see `tick_due`.
    requested_retries: set[str] = field(default_factory=set)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "b": {
                    bid: [r.polls, round(r.last_polled_at, 3), r.errors, r.ended_status]
                    for bid, r in sorted(self.batches.items())
                },
                "r": sorted(self.requested_retries),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> BatchCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            {bid: PollRecord(polls, last, errors, ended) for bid, (polls, last, errors, ended) in data["b"].items()},
            set(data.get("r", ())),
        )

    def prune(self, watched: Iterable[WatchedBatch]) -> None:
        """Forget batches that are no longer watched (ingested): the cursor stays as small as the work."""
        keep = {b.openai_batch_id for b in watched}
        for bid in list(self.batches):
            if bid not in keep:
                del self.batches[bid]


def ended_batches(watched: Iterable[WatchedBatch], cursor: BatchCursor) -> list[WatchedBatch]:
    """Watched batches known to have ended: recorded so in the ledger, or seen so by an earlier poll."""
    return [b for b in watched if b.ended or (cursor.batches.get(b.openai_batch_id) or PollRecord()).ended_status]


def due_for_poll(
    watched: Iterable[WatchedBatch], cursor: BatchCursor, policy: PollPolicy, now: float
) -> list[WatchedBatch]:
    """In-flight batches whose backoff delay has passed (a new batch counts from its creation)."""
    due = []
    for b in watched:
        rec = cursor.batches.get(b.openai_batch_id) or PollRecord(last_polled_at=b.created_at)
        if b.ended or rec.ended_status:
            continue
        if policy.due(
            now=now,
            last_polled_at=rec.last_polled_at,
            polls=rec.polls,
            key=b.openai_batch_id,
            consecutive_errors=rec.errors,
        ):
            due.append(b)
    return due


def record_polls(
    cursor: BatchCursor,
    watched: Iterable[WatchedBatch],
    due: Iterable[WatchedBatch],
    seen: Mapping[str, str],
    now: float,
    *,
    failed: bool = False,
) -> None:
    """Fold one poll into the cursor: `seen` maps batch id -> remote status for every watched batch seen.

    Due batches count a poll (or an error, when the list call failed); batches that were not due but
    showed up in the list keep their schedule, except that an ended one is remembered as ended.
    """
    by_id = {b.openai_batch_id: b for b in watched}
    for b in due:
        rec = cursor.batches.setdefault(b.openai_batch_id, PollRecord(last_polled_at=b.created_at))
        rec.last_polled_at = now
        if failed:
            rec.errors += 1
        else:
            rec.polls += 1
            rec.errors = 0
    for bid, status in seen.items():
        if bid in by_id and status in ENDED_STATUSES:
            rec = cursor.batches.setdefault(bid, PollRecord(last_polled_at=by_id[bid].created_at))
            rec.ended_status = status


def ingest_base_key(ended: Iterable[WatchedBatch]) -> str:
    """One ingestion run per set of ended batches: a batch ending later makes a new key."""
    return f"ingest:{short_hash(b.openai_batch_id for b in ended)}"


# -- the tick -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TickDue:
    base_key: str
    reason: str
    retries: frozenset[str] = frozenset()  # the retry steps this tick asks for


def tick_due(
    rounds: Iterable[SessionRound],
    queue: QueueState,
    ended: list[WatchedBatch],
    cursor: BatchCursor,
    *,
    mode: Literal["immediate", "deferred"],
    max_requests: int,
    max_age_s: float,
    now: float,
) -> TickDue | None:
    """Whether a tick run is due, and under which base run key: one run for everything due now.

    Due: a session step (`step_due`), a flush (`flush_due`), an ended batch to ingest, or a round whose
    deadline passed with requests still out (the tick cancels its batch and sends the rest on another
    tier; `deadlines.py`). The key is a hash
    of what is due, so the same work is never requested twice and a change in it makes a new key. A retry
    step is asked for once (the tick may rightly leave its requests for the next batch): the cursor keeps
    the retry keys requested, and forgets those no longer due.
    """
    steps = [d for r in rounds if (d := step_due(r)) is not None]
    retries = {d.base_key for d in steps if not d.again_after_success}
    cursor.requested_retries &= retries
    steps = [d for d in steps if d.again_after_success or d.base_key not in cursor.requested_retries]
    flush = flush_due(queue, mode=mode, max_requests=max_requests, max_age_s=max_age_s, now=now)
    parts, reasons = [d.base_key for d in steps], []
    if steps:
        reasons.append(
            f"{len(steps)} session step(s) due: "
            + ", ".join(f"{d.session_id} ({d.reason})" for d in steps[:5])
            + (" ..." if len(steps) > 5 else "")
        )
    if flush is not None:
        parts.append(flush.base_key)
        reasons.append(f"flush: {flush.reason}")
    if ended:
        parts.append(ingest_base_key(ended))
        reasons.append(f"{len(ended)} batch(es) ended")
    late = [r for r in rounds if r.pending and r.round_due_at is not None and now >= r.round_due_at]
    if late:
        parts += [f"{r.session_id}:i{r.iteration}:{r.next_round}:deadline" for r in late]
        reasons.append(f"{len(late)} round(s) past their deadline: " + ", ".join(r.session_id for r in late[:5]))
    if not parts:
        return None
    return TickDue(
        f"tick:{short_hash(parts)}",
        "; ".join(reasons),
        frozenset(d.base_key for d in steps if not d.again_after_success),
    )
