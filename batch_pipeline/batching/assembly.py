"""Assembler/splitter: queued requests -> planned batches -> JSONL input files streamed to disk.

Groups by endpoint and model (one of each per batch), splits by line count, by bytes and by the
model's enqueued-token queue, and writes each file line by line so memory does not grow with it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import orjson
from pydantic import BaseModel

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.limits import SplitLimits
from batch_pipeline.ledger.ledger import Ledger, QueuedRow

_IMAGE_REF = re.compile(r"bp-image:[0-9a-f]{64}(?:\.[A-Za-z0-9]+)?")


class PlannedBatch(BaseModel):
    endpoint: str
    model: str
    members: list[QueuedRow]

    @property
    def input_bytes(self) -> int:
        return sum(m.line_bytes + 1 for m in self.members)

    @property
    def est_prompt_tokens(self) -> int:
        return sum(m.est_prompt_tokens for m in self.members)


class BatchPlan(BaseModel):
    batches: list[PlannedBatch]
    held_back: list[QueuedRow]  # fit no batch now: the model's token queue is full; try after in-flight batches end
    oversized: list[QueuedRow]  # can never fit a batch file (one line over the byte or token limit)


def plan_batches(
    queued: Sequence[QueuedRow], limits: SplitLimits, inflight_tokens: dict[str, int] | None = None
) -> BatchPlan:
    """Split queued rows (oldest first) into batches that each respect every limit.

    The token budget is shared with batches already in flight for the same model, so a plan
    never pushes a model's enqueued tokens over its queue (which would fail `token_limit_exceeded`).
    """
    inflight_tokens = inflight_tokens or {}
    groups: dict[tuple[str, str], list[QueuedRow]] = {}
    for row in queued:
        groups.setdefault((row.endpoint, row.model), []).append(row)

    batches: list[PlannedBatch] = []
    held_back: list[QueuedRow] = []
    oversized: list[QueuedRow] = []
    # One queue per model, whatever the endpoint: the budget is shared across a model's groups.
    budget_left = {model: limits.token_budget(model) - inflight_tokens.get(model, 0) for _, model in groups}
    for (endpoint, model), rows in groups.items():
        queue_size = limits.token_budget(model)
        current: list[QueuedRow] = []
        size = tokens = 0
        for row in rows:
            line = row.line_bytes + 1  # the newline
            if line > limits.max_bytes or row.est_prompt_tokens > queue_size:
                oversized.append(row)
                continue
            if row.est_prompt_tokens > budget_left[model] - tokens:
                held_back.append(row)
                continue
            if current and (len(current) >= limits.max_requests or size + line > limits.max_bytes):
                batches.append(PlannedBatch(endpoint=endpoint, model=model, members=current))
                budget_left[model] -= tokens
                current, size, tokens = [], 0, 0
                if row.est_prompt_tokens > budget_left[model]:
                    held_back.append(row)
                    continue
            current.append(row)
            size += line
            tokens += row.est_prompt_tokens
        if current:
            batches.append(PlannedBatch(endpoint=endpoint, model=model, members=current))
            budget_left[model] -= tokens
    return BatchPlan(batches=batches, held_back=held_back, oversized=oversized)


def write_batch_file(
    ledger: Ledger, batch_key: str, directory: Path, image_store: ImageStore | None
) -> tuple[Path, int, int]:
    """Stream a batch's input file to `directory/<batch_key>.jsonl`; returns (path, bytes, lines).

    Bodies are copied from the ledger as stored text (no re-serialisation), and image refs are
    inlined as data URLs one line at a time. Write-then-rename: a crash leaves no half file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{batch_key}.jsonl"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{batch_key}-")
    size = lines = 0
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
            for _line_no, custom_id, endpoint, body in ledger.iter_batch_bodies(batch_key):
                if "bp-image:" in body:
                    if image_store is None:
                        raise ValueError(f"request {custom_id} refers to stored images but no image store was given")
                    body = _IMAGE_REF.sub(lambda m: image_store.data_url(m.group(0)), body)
                line = b"".join(
                    (
                        b'{"custom_id":',
                        orjson.dumps(custom_id),
                        b',"method":"POST","url":',
                        orjson.dumps(endpoint),
                        b',"body":',
                        body.encode(),
                        b"}\n",
                    )
                )
                fh.write(line)
                size += len(line)
                lines += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path, size, lines
