"""SIGKILL the headless CLI at several points of a session and run the same command again.

Each crash leaves one session, resumed by the rerun, with the same winner and the same paid cost as an
uninterrupted run, no batch created twice and no request body paid twice: checked against the
simulator's own record of what it answered (`billed.jsonl`). On the standard tier, answers in flight at
the kill are lost and paid again; those (and only those) are recorded as lost, at an estimated cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from batch_pipeline.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
ARGS = ["a lighthouse in a storm", "-N", "4", "-M", "2", "-K", "2", "-E", "2", "--seed", "5"]
TIMEOUT_S = 600  # one small session takes ~10 s on an idle 2-core machine; generous for a loaded one


def search(home: Path, tier: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCH_"))}
    if failpoint:
        env["BATCH_PIPELINE_FAILPOINTS"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "batch_pipeline.cli.main", "search", *ARGS, "--tier", tier, "--home", str(home)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def summary(home: Path) -> dict:
    ledger = Ledger(home / "ledger.duckdb")
    (session,) = ledger.sessions()
    billed = [orjson.loads(line) for line in (home / "simulator" / "billed.jsonl").read_bytes().splitlines()]
    with ledger.connect() as con:
        paid = con.execute("SELECT sum(cost_usd) FROM results WHERE outcome = 'succeeded'").fetchone()[0]
        lost = con.execute("SELECT count(*) FROM results WHERE error_code = 'lost_in_flight'").fetchone()[0]
    remote_batches = len(list((home / "simulator" / "batches").glob("*.json")))
    return {
        "session": session,
        "winner": session.winner_id,
        "paid": paid,
        "lost": lost,
        "billed_twice": sum(n - 1 for n in Counter(b["body_sha256"] for b in billed).values()),
        "batches": remote_batches,
        "recorded_batches": len(ledger.batches()),
        "invariants": ledger.check_invariants(),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    runs = {}
    for tier in ("batch", "standard"):
        home = tmp_path_factory.mktemp(f"clean-{tier}")
        done = search(home, tier)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[tier] = summary(home)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tier", "failpoint"),
    [
        ("batch", "round-queued:2"),  # the second round's requests queued, no batch yet
        ("batch", "batch-created:3"),  # a batch in flight
        ("batch", "ingest-downloaded:2"),  # results downloaded, not yet recorded
        ("standard", "sync-outcome-recorded:7"),  # mid-round: some answers recorded, some in flight
    ],
)
def test_a_killed_session_rerun_with_the_same_command_finishes_once(tmp_path, uninterrupted, tier, failpoint):
    killed = search(tmp_path, tier, failpoint)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    rerun = search(tmp_path, tier)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming unfinished session" in rerun.stdout

    after, clean = summary(tmp_path), uninterrupted[tier]
    assert after["invariants"] == []
    assert after["session"].status == "completed"
    assert after["winner"] == clean["winner"]
    # Batch tier: nothing is paid twice, no batch is created twice.
    assert after["batches"] == after["recorded_batches"] == clean["batches"]
    assert after["billed_twice"] <= after["lost"] + clean["billed_twice"]
    if tier == "batch":
        assert after["billed_twice"] == clean["billed_twice"] == 0 and after["lost"] == 0
    # What the answers used cost is the same; answers lost in flight are on top, estimated and recorded.
    assert after["paid"] == clean["paid"]
