"""Batch lifecycle: create -> validating -> in_progress -> finalizing -> completed (or failed/expired/cancelled).

Driven lazily by the clock whenever `app.py` creates, reads, lists or cancels; lines run through `handlers.execute`.
"""

from __future__ import annotations

import builtins  # BatchEngine.list shadows the builtin in its class body
import copy
import math
import random
import sys
from typing import Any

import orjson

from .config import COMPLETION_WINDOW_SECONDS, SimulatorConfig
from .errors import SERVER_ERROR_MESSAGE, APIError, invalid_value, missing_parameter, not_found, server_error
from .faults import BATCH_KINDS, LINE_KINDS, FaultBook, FaultRule, FaultTarget
from .handlers import CHAT_ENDPOINT, IMAGES_ENDPOINT, Context, execute, usage_of
from .ids import derived_base62, derived_hex, new_batch_id
from .rules import check_expires_after
from .store import Store, cursor_page
from .validation import RequestLine, batch_error, parse_input

# Every endpoint the SDK lets a batch name; the simulator can execute the first two only.
KNOWN_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
SUPPORTED_ENDPOINTS = (CHAT_ENDPOINT, IMAGES_ENDPOINT)
# Batches whose prompt tokens count against their model's enqueued-token queue.
ENQUEUED_STATUSES = ("validating", "in_progress", "finalizing")
OUTPUT_FILE_TTL_SECONDS = 30 * 24 * 3600

NEVER_RAN_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
    "request_timeout": "This request timed out before it could be processed.",
}


def shuffled_order(batch_id: str, count: int) -> list[int]:
    """Deterministic output order for a batch: never the input order (callers must match by custom_id)."""
    order = list(range(count))
    random.Random(batch_id).shuffle(order)
    if count > 1 and order == sorted(order):
        order = order[1:] + order[:1]
    return order


def _share(fraction: float, count: int) -> int:
    return min(count, max(0, math.floor(fraction * count + 0.5)))


def _zero_usage() -> dict:
    return {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }


class BatchEngine:
    """All batch state changes, serialised by the store's lock (routes run on worker threads)."""

    def __init__(self, config: SimulatorConfig, store: Store, faults: FaultBook) -> None:
        self.config = config
        self.store = store
        self.faults = faults

    # --- API operations --------------------------------------------------------------------

    def create(self, params: Any) -> dict:
        endpoint, input_file_id, metadata, output_ttl = self._check_create_params(params)
        with self.store.lock:
            file = self.store.files.get(input_file_id)
            if file is None:
                raise not_found("File", input_file_id, param="input_file_id")
            if file["purpose"] != "batch":
                raise invalid_value(
                    "input_file_id", f"The input file must have purpose 'batch', not '{file['purpose']}'."
                )
            now = self.config.clock.now()
            # Finished batches must leave the token queues before this one is measured against them.
            self._advance_all(now)

            parsed = parse_input(
                self.store.content_path(input_file_id).read_bytes(),
                endpoint,
                max_bytes=self.config.max_file_bytes,
                max_lines=self.config.max_lines,
            )
            errors = parsed.errors or self._token_limit_errors(parsed.model, parsed.prompt_tokens)
            batch_id = new_batch_id()
            self.store.keep_input(batch_id, input_file_id)
            record: dict[str, Any] = {
                "batch": {
                    "id": batch_id,
                    "object": "batch",
                    "endpoint": endpoint,
                    "model": parsed.model,
                    "errors": None,
                    "input_file_id": input_file_id,
                    "completion_window": "24h",
                    "status": "validating",
                    "output_file_id": None,
                    "error_file_id": None,
                    "created_at": int(now),
                    "in_progress_at": None,
                    "expires_at": int(now) + COMPLETION_WINDOW_SECONDS,
                    "finalizing_at": None,
                    "completed_at": None,
                    "failed_at": None,
                    "expired_at": None,
                    "cancelling_at": None,
                    "cancelled_at": None,
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "usage": _zero_usage(),
                    "metadata": metadata,
                },
                # Simulator bookkeeping, never shown to clients.
                "sim": {
                    "seq": 1 + max((r["sim"]["seq"] for r in self.store.batches.values()), default=0),
                    "phase_started_at": now,
                    "deadline": now + COMPLETION_WINDOW_SECONDS,
                    "line_count": len(parsed.lines),
                    "prompt_tokens": parsed.prompt_tokens,
                    "validation_errors": errors,
                    "output_ttl": output_ttl,
                    "pending_result": None,
                },
            }
            self.store.save_batch(record)
            # Returned as created (validating), like the real API; the clock moves it on at the next read.
            return copy.deepcopy(record["batch"])

    def retrieve(self, batch_id: str) -> dict:
        with self.store.lock:
            record = self._get(batch_id)
            self._advance(record, self.config.clock.now())
            return copy.deepcopy(record["batch"])

    def cancel(self, batch_id: str) -> dict:
        with self.store.lock:
            record = self._get(batch_id)
            now = self.config.clock.now()
            self._advance(record, now)
            batch = record["batch"]
            status = batch["status"]
            if status == "cancelling":
                return copy.deepcopy(batch)
            if status not in ("validating", "in_progress"):
                raise APIError(409, f"Cannot cancel a batch with status '{status}'.")
            if status == "in_progress":
                # Lines already done keep their output: a share of them, in output (shuffled) order.
                result = self._run(
                    record,
                    self._lines(record),
                    now,
                    keep_fraction=self.config.cancel_keep_fraction,
                    skipped_code="batch_cancelled",
                )
                self._apply_counts(batch, result)
                record["sim"]["pending_result"] = result
            self._enter(record, "cancelling", now)
            self.store.save_batch(record)
            return copy.deepcopy(batch)

    def list(self, after: str | None, limit: int) -> dict:
        with self.store.lock:
            self._advance_all(self.config.clock.now())
            # Newest first; creation sequence rather than created_at, which ties at one-second resolution.
            ordered = sorted(self.store.batches.values(), key=lambda r: r["sim"]["seq"], reverse=True)
            return cursor_page([copy.deepcopy(r["batch"]) for r in ordered], after, limit)

    def count(self) -> int:
        with self.store.lock:
            return len(self.store.batches)

    # --- create checks ---------------------------------------------------------------------

    @staticmethod
    def _check_create_params(params: Any) -> tuple[str, str, dict | None, int | None]:
        if not isinstance(params, dict):
            raise APIError(400, "We could not parse the JSON body of your request.")
        for key in ("input_file_id", "endpoint", "completion_window"):
            if not params.get(key):
                raise missing_parameter(key)
        endpoint = params["endpoint"]
        if endpoint not in KNOWN_ENDPOINTS:
            raise invalid_value(
                "endpoint", f"Invalid value: '{endpoint}'. Supported values are: {list(KNOWN_ENDPOINTS)}."
            )
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise invalid_value(
                "endpoint", f"The simulator implements only {list(SUPPORTED_ENDPOINTS)}, not '{endpoint}'."
            )
        if params["completion_window"] != "24h":
            raise invalid_value(
                "completion_window", f"Invalid value: '{params['completion_window']}'. Supported values are: '24h'."
            )
        metadata = params.get("metadata")
        _check_metadata(metadata)
        output_ttl = None
        expires_after = params.get("output_expires_after")
        if expires_after is not None:
            output_ttl = check_expires_after(expires_after, "output_expires_after")
        return endpoint, params["input_file_id"], metadata, output_ttl

    def _token_limit_errors(self, model: str | None, prompt_tokens: int) -> builtins.list[dict]:
        if model is None:
            return []
        limit = self.config.token_limit(model)
        enqueued = prompt_tokens + sum(
            r["sim"]["prompt_tokens"]
            for r in self.store.batches.values()
            if r["batch"]["model"] == model
            and r["batch"]["status"] in ENQUEUED_STATUSES
            and not r["sim"]["validation_errors"]  # a batch about to fail holds no queue
        )
        if enqueued <= limit:
            return []
        return [
            batch_error(
                "token_limit_exceeded",
                f"Enqueued token limit reached for {model} in organization org-simulator. Limit: {limit:,} enqueued "
                f"tokens (this batch would bring it to {enqueued:,}). Please try submitting your requests again "
                "after some of your in-progress batches have completed.",
            )
        ]

    # --- lifecycle -------------------------------------------------------------------------

    def _get(self, batch_id: str) -> dict:
        record = self.store.batches.get(batch_id)
        if record is None:
            raise not_found("Batch", batch_id)
        return record

    def _advance_all(self, now: float) -> None:
        for record in list(self.store.batches.values()):
            self._advance(record, now)

    @staticmethod
    def _enter(record: dict, status: str, at: float) -> None:
        record["batch"]["status"] = status
        record["batch"][f"{status}_at"] = int(at)
        record["sim"]["phase_started_at"] = at

    def _advance(self, record: dict, now: float) -> None:
        """Replay every phase transition due by `now`, each stamped at the moment it was due."""
        batch, sim = record["batch"], record["sim"]
        seconds = self.config.phase_duration
        changed = False
        while True:
            status, started = batch["status"], sim["phase_started_at"]
            if status == "validating":
                due = started + seconds("validating")
                if now < due:
                    break
                if sim["validation_errors"]:
                    self._enter(record, "failed", due)
                    batch["errors"] = {"object": "list", "data": sim["validation_errors"]}
                else:
                    self._enter(record, "in_progress", due)
                    batch["request_counts"]["total"] = sim["line_count"]
            elif status == "in_progress":
                due = started + seconds("in_progress")
                if sim["deadline"] < due and now >= sim["deadline"]:
                    self._leave_in_progress(record, sim["deadline"], window_ran_out=True)
                elif now >= due:
                    self._leave_in_progress(record, due)
                else:
                    break
            elif status == "finalizing":
                due = started + seconds("finalizing")
                if now < due:
                    break
                self._publish_files(record)
                self._enter(record, "completed", due)
            elif status == "cancelling":
                due = started + seconds("cancelling")
                if now < due:
                    break
                self._publish_files(record)
                self._enter(record, "cancelled", due)
            else:
                break
            changed = True
        if changed:
            self.store.save_batch(record)

    def _leave_in_progress(self, record: dict, at: float, window_ran_out: bool = False) -> None:
        """Run the lines: the batch then finalizes, or expires with part of its lines done."""
        batch, sim = record["batch"], record["sim"]
        lines = self._lines(record)
        if window_ran_out:
            # The share of the in_progress phase that fit inside the 24 h window got done.
            planned = self.config.phase_duration("in_progress")
            rules: list[FaultRule] = [
                FaultRule(
                    kind="expire",
                    params={
                        "complete_fraction": min(1.0, (at - sim["phase_started_at"]) / planned) if planned else 0.0,
                    },
                )
            ]
        else:
            rules = self.faults.fire_for_batch(
                BATCH_KINDS,
                FaultTarget(path=batch["endpoint"], model=batch["model"]),
                [self._target(batch["endpoint"], line) for line in lines],
            )
        expire = next((rule for rule in rules if rule.kind == "expire"), None)
        if expire is not None:
            result = self._run(
                record,
                lines,
                at,
                keep_fraction=float(expire.params.get("complete_fraction", 0.5)),
                skipped_code="batch_expired",
            )
            sim["pending_result"] = result
            self._apply_counts(batch, result)
            self._publish_files(record)
            self._enter(record, "expired", at)
            return
        result = self._run(record, lines, at, fail_all=any(rule.kind == "all_fail" for rule in rules))
        sim["pending_result"] = result
        # Counts show 100% while finalizing; the files appear only once the batch completes.
        self._apply_counts(batch, result)
        self._enter(record, "finalizing", at)

    @staticmethod
    def _apply_counts(batch: dict, result: dict) -> None:
        batch["request_counts"] = result["request_counts"]
        batch["usage"] = result["usage"]

    @staticmethod
    def _publish_files(record: dict) -> None:
        result = record["sim"]["pending_result"]
        if result is not None:
            record["batch"]["output_file_id"] = result["output_file_id"]
            record["batch"]["error_file_id"] = result["error_file_id"]

    # --- running lines ---------------------------------------------------------------------

    def _lines(self, record: dict) -> builtins.list[RequestLine]:
        raw = self.store.input_copy_path(record["batch"]["id"]).read_bytes()
        return parse_input(raw, record["batch"]["endpoint"], max_bytes=sys.maxsize, max_lines=sys.maxsize).lines

    @staticmethod
    def _target(endpoint: str, line: RequestLine) -> FaultTarget:
        return FaultTarget(
            path=endpoint,
            model=line.body.get("model"),
            custom_id=line.custom_id,
            service_tier=line.body.get("service_tier"),
            body_text=line.raw,
        )

    def _run(
        self,
        record: dict,
        lines: builtins.list[RequestLine],
        at: float,
        *,
        keep_fraction: float = 1.0,
        skipped_code: str | None = None,
        fail_all: bool = False,
    ) -> dict:
        """Execute the lines and write the output and error files; returns their ids, counts and usage.

        With keep_fraction < 1 only the first share of lines in output order runs; the rest become
        `skipped_code` lines that never ran. Lines run in input order so `nth` fault counters are stable.
        """
        batch = record["batch"]
        order = shuffled_order(batch["id"], len(lines))
        runs = set(order[: _share(keep_fraction, len(lines))])
        entries: list[dict] = []
        succeeded: list[bool] = []
        usage = _zero_usage()
        for index, line in enumerate(lines):
            if index not in runs:
                entry = self._never_ran(batch["id"], line, skipped_code or "batch_expired")
            else:
                entry = self._run_line(batch, line, at, fail_all)
            ok = entry["response"] is not None and entry["response"]["status_code"] == 200
            if ok:
                tokens_in, cached, tokens_out, reasoning = usage_of(batch["endpoint"], entry["response"]["body"])
                usage["input_tokens"] += tokens_in
                usage["input_tokens_details"]["cached_tokens"] += cached
                usage["output_tokens"] += tokens_out
                usage["output_tokens_details"]["reasoning_tokens"] += reasoning
                usage["total_tokens"] += tokens_in + tokens_out
            entries.append(entry)
            succeeded.append(ok)

        output = [entries[i] for i in order if succeeded[i]]
        errors = [entries[i] for i in order if not succeeded[i]]
        return {
            "output_file_id": self._write_result_file(record, "output", output, at),
            "error_file_id": self._write_result_file(record, "error", errors, at),
            "request_counts": {"total": len(lines), "completed": len(output), "failed": len(errors)},
            "usage": usage,
        }

    def _run_line(self, batch: dict, line: RequestLine, at: float, fail_all: bool) -> dict:
        target = self._target(batch["endpoint"], line)
        if fail_all:
            return self._ran(batch["id"], line, error=server_error())
        for rule in self.faults.fire(LINE_KINDS, target):
            if rule.kind == "request_timeout":
                return self._never_ran(batch["id"], line, "request_timeout")
            params = rule.params
            status = int(params.get("status_code", 500))
            return self._ran(
                batch["id"],
                line,
                error=APIError(
                    status,
                    params.get("message", SERVER_ERROR_MESSAGE),
                    type=params.get("type", "server_error" if status >= 500 else "invalid_request_error"),
                    param=params.get("param"),
                    code=params.get("code", "server_error" if status >= 500 else None),
                ),
            )
        ctx = Context(
            now=at, seed=self.config.seed, image_size=self.config.image_size, faults=self.faults, target=target
        )
        try:
            answer = execute(batch["endpoint"], line.body, ctx)
            self.store.record_billed(batch["id"], line.body)
            return self._ran(batch["id"], line, body=answer)
        except APIError as error:
            return self._ran(batch["id"], line, error=error)

    @staticmethod
    def _ran(batch_id: str, line: RequestLine, *, body: dict | None = None, error: APIError | None = None) -> dict:
        """Kind (a) lines and successes: the request ran and has an HTTP response."""
        return {
            "id": "batch_req_" + derived_base62(f"{batch_id}/{line.custom_id}", 24),
            "custom_id": line.custom_id,
            "response": {
                "status_code": 200 if error is None else error.status_code,
                "request_id": derived_hex(f"{batch_id}/{line.custom_id}/request"),
                "body": body if error is None else error.body(),
            },
            "error": None,
        }

    @staticmethod
    def _never_ran(batch_id: str, line: RequestLine, code: str) -> dict:
        """Kind (b) lines: the request never ran, so there is no response at all."""
        return {
            "id": "batch_req_" + derived_base62(f"{batch_id}/{line.custom_id}", 24),
            "custom_id": line.custom_id,
            "response": None,
            "error": {"code": code, "message": NEVER_RAN_MESSAGES[code]},
        }

    def _write_result_file(self, record: dict, kind: str, entries: builtins.list[dict], at: float) -> str | None:
        if not entries:
            return None
        ttl = record["sim"]["output_ttl"] or OUTPUT_FILE_TTL_SECONDS
        content = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
        file = self.store.add_file(
            content,
            filename=f"{record['batch']['id']}_{kind}.jsonl",
            purpose="batch_output",
            created_at=at,
            expires_at=int(at) + ttl,
        )
        return file["id"]


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise APIError(400, "Invalid type for 'metadata': expected an object.", param="metadata", code="invalid_type")
    if len(metadata) > 16:
        raise APIError(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
            f"but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise APIError(
                400,
                "Invalid 'metadata': string too long. Expected a string with maximum length 64, "
                f"but got a string with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(value, str):
            raise APIError(
                400,
                f"Invalid type for 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > 512:
            raise APIError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"512, but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
