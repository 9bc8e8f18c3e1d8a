"""The command-line entry points, run in-process against the bundled simulator."""

from __future__ import annotations

from batch_pipeline.cli.main import main


def test_demo_pushes_a_workload_through_batches_and_prints_costs(tmp_path, capsys):
    assert main(["demo", "--requests", "6", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "requests by state: {'succeeded': 13}" in out  # 6 chats, 4 images, 3 comparisons
    assert "standard tier for the same calls" in out and "batch/flex saved" in out and "cache avoided" in out


def test_search_runs_a_session_and_prints_winner_rounds_and_cost_table(tmp_path, capsys):
    code = main(
        [
            "search",
            "a fox in the snow",
            "--tier",
            "batch",
            "-N",
            "4",
            "-M",
            "2",
            "-K",
            "2",
            "-E",
            "1",
            "--home",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "winner i1c" in out or "winner i0c" in out
    assert "best score per iteration" in out and "5 rounds" in out
    assert "batch " in out and "saved" in out


def test_search_refuses_invalid_parameters_naming_the_field(tmp_path, capsys):
    assert main(["search", "a fox", "-N", "4", "-M", "3", "--home", str(tmp_path)]) == 2
    assert "invalid session: M: M must be at most N/2 (N=4, M=3)" in capsys.readouterr().err


def test_search_estimate_prices_every_tier_without_spending(tmp_path, capsys):
    assert main(["search", "a fox", "-N", "4", "-M", "2", "-K", "2", "--estimate", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for tier in ("standard", "flex", "batch"):
        assert f"  {tier}" in out
    assert "4 text, 8 image, 64 vision calls" in out and "upper bound" in out and "24 h window" in out
    assert not (tmp_path / "simulator").exists(), "nothing was started, nothing was called"


def test_search_refuses_an_unpriced_model_naming_the_option(tmp_path, capsys):
    assert main(["search", "a fox", "--text-model", "gpt-9", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "text_model" in err and "price catalog" in err and "--prices" in err
