"""The code location loads, names what the issue asks for, and its instance config is valid."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

import batch_pipeline.definitions as definitions

REPO = Path(__file__).resolve().parents[2]


def test_definitions_load_and_validate():
    dg.Definitions.validate_loadable(definitions.defs)


def test_the_code_location_has_the_assets_checks_jobs_sensors_and_schedule():
    repo = definitions.defs.get_repository_def()
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == {
        "queued_requests",
        "generated_prompts",
        "image_candidates",
        "ranked_results",
        "session_steps",
        "submitted_batches",
        "batch_results",
        "cost_report",
    }
    assert {k.name for k in repo.asset_graph.asset_check_keys} == {
        "applied_rounds_terminal",
        "session_budgets",
        "ledger_invariants",
    }
    assert {j.name for j in repo.get_all_jobs()} >= {"launch_session", "tick_job", "cost_report_job"}
    assert {s.name for s in repo.sensor_defs} == {"pipeline_sensor"}
    assert [s.name for s in repo.schedule_defs] == ["daily_cost_report_schedule"]
    assert repo.get_schedule_def("daily_cost_report_schedule").cron_schedule == "0 6 * * *"


def test_every_asset_has_a_description_group_and_kinds_and_sessions_are_partitions():
    graph = definitions.defs.get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 80, key
        assert node.group_name in {"search", "batches", "reports"}, key
        assert node.kinds, key
    for name in ("queued_requests", "generated_prompts", "image_candidates", "ranked_results"):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "sessions"


def test_ledger_writers_share_the_ledger_pool():
    repo = definitions.defs.get_repository_def()
    for job in ("tick_job", "cost_report_job", "launch_session"):
        pools = {
            node.definition.pool
            for node in repo.get_job(job).graph.node_dict.values()
            if hasattr(node.definition, "pool")
        }
        assert pools == {"ledger"}, job


def test_the_api_key_is_an_env_var_not_a_value(resources):
    key = resources["openai"].api_key
    assert isinstance(key, dg.EnvVar) and key.env_var_name == "OPENAI_API_KEY"


def test_dagster_yaml_is_a_valid_instance_config_for_two_cores(tmp_path):
    config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 2
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["sensors"]["use_threads"] is True
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    finally:
        instance.dispose()


def test_workspace_loads_the_definitions_module():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert workspace["load_from"] == [
        {"python_module": {"module_name": "batch_pipeline.definitions", "attribute": "defs"}}
    ]


def test_sensor_interval_comes_from_the_environment():
    from batch_pipeline.settings import SettingsError, load_settings

    assert load_settings({}).batch_sensor_interval_seconds == 30
    assert load_settings({"BATCH_SENSOR_INTERVAL_SECONDS": "5"}).batch_sensor_interval_seconds == 5
    for bad in ("soon", "0"):
        with pytest.raises(SettingsError, match="BATCH_SENSOR_INTERVAL_SECONDS"):
            load_settings({"BATCH_SENSOR_INTERVAL_SECONDS": bad})
