"""The provider factory: Settings -> the whole runtime (client, ledger, tiers, executor, sessions).

The one place that turns the seed's BATCH_* variables into objects. The CLI, the tests and the
Dagster resources all build through here, so they cannot disagree about what a setting means.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.lifecycle import BatchLifecycle
from batch_pipeline.batching.limits import SplitLimits
from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.ledger import Ledger
from batch_pipeline.providers.executor import RoundExecutor
from batch_pipeline.providers.sync_tiers import SyncTierRunner
from batch_pipeline.providers.tier_policy import TierPolicy
from batch_pipeline.sessions import SessionService
from batch_pipeline.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    client: openai.OpenAI
    ledger: Ledger
    image_store: ImageStore
    catalog: PriceCatalog
    manager: BatchLifecycle
    executor: RoundExecutor
    sessions: SessionService


def tier_policy_from(settings: Settings, **overrides: Any) -> TierPolicy:
    return TierPolicy(
        batch_enabled=settings.batch_api_enabled,
        enabled_for={
            "llm": settings.batch_llm_enabled,
            "vision": settings.batch_vision_enabled,
            "images": settings.batch_images_enabled,
        },
        hybrid=settings.batch_hybrid_mode,
        fallback_to_standard=settings.batch_fallback_to_standard,
        **overrides,
    )


def build_runtime(
    settings: Settings,
    *,
    client: openai.OpenAI | None = None,
    ledger: Ledger | None = None,
    image_store: ImageStore | None = None,
    clock: Callable[[], float] = time.time,
    poll_policy: PollPolicy | None = None,
    policy_overrides: dict | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Runtime:
    """Everything the pipeline needs, from settings; pass `client`, `ledger` or `image_store` to
    supply your own (tests, Dagster resources)."""
    client = client or openai.OpenAI(**settings.openai_client_kwargs())
    ledger = ledger or Ledger(settings.ledger_location, clock=clock)
    image_store = image_store or ImageStore(settings.home.images)
    catalog = PriceCatalog.load(extra=settings.batch_prices_file)
    manager = BatchLifecycle(
        client,
        ledger,
        files_dir=settings.home.batch_files,
        image_store=image_store,
        catalog=catalog,
        limits=SplitLimits(max_requests=settings.batch_max_requests_per_file, max_bytes=settings.batch_max_file_bytes),
        max_attempts=settings.batch_max_attempts,
        poll_policy=poll_policy or PollPolicy(initial_s=settings.batch_poll_interval_ms / 1000),
        create_timeout_s=settings.batch_create_timeout_seconds,
        clock=clock,
        sleep=sleep,
    )
    sync_runner = SyncTierRunner(
        client, ledger, image_store=image_store, catalog=catalog, max_attempts=settings.batch_max_attempts, sleep=sleep
    )
    executor = RoundExecutor(
        ledger,
        sync_runner,
        image_store=image_store,
        catalog=catalog,
        policy=tier_policy_from(settings, **(policy_overrides or {})),
        max_attempts=settings.batch_max_attempts,
        clock=clock,
    )
    sessions = SessionService(
        ledger,
        executor,
        manager,
        batch_mode=settings.batch_api_mode,
        clock=clock,
        default_deadline_hours=settings.batch_max_wait_hours,
    )
    return Runtime(
        settings=settings,
        client=client,
        ledger=ledger,
        image_store=image_store,
        catalog=catalog,
        manager=manager,
        executor=executor,
        sessions=sessions,
    )
