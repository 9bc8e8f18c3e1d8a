"""Starting a session from the launchpad: typed config -> core `SessionConfig` -> ledger row + dynamic partition.

The first step of the data flow; from here `pipeline_sensor` (sensors.py) requests the tick runs that take it forward.
"""

import os
from decimal import Decimal
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails

from batch_pipeline.batching.pricing import PriceCatalog, UnpricedModelError
from batch_pipeline.defs.resources import LEDGER_POOL, ImageStoreResource, LedgerResource, OpenAIResource, runtime_from
from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import SessionConfig

# One partition per session: each step re-materialises the session's partition, so its latest
# materialisation is the session's current state (see ARCHITECTURE.md, "Dagster layer").
SESSIONS_NAME = "sessions"  # the partitions definition's name, typed str (its `.name` is Optional)
SESSIONS = dg.DynamicPartitionsDefinition(name=SESSIONS_NAME)


class LaunchSessionConfig(dg.Config):
    """What the launchpad asks for. The bounds here are checked before the run (the job's config
    mapping, `checked_launch_config`); the core `SessionConfig` owns the cross-field rules, checked
    there too, and every refusal names the field."""

    prompt: str = Field(
        min_length=1, max_length=2000, description="the short prompt to improve, e.g. 'a lighthouse in a storm'"
    )
    N: int = Field(default=4, ge=2, le=16, description="beam width: new candidates per iteration (2..16)")
    M: int = Field(default=2, ge=1, le=8, description="survivors per iteration: at most N/2 and a divisor of N")
    K: int = Field(default=2, ge=1, le=10, description="iterations, counting iteration 0 (1..10)")
    E: int = Field(default=2, ge=1, le=5, description="votes per pairwise comparison (1..5)")
    alpha: float = Field(default=0.7, ge=0, le=1, description="weight of alignment against aesthetics (0..1)")
    seed: int = Field(default=0, ge=0, le=2**53 - 1, description="the only source of randomness (0..2^53-1)")
    tier: Literal["standard", "flex", "batch", "hybrid"] = Field(
        default="batch",
        description="batch: half price, hours; standard/flex: now; hybrid: cheapest that meets the deadline",
    )
    deadline_hours: float | None = Field(
        default=None,
        gt=0,
        le=24,
        description="the session must finish within this many hours (0 < h <= 24; default BATCH_MAX_WAIT_HOURS)",
    )
    budget_usd: float | None = Field(
        default=None,
        ge=0,
        description="spend limit: a round that would go over it is not sent and the session ends stopped (budget)",
    )
    text_model: str = Field(
        default=SearchParams.model_fields["text_model"].default,
        min_length=1,
        description="text model (must be in the price catalog, or priced in BATCH_PRICES_FILE)",
    )
    vision_model: str = Field(
        default=SearchParams.model_fields["vision_model"].default,
        min_length=1,
        description="vision model that judges the images pairwise",
    )
    image_model: str = Field(
        default=SearchParams.model_fields["image_model"].default, min_length=1, description="image model"
    )
    image_size: Literal["1024x1024", "1024x1536", "1536x1024"] = Field(default="1024x1024", description="image size")
    image_quality: Literal["low", "medium", "high"] = Field(default="low", description="image quality")
    rounds_per_iteration: int = Field(
        default=2,
        ge=2,
        le=3,
        description="2: the vision round also writes the next candidates (fewer batch waits); 3: a text "
        "round every iteration",
    )
    session_id: str | None = Field(default=None, description="letters, digits, '-' or '_'; default: a random id")


def session_config_from(config: LaunchSessionConfig) -> SessionConfig:
    """The core config, or `dg.Failure` whose description names each offending field."""
    try:
        return _core_config(config)
    except ValidationError as exc:
        problems = _problems(exc)
        raise dg.Failure(
            description="invalid session config: " + "; ".join(problems),
            metadata={"fields": ", ".join(p.split(":")[0] for p in problems)},
        ) from None


def _core_config(config: LaunchSessionConfig) -> SessionConfig:
    params = {
        "N": config.N,
        "M": config.M,
        "K": config.K,
        "E": config.E,
        "alpha": config.alpha,
        "seed": config.seed,
        "text_model": config.text_model,
        "vision_model": config.vision_model,
        "image_model": config.image_model,
        "image_size": config.image_size,
        "image_quality": config.image_quality,
        "rounds_per_iteration": config.rounds_per_iteration,
    }
    return SessionConfig(
        prompt=config.prompt,
        params=SearchParams(**params),
        tier=config.tier,
        deadline_hours=config.deadline_hours,
        session_id=config.session_id,
        # Through str: a float like 0.1 must become Decimal("0.1"), not its binary approximation.
        budget_usd=None if config.budget_usd is None else Decimal(str(config.budget_usd)),
    )


def _problems(exc: ValidationError) -> list[str]:
    return [f"{_field_of(e)}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]


@dg.config_mapping(config_schema=LaunchSessionConfig.to_config_schema().as_field())
def checked_launch_config(config: dict) -> dict:
    """Validate the launchpad's values before a run exists: out-of-range values, a blank prompt or an M
    that does not divide N are refused at launch (DagsterInvalidConfigError naming the field)."""
    try:
        params = _core_config(LaunchSessionConfig(**config)).params
        # The price catalog (plus BATCH_PRICES_FILE) must cost every model: nothing is ever costed at $0.
        extra = os.environ.get("BATCH_PRICES_FILE")
        PriceCatalog.load(extra=Path(extra) if extra else None).check_search_models(
            text_model=params.text_model,
            vision_model=params.vision_model,
            image_model=params.image_model,
            image_size=params.image_size,
            image_quality=params.image_quality,
        )
    except ValidationError as exc:
        raise dg.DagsterInvalidConfigError("invalid session config: " + "; ".join(_problems(exc)), [], config) from None
    except UnpricedModelError as exc:
        raise dg.DagsterInvalidConfigError(f"invalid session config: {exc.field}: {exc}", [], config) from None
    return {"ops": {"start_session": {"config": config}}}


def _field_of(error: ErrorDetails) -> str:
    """The launchpad field an error is about (`params` is the core's grouping, not a launchpad field)."""
    return ".".join(str(p) for p in error["loc"] if p != "params") or "config"


@dg.op(
    pool=LEDGER_POOL, description="Validate the launch config, record the session in the ledger and add its partition."
)
def start_session(
    context: dg.OpExecutionContext,
    config: LaunchSessionConfig,
    openai: OpenAIResource,
    ledger: LedgerResource,
    image_store: ImageStoreResource,
) -> None:
    # Returns nothing: the session id goes into metadata, so no IO manager pickles anything.
    session_config = session_config_from(config)
    runtime = runtime_from(openai, ledger, image_store)
    try:
        session_id = runtime.sessions.start(session_config)
    except UnpricedModelError as exc:
        raise dg.Failure(description=f"{exc.field}: {exc}") from None
    except ValueError as exc:  # e.g. a session id the search's keys cannot carry
        raise dg.Failure(description=f"session_id: {exc}") from None
    # The driver sensor adds missing partitions too, so a crash right here loses nothing.
    context.instance.add_dynamic_partitions(SESSIONS_NAME, [session_id])
    context.add_output_metadata(
        {
            "session_id": session_id,
            "tier": session_config.tier,
            "params": dg.MetadataValue.json(session_config.params.model_dump()),
            **runtime.sessions.money_and_time(session_id, estimate=True),
        }
    )
    context.log.info(f"session {session_id} started; pipeline_sensor requests the tick that steps it")


@dg.job(
    description="Start a beam-search session from the launchpad; sensors then drive it step by step.",
    tags={"batch_pipeline/kind": "launch"},
    config=checked_launch_config,
)
def launch_session() -> None:
    start_session()
