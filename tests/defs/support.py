"""Helpers for the Dagster-layer tests: launch a session, run one step, flush, ingest (as the sensors would)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from unittest import mock

import dagster as dg

from batch_pipeline.defs.batch_assets import pipeline_tick
from batch_pipeline.defs.launch import launch_session
from batch_pipeline.defs.run_history import PARTITION_TAG, RUN_KEY_TAG, SENSOR_NAME_TAG
from batch_pipeline.defs.session_assets import SESSION_VIEWS


def launch(instance: dg.DagsterInstance, resources: dict, session_id: str, **config) -> dg.ExecuteInJobResult:
    config = {"prompt": "a lighthouse in a storm", "N": 4, "M": 2, "K": 2, "E": 2, "session_id": session_id} | config
    # The job's config mapping takes the launchpad's fields at the top level and checks them before the run.
    return launch_session.execute_in_process(
        run_config=config, instance=instance, resources=resources, raise_on_error=False
    )


def tick(instance: dg.DagsterInstance, resources: dict, **kwargs) -> dg.ExecuteInJobResult:
    """One tick run, as `pipeline_sensor` requests it: step every ready session, flush if due, ingest."""
    kwargs.setdefault("raise_on_error", False)
    return dg.materialize(
        [*SESSION_VIEWS, pipeline_tick], selection=[pipeline_tick], instance=instance, resources=resources, **kwargs
    )


def session_metadata(result: dg.ExecuteInJobResult, asset: str, session_id: str) -> dict:
    """The metadata the run recorded for one session's partition of a session view."""
    events = [
        e
        for e in result.all_events
        if e.is_step_materialization and e.asset_key.to_user_string() == asset and e.partition == session_id
    ]
    (event,) = events
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


def moved(result: dg.ExecuteInJobResult) -> set[str]:
    return {
        e.partition
        for e in result.all_events
        if e.is_step_materialization and e.asset_key.to_user_string() == "queued_requests"
    }


def metadata(result: dg.ExecuteInJobResult, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


def checks(result: dg.ExecuteInJobResult) -> dict[str, tuple[bool, str]]:
    return {e.check_name: (e.passed, str(e.severity.value)) for e in result.get_asset_check_evaluations()}


def run_session_to_end(
    instance: dg.DagsterInstance, resources: dict, session_ids: list[str], max_ticks: int = 12
) -> dict:
    """Tick until every session completed, as the sensor makes the daemon do, with the queue due at once (the
    daemon would flush it at its age); the last views of each session."""
    last = {}
    with mock.patch.dict(os.environ, {"BATCH_FLUSH_MAX_AGE_SECONDS": "0"}):
        for _ in range(max_ticks):
            result = tick(instance, resources)
            assert result.success
            for sid in moved(result):
                last[sid] = result
            if all(
                sid in last and session_metadata(last[sid], "queued_requests", sid)["status"] == "completed"
                for sid in session_ids
            ):
                return last
    raise AssertionError("sessions did not finish")


def file_digest(path: Path) -> str:
    """The ledger file's bytes (plus its WAL): a sensor that wrote anything would change them."""
    h = hashlib.sha256()
    for p in (path, path.with_name(path.name + ".wal")):
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


def record_prior_run(
    instance: dg.DagsterInstance,
    job_name: str,
    run_key: str,
    sensor_name: str,
    *,
    failed: bool,
    partition: str | None = None,
) -> dg.DagsterRun:
    """A run the daemon would have launched for `run_key`: failed, or still waiting to start."""
    from batch_pipeline.definitions import defs

    tags = {RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}
    if partition:
        tags[PARTITION_TAG] = partition
    run = instance.create_run_for_job(
        job_def=defs.resolve_job_def(job_name), tags=tags, status=dg.DagsterRunStatus.NOT_STARTED
    )
    if failed:
        instance.report_run_failed(run)
    return run
