"""What Dagster's run storage says about earlier runs: which are still going, and how a run key last ended.

The sensors read it to keep run keys idempotent and retryable; the demo reads it to wait for the last runs.
"""

from collections.abc import Callable

import dagster as dg

from batch_pipeline.defs.decisions import PriorRun

RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
PARTITION_TAG = "dagster/partition"
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def prior_runs(instance: dg.DagsterInstance, sensor_name: str) -> Callable[[str], PriorRun | None]:
    """Look up the latest run this sensor launched under a run key (Dagster stores the key as a tag)."""

    def lookup(run_key: str) -> PriorRun | None:
        records = instance.get_run_records(
            dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}), limit=1
        )
        if not records:
            return None
        record = records[0]
        if record.dagster_run.is_finished:
            return PriorRun(
                "finished", record.end_time, succeeded=record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
            )
        return PriorRun("in_progress")

    return lookup


def runs_in_progress(
    instance: dg.DagsterInstance, job_name: str | None = None, *, limit: int | None = None
) -> list[dg.DagsterRun]:
    """Runs queued or going (of one job, or of any), newest first."""
    return list(instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS), limit=limit))
