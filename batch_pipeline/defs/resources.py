"""Dagster resources: the OpenAI client, the DuckDB ledger and the image store, and the core runtime built from them.

Assets, checks and sensors receive these by parameter name; `definitions.py` configures them from `Settings`.
"""

from pathlib import Path

import dagster as dg
import openai
from dagster_duckdb import DuckDBResource
from pydantic import Field

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reader import LedgerReader
from batch_pipeline.runtime import Runtime, build_runtime
from batch_pipeline.settings import LOCAL_PLACEHOLDER_KEY, PipelineHome, Settings, load_settings

# Every asset that writes the ledger runs in this pool; dagster_home/dagster.yaml limits it to one
# run at a time, because DuckDB admits one writing process (dagster.postgres.yaml admits more: PostgreSQL).
LEDGER_POOL = "ledger"


class OpenAIResource(dg.ConfigurableResource):
    """An `openai.OpenAI` client; the key comes from `EnvVar("OPENAI_API_KEY")`, so the UI never shows it."""

    api_key: str = Field(description="the API key (configure with dg.EnvVar, never a literal)")
    base_url: str | None = Field(default=None, description="another endpoint, e.g. the simulator; default: OpenAI")
    timeout_s: float = Field(default=60.0, description="per-request timeout")

    def get_client(self) -> openai.OpenAI:
        return openai.OpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s)


class LedgerResource(DuckDBResource):
    """The ledger (`database`: the DuckDB file, or a `postgresql://` URL given as `dg.EnvVar("BATCH_LEDGER_URL")`
    so the UI never shows its password), handed out as the core `Ledger` or a read-only `LedgerReader`.

    Deliberately not `get_connection()`: DuckDBResource's connection is opened read-write only and is
    not closed when an exception escapes the `with` block, so a failing step would keep DuckDB's
    single-writer lock. The core opens one connection per unit of work (a tick: `Ledger.unit`) and closes
    it in `finally`.
    """

    lock_timeout_s: float = Field(default=10.0, description="how long a writer waits for another process's lock")
    reports_dir: str | None = Field(default=None, description="where the cost report writes (default: by the file)")

    def reports(self) -> Path:
        return Path(self.reports_dir) if self.reports_dir else PipelineHome(Path(self.database).parent).reports

    def ledger(self) -> Ledger:
        return Ledger(self.database, lock_timeout_s=self.lock_timeout_s)

    def reader(self, *, lock_timeout_s: float = 2.0) -> LedgerReader:
        """Read-only access; sensors use a short timeout so a tick never waits long on a writer."""
        return LedgerReader(self.database, lock_timeout_s=lock_timeout_s)


class ImageStoreResource(dg.ConfigurableResource):
    """The content-addressed image directory (generated images; thumbnails are read from here)."""

    root: str = Field(description="directory of the image store")

    def store(self) -> ImageStore:
        return ImageStore(self.root)


def runtime_from(openai_resource: OpenAIResource, ledger: LedgerResource, image_store: ImageStoreResource) -> Runtime:
    """The core runtime (session service, batch manager, executor) on the resources' client, ledger and images.

    Tier and batching knobs (BATCH_*) still come from the environment through `load_settings`.
    """
    return build_runtime(
        load_settings(), client=openai_resource.get_client(), ledger=ledger.ledger(), image_store=image_store.store()
    )


def resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources for a deployment whose ledger and images live under BATCH_PIPELINE_HOME.

    The home is made absolute here: the webserver, the daemon's code server and every run worker
    must agree on one ledger file whatever their working directory.
    """
    home = PipelineHome(Path(settings.batch_pipeline_home).resolve())
    return {
        "openai": OpenAIResource(
            # The bundled simulator (a loopback OPENAI_BASE_URL) takes any key, so a first run needs none;
            # against any other endpoint the key must come from the environment.
            api_key=(
                dg.EnvVar("OPENAI_API_KEY")
                if settings.openai_api_key is not None or not settings.uses_local_endpoint
                else LOCAL_PLACEHOLDER_KEY
            ),
            # A URL is not a secret; left unset, the SDK uses its own default endpoint.
            base_url=settings.openai_base_url,
        ),
        "ledger": LedgerResource(
            database=dg.EnvVar("BATCH_LEDGER_URL") if settings.batch_ledger_url is not None else str(home.ledger),
            reports_dir=str(home.reports),
        ),
        "image_store": ImageStoreResource(root=str(home.images)),
    }
