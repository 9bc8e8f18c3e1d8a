"""Deterministic fault injection: rules that tests add, matched against HTTP calls, batches and lines.

`app.py` asks for HTTP-level faults, `handlers.py` for image refusals, `batches.py` for batch and line faults.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal[
    # HTTP level: answered instead of (or, for error_after_create, after) the real handler.
    "http_429",
    "http_500",
    "slow",
    "error_after_create",
    # Image generation refused by the "safety system": sync as an HTTP 400, in a batch as a 400 line.
    "content_policy",
    # Batch level: decided when a batch leaves in_progress.
    "expire",
    "all_fail",
    # Line level: decided per request line while a batch is processed.
    "request_error",
    "request_timeout",
]

HTTP_KINDS = frozenset({"http_429", "http_500", "slow"})
BATCH_KINDS = frozenset({"expire", "all_fail"})
LINE_KINDS = frozenset({"request_error", "request_timeout"})


class FaultRule(BaseModel):
    """One fault: a kind, optional matchers (all given ones must match) and kind-specific params.

    Regex matchers (`path`, `model`, `custom_id`) use `re.search`; `body_contains` is a substring of
    the raw JSON body (or batch line). `nth` fires only on the Nth matching occurrence (1-based);
    `times` caps how often the rule fires (None = unlimited). For batch kinds one batch is one
    occurrence, matched on its endpoint (`path`) and model, and on any of its lines otherwise.
    """

    # kind                params (default)
    # http_429            retry_after_ms (10), message, type ("requests"), code ("rate_limit_exceeded")
    # http_500            message; retry_after_ms (header sent only when given)
    # slow                seconds (1.0): sleep, then answer normally
    # error_after_create  message, retry_after_ms: POST /v1/batches creates the batch, then answers 500
    # content_policy      message: image generation answers 400 content_policy_violation (sync, or a batch line)
    # expire              complete_fraction (0.5): that share of lines completes, the batch ends `expired`
    # all_fail            -: every line fails with a 500 line; no output file
    # request_error       status_code (500), code, message, type, param: matching lines ran and failed
    # request_timeout     -: matching lines never ran (`request_timeout`)
    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    path: str | None = None
    method: str | None = None
    model: str | None = None
    custom_id: str | None = None
    service_tier: str | None = None
    body_contains: str | None = None
    nth: int | None = Field(default=None, ge=1)
    times: int | None = Field(default=None, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class FaultTarget:
    """What a rule is matched against: one HTTP call, or one request line of a batch."""

    path: str
    method: str = "POST"
    model: str | None = None
    custom_id: str | None = None
    service_tier: str | None = None
    body_text: str = ""


def _search(pattern: str | None, value: str | None) -> bool:
    if pattern is None:
        return True
    return value is not None and re.search(pattern, value) is not None


def matches(rule: FaultRule, target: FaultTarget) -> bool:
    if rule.method is not None and rule.method.upper() != target.method.upper():
        return False
    if rule.service_tier is not None and rule.service_tier != target.service_tier:
        return False
    if rule.body_contains is not None and rule.body_contains not in target.body_text:
        return False
    # A rule naming a custom_id can only ever match batch lines, never a plain HTTP call.
    return (
        _search(rule.path, target.path)
        and _search(rule.model, target.model)
        and _search(rule.custom_id, target.custom_id)
    )


def matches_batch(rule: FaultRule, batch: FaultTarget, lines: list[FaultTarget]) -> bool:
    """`path` and `model` match the batch itself; the line matchers match if any of its lines does."""
    if not (_search(rule.path, batch.path) and _search(rule.model, batch.model)):
        return False
    if rule.custom_id is None and rule.service_tier is None and rule.body_contains is None:
        return True
    line_rule = rule.model_copy(update={"path": None, "model": None, "method": None})
    return any(matches(line_rule, line) for line in lines)


class _Entry:
    def __init__(self, rule: FaultRule) -> None:
        self.rule = rule
        self.seen = 0
        self.fired = 0

    def consider(self, hit: bool) -> bool:
        """Count a matching occurrence and say whether the rule fires on it."""
        if not hit:
            return False
        self.seen += 1
        if self.rule.nth is not None and self.seen != self.rule.nth:
            return False
        if self.rule.times is not None and self.fired >= self.rule.times:
            return False
        self.fired += 1
        return True


class FaultBook:
    """The active rules with their occurrence counters; kept in memory only (test setup, not state)."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._entries.append(_Entry(rule))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return [entry.rule for entry in self._entries]

    def report(self) -> list[dict]:
        """Each rule with how often it has fired (a test can wait for a fault to be under way)."""
        with self._lock:
            return [entry.rule.model_dump() | {"fired": entry.fired} for entry in self._entries]

    def fire(self, kinds: frozenset[str] | set[str], target: FaultTarget) -> list[FaultRule]:
        """Rules of the given kinds that fire for this HTTP call or line, in the order they were added."""
        return self._fire(kinds, lambda rule: matches(rule, target))

    def fire_for_batch(self, kinds: frozenset[str], batch: FaultTarget, lines: list[FaultTarget]) -> list[FaultRule]:
        """Batch-level rules that fire for this batch (each batch counts once towards nth/times)."""
        return self._fire(kinds, lambda rule: matches_batch(rule, batch, lines))

    def _fire(self, kinds: frozenset[str] | set[str], hit: Callable[[FaultRule], bool]) -> list[FaultRule]:
        with self._lock:
            return [
                entry.rule for entry in self._entries if entry.rule.kind in kinds and entry.consider(hit(entry.rule))
            ]
