"""Launching a session from typed config: a ledger row and a partition, or a refusal naming the field."""

from __future__ import annotations

import dagster as dg
import pytest

from batch_pipeline.ledger.reader import LedgerReader
from tests.defs.support import launch


def failure_description(result: dg.ExecuteInJobResult) -> str:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.step_failure_data.user_failure_data.description


def test_launch_records_the_session_and_adds_its_partition(instance, resources):
    result = launch(instance, resources, "s1", prompt="a fox in the snow", tier="hybrid", budget_usd=0.5)
    assert result.success
    assert instance.get_dynamic_partitions("sessions") == ["s1"]
    reader = LedgerReader(resources["ledger"].database)
    assert reader.session_status("s1") == ("running", 0, "text", None)
    assert reader.session_budget("s1") == pytest.approx(0.5)
    (materialization_free_output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = materialization_free_output.step_output_data.metadata
    assert metadata["session_id"].value == "s1"
    # Priced before spending, on every tier, with the deadline (BATCH_MAX_WAIT_HOURS) and the budget.
    assert {"estimate_standard", "estimate_flex", "estimate_batch", "deadline", "estimated_completion"} <= set(metadata)
    assert metadata["estimate_batch"].value.startswith("$0.0") and metadata["budget"].value == "$0.5000"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"N": 4, "M": 3}, "M"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"deadline_hours": 30}, "deadline_hours"),
        ({"N": 40}, "N"),
        ({"N": 0}, "N"),
        ({"K": 0}, "K"),
        ({"E": 9}, "E"),
        ({"alpha": 1.5}, "alpha"),
        ({"seed": -1}, "seed"),
        ({"budget_usd": -1}, "budget_usd"),
        ({"text_model": "gpt-9-turbo"}, "text_model"),
        ({"image_model": "gpt-4o-mini"}, "image_model"),
    ],
)
def test_invalid_config_is_refused_before_the_run_naming_the_field(instance, resources, config, field):
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        launch(instance, resources, "s1", **config)
    assert str(refused.value).startswith("invalid session config: ") and f"{field}:" in str(refused.value)
    assert instance.get_runs() == [], "no run was created"
    assert instance.get_dynamic_partitions("sessions") == []
    assert not LedgerReader(resources["ledger"].database).exists(), "refused before anything was written"


def test_the_launchpad_schema_carries_the_bounds_checked_at_launch():
    from batch_pipeline.defs.launch import checked_launch_config, launch_session

    assert launch_session.config_mapping is checked_launch_config
    with pytest.raises(dg.DagsterInvalidConfigError, match="N: Input should be greater than or equal to 2"):
        dg.validate_run_config(launch_session, {"prompt": "x", "N": 0})
    dg.validate_run_config(launch_session, {"prompt": "x"})


def test_a_session_id_the_keys_cannot_carry_is_refused_naming_it(instance, resources):
    result = launch(instance, resources, "bad id!")
    assert not result.success
    assert failure_description(result).startswith("session_id: ")


def test_an_unknown_tier_is_refused_by_the_launchpad_naming_it(instance, resources):
    with pytest.raises(dg.DagsterInvalidConfigError, match="tier"):
        launch(instance, resources, "s1", tier="overnight")
