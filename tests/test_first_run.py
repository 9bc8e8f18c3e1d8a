"""A first run with no surprises: the demo checks its ports, the simulator needs no key, URLs are masked."""

from __future__ import annotations

import socket

import dagster as dg
import pytest

from batch_pipeline.cli import demo as dagster_demo
from batch_pipeline.defs.resources import resources_from
from batch_pipeline.settings import LOCAL_PLACEHOLDER_KEY, SettingsError, load_settings, mask_url
from tests.test_cli_startup import assert_help_states_defaults


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("option", ["--simulator-port", "--port"])
def test_the_demo_refuses_a_taken_port_before_starting_anything(taken_port, option, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(dagster_demo, "start_simulator", lambda *a, **k: started.append("simulator"))
    args = [option, str(taken_port), "--exit-when-done"]
    if option == "--port":
        args += ["--simulator-port", "0"]
    assert dagster_demo.main(args) == 2
    err = capsys.readouterr().err
    assert f"port {taken_port}" in err and "already in use" in err and option in err
    assert started == []


def test_the_demo_picks_free_ports_when_asked():
    ports = dagster_demo.choose_ports({"simulator": (0, "--simulator-port"), "Dagster UI": (0, "--port")})
    assert all(p > 0 and not dagster_demo.port_in_use(p) for p in ports.values())


def test_demo_options_have_help_with_defaults(capsys):
    with pytest.raises(SystemExit):
        dagster_demo.main(["--help"])
    assert_help_states_defaults(capsys.readouterr().out)


def test_a_local_simulator_needs_no_key_but_a_real_endpoint_does():
    local = load_settings({"OPENAI_BASE_URL": "http://127.0.0.1:8800/v1"})
    assert local.openai_client_kwargs()["api_key"] == LOCAL_PLACEHOLDER_KEY
    assert load_settings({"OPENAI_BASE_URL": "http://localhost:8800/v1"}).uses_local_endpoint
    for env in (
        {},
        {"OPENAI_BASE_URL": "https://api.example.com/v1"},
        {"OPENAI_BASE_URL": "http://127.0.0.1.evil.example/v1"},
    ):
        with pytest.raises(SettingsError, match="OPENAI_API_KEY"):
            load_settings(env).openai_client_kwargs()
    own = load_settings({"OPENAI_BASE_URL": "http://127.0.0.1:8800/v1", "OPENAI_API_KEY": "sk-mine"})
    assert own.openai_client_kwargs()["api_key"] == "sk-mine"


def test_dagster_resources_use_a_placeholder_key_only_for_a_local_simulator(tmp_path):
    local = resources_from(
        load_settings({"OPENAI_BASE_URL": "http://127.0.0.1:8800/v1", "BATCH_PIPELINE_HOME": str(tmp_path)})
    )
    assert local["openai"].api_key == LOCAL_PLACEHOLDER_KEY
    remote = resources_from(
        load_settings({"OPENAI_BASE_URL": "https://api.example.com/v1", "BATCH_PIPELINE_HOME": str(tmp_path)})
    )
    assert isinstance(remote["openai"].api_key, dg.EnvVar)
    keyed = resources_from(
        load_settings(
            {
                "OPENAI_BASE_URL": "http://127.0.0.1:8800/v1",
                "OPENAI_API_KEY": "sk-x",
                "BATCH_PIPELINE_HOME": str(tmp_path),
            }
        )
    )
    assert isinstance(keyed["openai"].api_key, dg.EnvVar), "a configured key is never replaced or inlined"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@proxy.example/v1", "https://***@proxy.example/v1"),
        ("https://proxy.example/v1?api-key=s3cret&region=eu", "https://proxy.example/v1?api-key=***&region=eu"),
        ("http://127.0.0.1:8800/v1", "http://127.0.0.1:8800/v1"),
    ],
)
def test_secrets_in_urls_are_masked(url, shown):
    assert mask_url(url) == shown


def test_an_invalid_url_error_does_not_echo_its_password():
    with pytest.raises(SettingsError) as refused:
        load_settings({"OPENAI_BASE_URL": "ftp://user:s3cret@host/v1"})
    assert "s3cret" not in str(refused.value) and "OPENAI_BASE_URL" in str(refused.value)
