"""Runtime configuration: environment variables -> one validated, immutable `Settings` object.

Every other module receives its knobs from here; nothing else reads `os.environ`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Required, TypedDict, get_args
from urllib.parse import urlsplit

import annotated_types
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from batch_pipeline.errors import BatchPipelineError

log = logging.getLogger(__name__)

# The Batch API accepts exactly one completion window, "24h"; waiting longer than that is never useful.
BATCH_COMPLETION_WINDOW_HOURS = 24.0
# Per-input-file limits of the Batch API.
BATCH_API_MAX_FILE_BYTES = 200 * 1024 * 1024
BATCH_API_MAX_REQUESTS_PER_FILE = 50_000


# Sent to a loopback OPENAI_BASE_URL (the simulator) when no OPENAI_API_KEY is set; never to a remote host.
LOCAL_PLACEHOLDER_KEY = "sk-local-simulator"


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; a name like 127.0.0.1.example.com is not."""
    import ipaddress

    host = host.strip().lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask_url(url: str | None) -> str | None:
    """`url` with any user:password and secret-looking query values replaced by ***, for printing."""
    if not url:
        return url
    from urllib.parse import parse_qsl, urlencode, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        secret_words = ("key", "token", "secret", "password", "pass", "sig", "auth", "credential")
        pairs = [
            (k, "***" if any(w in k.lower() for w in secret_words) else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


class SettingsError(BatchPipelineError, ValueError):
    """The environment holds values the pipeline cannot run with.

    The message names every offending environment variable and what it may hold, one per
    `; `-separated part; `problems` keeps the parts apart for callers that want to list them.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})


def _parse_env_bool(value: object) -> object:
    # Pydantic's own bool parsing also takes "on", "t", "y", ...; a flag that turns paid API
    # traffic on or off should only take spellings nobody can misread.
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError("must be true/false, yes/no or 1/0")


EnvBool = Annotated[bool, BeforeValidator(_parse_env_bool)]

# `settings_customise_sources` is a classmethod and cannot take per-call arguments, so
# `load_settings(env=...)` hands its mapping to the environment source through this variable
# (per thread and per task, unlike a class attribute). None means "read os.environ".
_EXPLICIT_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("explicit_environ", default=None)


class _EnvironSource(EnvSettingsSource):
    """The usual environment source, reading an explicit mapping when `load_settings` was given one."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _EXPLICIT_ENVIRON.get()
        if environ is None:
            return super()._load_env_vars()
        # Same normalisation the base class applies to os.environ.
        return {
            (name if self.case_sensitive else name.lower()): value
            for name, value in environ.items()
            if not (self.env_ignore_empty and value == "")
        }


class OpenAIClientKwargs(TypedDict, total=False):
    """What `Settings.openai_client_kwargs` passes to `openai.OpenAI(...)`."""

    api_key: Required[str]
    base_url: str | None


@dataclass(frozen=True)
class PipelineHome:
    """What lives under BATCH_PIPELINE_HOME, named once: the ledger, the image store, batch files, reports."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.duckdb"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def batch_files(self) -> Path:
        return self.root / "batch_files"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


class Settings(BaseSettings):
    """Every environment variable the pipeline reads; the variable name is the field name upper-cased."""

    # No .env file unless a caller passes `_env_file=`: configuration stays visible in the environment.
    # An empty variable (`export OPENAI_API_KEY=`) counts as unset rather than as an invalid value.
    model_config = SettingsConfigDict(env_file=None, env_ignore_empty=True, frozen=True, extra="forbid")

    batch_api_enabled: EnvBool = False
    batch_api_mode: Literal["deferred", "immediate"] = "deferred"
    batch_max_wait_hours: float = Field(
        default=BATCH_COMPLETION_WINDOW_HOURS, gt=0, le=BATCH_COMPLETION_WINDOW_HOURS, allow_inf_nan=False
    )
    # Below 100 ms polling only burns rate limit: batches take minutes to hours.
    batch_poll_interval_ms: int = Field(default=30_000, ge=100)

    batch_vision_enabled: EnvBool = True
    batch_llm_enabled: EnvBool = Field(default=True, description="critique, refinement and other text calls")
    batch_images_enabled: EnvBool = True
    batch_fallback_to_standard: EnvBool = True
    batch_hybrid_mode: EnvBool = False

    # Deferred mode: the queue is flushed into a batch when either threshold is reached.
    batch_flush_max_requests: int = Field(default=1000, ge=1)
    batch_flush_max_age_seconds: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    # How long a batch create may go unanswered; the same batch is not created again for 30 s more.
    batch_create_timeout_seconds: float = Field(default=60.0, gt=0, le=600, allow_inf_nan=False)
    # How often Dagster evaluates the sensors; fixed when the code location loads (the demo uses a few seconds).
    batch_sensor_interval_seconds: int = Field(default=30, ge=1)
    # Assembly may split below the API's file limits (e.g. for a smaller enqueued-token queue), never above.
    batch_max_file_bytes: int = Field(default=BATCH_API_MAX_FILE_BYTES, ge=1024, le=BATCH_API_MAX_FILE_BYTES)
    batch_max_requests_per_file: int = Field(
        default=BATCH_API_MAX_REQUESTS_PER_FILE, ge=1, le=BATCH_API_MAX_REQUESTS_PER_FILE
    )
    # How often one request may be submitted before it ends failed/expired.
    batch_max_attempts: int = Field(default=3, ge=1)
    # Prices for models the packaged catalog lacks (same JSON shape as batching/prices.json's models/images);
    # without them a session naming such a model is refused at launch, never costed at $0.
    batch_prices_file: Path | None = None

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None

    batch_pipeline_home: Path = Field(default=Path("var"), description="where the ledger, images and batch files live")
    # The ledger on PostgreSQL (postgresql://user:password@host/db); unset: the DuckDB file under the home.
    # Secret: the URL may carry a password.
    batch_ledger_url: SecretStr | None = Field(
        default=None, description="a postgresql:// URL: the ledger on PostgreSQL instead of the DuckDB file"
    )

    # The HTTP API (`batch-pipeline api`). A bearer token is required whenever it binds to anything
    # but loopback; Host names and browser origins are allow-lists (comma-separated).
    batch_api_token: SecretStr | None = Field(default=None, description="bearer token the HTTP API requires")
    batch_api_allowed_hosts: str = Field(
        default="127.0.0.1,localhost,[::1]",
        min_length=1,
        description="Host header values the HTTP API answers (DNS-rebinding guard); '*' allows any",
    )
    batch_api_cors_origins: str = Field(default="", description="browser origins allowed cross-site (none by default)")
    batch_api_max_body_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvironSource(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("openai_base_url")
    @classmethod
    def _require_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8000/v1")
        return value

    @field_validator("batch_api_token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError(
                "must be at least 16 characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        return value

    @property
    def api_allowed_hosts(self) -> tuple[str, ...]:
        return _split_list(self.batch_api_allowed_hosts)

    @property
    def api_cors_origins(self) -> tuple[str, ...]:
        return _split_list(self.batch_api_cors_origins)

    @property
    def uses_local_endpoint(self) -> bool:
        """OPENAI_BASE_URL names a loopback host (the bundled simulator): no real key is needed there."""
        return self.openai_base_url is not None and is_loopback_host(urlsplit(self.openai_base_url).hostname or "")

    @property
    def home(self) -> PipelineHome:
        return PipelineHome(self.batch_pipeline_home)

    @property
    def ledger_location(self) -> str:
        """Where the ledger lives (`ledger.db.open_store`): BATCH_LEDGER_URL, else the DuckDB file under the home."""
        if self.batch_ledger_url is not None:
            return self.batch_ledger_url.get_secret_value()
        return str(self.home.ledger)

    def openai_client_kwargs(self) -> OpenAIClientKwargs:
        """Keyword arguments for `openai.OpenAI(...)`; the only place the API key is revealed."""
        if self.openai_api_key is None:
            if self.uses_local_endpoint:  # the simulator takes any key; never used for a remote endpoint
                return {"api_key": LOCAL_PLACEHOLDER_KEY, "base_url": self.openai_base_url}
            # The SDK refuses to start without a key; say which variable to set before it does.
            raise SettingsError(["OPENAI_API_KEY: must be set to call the API (any string for a local simulator)"])
        kwargs: OpenAIClientKwargs = {"api_key": self.openai_api_key.get_secret_value()}
        # Left out when unset so the SDK keeps its own default endpoint.
        if self.openai_base_url is not None:
            kwargs["base_url"] = self.openai_base_url
        return kwargs


# Variables the seed named that no longer do anything: said so once at start-up rather than silently ignored.
REMOVED_VARIABLES = {
    "BATCH_COST_TRACKING": "costs are always recorded in the ledger (paid, standard price, cache avoided); "
    "turning that off would leave budgets and reports blind",
}


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `env` (default: the process environment) or raise `SettingsError`.

    An explicit `env` is the whole environment: `os.environ` is not consulted for anything it lacks.
    """
    for name, why in REMOVED_VARIABLES.items():
        if name in (os.environ if env is None else env):
            log.warning("%s is no longer read: %s", name, why)
    token = _EXPLICIT_ENVIRON.set(env)
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_describe_problems(exc)) from None
    finally:
        _EXPLICIT_ENVIRON.reset(token)


def _describe_problems(exc: ValidationError) -> list[str]:
    problems: dict[str, str] = {}
    for error in exc.errors():
        field_name = str(error["loc"][0]) if error["loc"] else ""
        variable = field_name.upper() or "environment"
        if variable in problems:  # one line per variable, even when several checks failed
            continue
        field = Settings.model_fields.get(field_name)
        # Never echo what was offered for a secret: error messages end up in logs.
        shown = "a hidden value" if field is not None and _is_secret(field) else repr(error["input"])
        if field_name == "openai_base_url" and isinstance(error["input"], str):
            shown = repr(mask_url(error["input"]))  # a URL may carry user:password
        problems[variable] = f"{variable}: {_allowed_values(field, error)} (got {shown})"
    return list(problems.values())


def _allowed_values(field: FieldInfo | None, error: ErrorDetails) -> str:
    ctx: dict[str, Any] = error.get("ctx") or {}
    if error["type"] == "value_error":  # our own validators already phrase what is allowed
        return str(ctx["error"])
    if error["type"] == "literal_error":
        return f"must be {ctx['expected']}"
    if field is not None and field.annotation in (int, float):
        return _describe_number(field)
    return error["msg"]


_BOUND_SYMBOLS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "<="),
)


def _describe_number(field: FieldInfo) -> str:
    # Built from the field's own constraints so the message cannot drift from the check.
    kind = "an integer" if field.annotation is int else "a number"
    bounds = [
        f"{symbol} {_format_bound(getattr(constraint, attribute))}"
        for constraint in field.metadata
        for constraint_type, attribute, symbol in _BOUND_SYMBOLS
        if isinstance(constraint, constraint_type)
    ]
    return f"must be {kind}" + (" " + " and ".join(bounds) if bounds else "")


def _format_bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)
