"""Helpers for the Dagster-layer tests: launch a session, run one step, flush, ingest (as the sensors would)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg

from batch_pipeline.defs.batch_assets import batch_results, submitted_batches
from batch_pipeline.defs.checks import ALL_CHECKS, batch_results_invariants_check
from batch_pipeline.defs.launch import launch_session
from batch_pipeline.defs.run_history import PARTITION_TAG, RUN_KEY_TAG, SENSOR_NAME_TAG
from batch_pipeline.defs.session_assets import generated_prompts, image_candidates, queued_requests, ranked_results

STEP_ASSETS = [queued_requests, generated_prompts, image_candidates, ranked_results]
STEP_CHECKS = [c for c in ALL_CHECKS if c is not batch_results_invariants_check]


def launch(instance: dg.DagsterInstance, resources: dict, session_id: str, **config) -> dg.ExecuteInJobResult:
    config = {"prompt": "a lighthouse in a storm", "N": 4, "M": 2, "K": 2, "E": 2, "session_id": session_id} | config
    # The job's config mapping takes the launchpad's fields at the top level and checks them before the run.
    return launch_session.execute_in_process(run_config=config,
                                             instance=instance, resources=resources, raise_on_error=False)


def step(instance: dg.DagsterInstance, resources: dict, session_id: str, **kwargs) -> dg.ExecuteInJobResult:
    return dg.materialize([*STEP_ASSETS, *STEP_CHECKS], instance=instance, resources=resources,
                          partition_key=session_id, **kwargs)


def flush(instance: dg.DagsterInstance, resources: dict) -> dg.ExecuteInJobResult:
    return dg.materialize([submitted_batches], instance=instance, resources=resources)


def ingest(instance: dg.DagsterInstance, resources: dict, **kwargs) -> dg.ExecuteInJobResult:
    kwargs.setdefault("raise_on_error", False)
    return dg.materialize([batch_results, batch_results_invariants_check], instance=instance, resources=resources, **kwargs)


def metadata(result: dg.ExecuteInJobResult, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def checks(result: dg.ExecuteInJobResult) -> dict[str, tuple[bool, str]]:
    return {e.check_name: (e.passed, str(e.severity.value)) for e in result.get_asset_check_evaluations()}


def run_session_to_end(instance: dg.DagsterInstance, resources: dict, session_ids: list[str], max_steps: int = 12) -> dict:
    """Step every session, flush, ingest, repeat: what the three sensors make the daemon do."""
    last = {}
    for _ in range(max_steps):
        for sid in session_ids:
            result = step(instance, resources, sid)
            assert result.success
            last[sid] = result
        if all(metadata(last[sid], "queued_requests")["status"] == "completed" for sid in session_ids):
            return last
        assert flush(instance, resources).success
        assert ingest(instance, resources).success
    raise AssertionError("sessions did not finish")


def file_digest(path: Path) -> str:
    """The ledger file's bytes (plus its WAL): a sensor that wrote anything would change them."""
    h = hashlib.sha256()
    for p in (path, path.with_name(path.name + ".wal")):
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


def record_prior_run(instance: dg.DagsterInstance, job_name: str, run_key: str, sensor_name: str, *,
                     failed: bool, partition: str | None = None) -> dg.DagsterRun:
    """A run the daemon would have launched for `run_key`: failed, or still waiting to start."""
    from batch_pipeline.definitions import defs

    tags = {RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}
    if partition:
        tags[PARTITION_TAG] = partition
    run = instance.create_run_for_job(job_def=defs.resolve_job_def(job_name), tags=tags,
                                      status=dg.DagsterRunStatus.NOT_STARTED)
    if failed:
        instance.report_run_failed(run)
    return run
