"""The error tree: every error the project raises has one root, and the transient marker is what the
drivers wait out."""

import importlib
import inspect
import pkgutil

import duckdb

import batch_pipeline
from batch_pipeline.errors import (
    BatchPipelineError,
    DownloadIncomplete,
    LedgerBusy,
    LedgerError,
    StateTransitionError,
    Transient,
    is_ledger_busy,
    is_transient,
)


def _project_exceptions() -> set[type[BaseException]]:
    found = set()
    for info in pkgutil.walk_packages(batch_pipeline.__path__, "batch_pipeline."):
        if ".simulator" in info.name or info.name.startswith(
            ("batch_pipeline.defs", "batch_pipeline.definitions", "batch_pipeline.cli.demo")
        ):
            continue  # the simulator is a test double; Dagster's layer raises Dagster's errors
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name and not cls.__name__.startswith("_"):
                found.add(cls)
    return found


def test_every_public_error_of_the_core_descends_from_the_one_root():
    errors = _project_exceptions()
    assert {LedgerError, LedgerBusy, DownloadIncomplete} <= errors
    assert [cls.__name__ for cls in errors if not issubclass(cls, BatchPipelineError)] == []


def test_the_transient_marker_is_what_the_drivers_wait_out():
    assert is_transient(LedgerBusy("held")) and is_ledger_busy(LedgerBusy("held"))
    assert is_transient(DownloadIncomplete("short"))
    assert is_transient(duckdb.IOException("Could not set lock on file"))
    assert not is_transient(StateTransitionError("queued -> ingested"))
    assert not is_transient(BatchPipelineError("a bug"))
    assert issubclass(LedgerBusy, LedgerError) and issubclass(LedgerBusy, Transient)
