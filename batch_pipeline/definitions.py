"""The code location: every asset, check, job, sensor, schedule and resource in one `Definitions`.

Loaded by `workspace.yaml` (webserver, daemon, run workers); the pieces live in `batch_pipeline/defs/`.
"""

from __future__ import annotations

import dagster as dg

from batch_pipeline.defs.batch_assets import pipeline_tick, tick_job
from batch_pipeline.defs.launch import launch_session
from batch_pipeline.defs.reporting import cost_report, cost_report_job, daily_cost_report_schedule
from batch_pipeline.defs.resources import resources_from
from batch_pipeline.defs.sensors import ALL_SENSORS
from batch_pipeline.defs.session_assets import SESSION_VIEWS
from batch_pipeline.settings import load_settings

defs = dg.Definitions(
    # The session views are specs: the tick run records their per-session materialisations.
    assets=[*SESSION_VIEWS, pipeline_tick, cost_report],
    jobs=[launch_session, tick_job, cost_report_job],
    sensors=ALL_SENSORS,
    schedules=[daily_cost_report_schedule],
    # Reads the environment only (no connection is opened at import); an invalid BATCH_* variable
    # fails the code location's load with a message naming it.
    resources=resources_from(load_settings()),
    # One process per run, not one per step: a step is a few ledger calls, and on 2 cores a Python
    # process per step would cost more than the work.
    executor=dg.in_process_executor,
)
