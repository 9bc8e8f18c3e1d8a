"""Tests for `batch_pipeline.settings`: environment variables -> validated `Settings`.

Each test passes an explicit environment, so the developer's own shell never leaks in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_pipeline.settings import SettingsError, load_settings

SECRET = "sk-test-do-not-print-0123456789"


def test_empty_environment_gives_documented_defaults() -> None:
    settings = load_settings({})

    assert settings.batch_api_enabled is False
    assert settings.batch_api_mode == "deferred"
    assert settings.batch_max_wait_hours == 24
    assert settings.batch_poll_interval_ms == 30_000
    assert settings.batch_vision_enabled and settings.batch_llm_enabled and settings.batch_images_enabled
    assert settings.batch_fallback_to_standard
    assert settings.batch_hybrid_mode is False
    assert settings.batch_flush_max_requests == 1000
    assert settings.batch_flush_max_age_seconds == 300
    assert settings.batch_max_file_bytes == 200 * 1024 * 1024
    assert settings.batch_max_requests_per_file == 50_000
    assert settings.batch_max_attempts == 3
    assert settings.openai_api_key is None and settings.openai_base_url is None
    assert settings.batch_pipeline_home == Path("var")


def test_values_are_read_from_upper_case_variables() -> None:
    settings = load_settings(
        {
            "BATCH_API_MODE": "immediate",
            "BATCH_MAX_WAIT_HOURS": "1.5",
            "BATCH_POLL_INTERVAL_MS": "250",
            "BATCH_FLUSH_MAX_REQUESTS": "10",
            "OPENAI_BASE_URL": "http://127.0.0.1:8123/v1",
        }
    )

    assert settings.batch_api_mode == "immediate"
    assert settings.batch_max_wait_hours == 1.5
    assert settings.batch_poll_interval_ms == 250
    assert settings.batch_flush_max_requests == 10
    assert settings.openai_base_url == "http://127.0.0.1:8123/v1"


def test_explicit_environment_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_API_MODE", "immediate")

    assert load_settings({}).batch_api_mode == "deferred"
    assert load_settings().batch_api_mode == "immediate"


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [("true", True), ("TRUE", True), ("Yes", True), ("1", True), ("false", False), ("No", False), ("0", False)],
)
def test_booleans_accept_true_false_yes_no_one_zero_in_any_case(spelling: str, expected: bool) -> None:
    assert load_settings({"BATCH_API_ENABLED": spelling}).batch_api_enabled is expected


@pytest.mark.parametrize("spelling", ["on", "y", "enabled", "2"])
def test_ambiguous_boolean_spelling_names_its_variable(spelling: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"BATCH_HYBRID_MODE": spelling})

    assert str(caught.value) == f"BATCH_HYBRID_MODE: must be true/false, yes/no or 1/0 (got '{spelling}')"


def test_unknown_mode_names_variable_and_allowed_values() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"BATCH_API_MODE": "sometimes"})

    assert str(caught.value) == "BATCH_API_MODE: must be 'deferred' or 'immediate' (got 'sometimes')"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        # The Batch API's only completion window is 24 h.
        ("BATCH_MAX_WAIT_HOURS", "25", "must be a number > 0 and <= 24"),
        ("BATCH_MAX_WAIT_HOURS", "0", "must be a number > 0 and <= 24"),
        ("BATCH_POLL_INTERVAL_MS", "99", "must be an integer >= 100"),
        ("BATCH_POLL_INTERVAL_MS", "soon", "must be an integer >= 100"),
        ("BATCH_FLUSH_MAX_REQUESTS", "0", "must be an integer >= 1"),
        ("BATCH_FLUSH_MAX_AGE_SECONDS", "-1", "must be a number >= 0"),
        ("BATCH_FLUSH_MAX_AGE_SECONDS", "inf", "must be a number >= 0"),
        ("BATCH_MAX_FILE_BYTES", "1023", "must be an integer >= 1024 and <= 209715200"),
        ("BATCH_MAX_FILE_BYTES", str(200 * 1024 * 1024 + 1), "must be an integer >= 1024 and <= 209715200"),
        ("BATCH_MAX_REQUESTS_PER_FILE", "50001", "must be an integer >= 1 and <= 50000"),
        ("BATCH_MAX_ATTEMPTS", "0", "must be an integer >= 1"),
    ],
)
def test_out_of_range_number_names_variable_and_range(variable: str, value: str, allowed: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})

    assert str(caught.value) == f"{variable}: {allowed} (got '{value}')"


def test_range_limits_themselves_are_accepted() -> None:
    settings = load_settings(
        {
            "BATCH_MAX_WAIT_HOURS": "24",
            "BATCH_POLL_INTERVAL_MS": "100",
            "BATCH_FLUSH_MAX_AGE_SECONDS": "0",
            "BATCH_MAX_FILE_BYTES": "1024",
            "BATCH_MAX_REQUESTS_PER_FILE": "50000",
            "BATCH_MAX_ATTEMPTS": "1",
        }
    )

    assert settings.batch_max_wait_hours == 24
    assert settings.batch_max_file_bytes == 1024
    assert settings.batch_max_requests_per_file == 50_000


@pytest.mark.parametrize("url", ["ftp://example.com/v1", "127.0.0.1:8000/v1", "http://"])
def test_base_url_must_be_http_or_https(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"OPENAI_BASE_URL": url})

    assert str(caught.value).startswith("OPENAI_BASE_URL: must be an http(s) URL")


def test_every_bad_variable_is_named_in_one_error() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {
                "BATCH_API_MODE": "sometimes",
                "BATCH_HYBRID_MODE": "maybe",
                "BATCH_MAX_WAIT_HOURS": "48",
                "BATCH_API_ENABLED": "true",  # valid: must not be reported
            }
        )

    error = caught.value
    assert len(error.problems) == 3
    for variable in ("BATCH_API_MODE", "BATCH_HYBRID_MODE", "BATCH_MAX_WAIT_HOURS"):
        assert variable in str(error)
    assert "BATCH_API_ENABLED" not in str(error)


def test_api_key_is_hidden_everywhere_except_client_kwargs() -> None:
    settings = load_settings({"OPENAI_API_KEY": SECRET})

    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in settings.model_dump_json()
    assert settings.openai_client_kwargs() == {"api_key": SECRET}


def test_client_kwargs_include_base_url_only_when_set() -> None:
    settings = load_settings({"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})

    assert settings.openai_client_kwargs() == {"api_key": SECRET, "base_url": "http://127.0.0.1:9/v1"}


def test_client_kwargs_without_api_key_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="OPENAI_API_KEY"):
        load_settings({}).openai_client_kwargs()


def test_empty_variable_counts_as_unset() -> None:
    settings = load_settings({"OPENAI_API_KEY": "", "BATCH_API_MODE": ""})

    assert settings.openai_api_key is None
    assert settings.batch_api_mode == "deferred"


def test_derived_paths_live_under_pipeline_home(tmp_path: Path) -> None:
    settings = load_settings({"BATCH_PIPELINE_HOME": str(tmp_path)})

    assert settings.home.ledger == tmp_path / "ledger.duckdb"
    assert settings.home.images == tmp_path / "images"
    assert settings.home.batch_files == tmp_path / "batch_files"
    assert settings.home.reports == tmp_path / "reports"


def test_settings_are_immutable() -> None:
    settings = load_settings({})

    with pytest.raises(ValueError):
        settings.batch_api_enabled = True  # type: ignore[misc]


def test_the_removed_cost_tracking_switch_is_named_when_set(caplog) -> None:
    with caplog.at_level("WARNING"):
        load_settings({"BATCH_COST_TRACKING": "false"})
    assert "BATCH_COST_TRACKING" in caplog.text and "always recorded" in caplog.text
