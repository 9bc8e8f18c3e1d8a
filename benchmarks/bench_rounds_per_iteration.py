"""Benchmark: dependent rounds per iteration, and what cutting them from 3 to 2 costs and saves.

A beam search is a chain of dependent rounds; on the batch tier each round waits for a batch. This runs the
same sessions (same seeds) with 3 rounds per iteration (text, image, vision) and with 2 (the vision round
also critiques each pooled image and writes its children, so later iterations have no text round) against
the bundled simulator, and prints per variant: dependent rounds, calls, cost (batch tier), simulated wall
time at a given batch turnaround, and how good the winners are by the simulator's own ground truth (its
judge's alignment and aesthetics scores of the winning prompt, weighted by alpha), head to head per seed.
Not run by the test command. Usage: python benchmarks/bench_rounds_per_iteration.py [--seeds 4] [--turnaround-min 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.pricing import format_usd
from batch_pipeline.driver import Driver
from batch_pipeline.runtime import build_runtime
from batch_pipeline.search import SearchParams, dependent_rounds
from batch_pipeline.sessions import SessionConfig
from batch_pipeline.settings import load_settings
from openai_simulator import Simulator, SimulatorConfig
from openai_simulator.judge import aesthetics, alignment

PROMPT = "a lighthouse in a storm"


def ground_truth(prompt: str, params: SearchParams, image_prompt: str) -> float:
    """The simulator judge's noiseless score of a prompt: what its votes estimate."""
    return params.alpha * alignment(prompt, image_prompt) + (1 - params.alpha) * aesthetics(image_prompt)


def run(variant: int, seed: int, args: argparse.Namespace, home: Path, url: str) -> dict:
    settings = load_settings(
        {
            "BATCH_API_ENABLED": "true",
            "BATCH_API_MODE": "immediate",
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": url,
            "BATCH_PIPELINE_HOME": str(home / f"r{variant}-s{seed}"),
        }
    )
    runtime = build_runtime(settings, poll_policy=PollPolicy(initial_s=0.01, max_s=0.05))
    params = SearchParams(N=args.N, M=args.M, K=args.K, E=args.E, seed=seed, rounds_per_iteration=variant)
    # Standard tier: the simulator answers at once; the batch price is exactly half (prices.json).
    sid = runtime.sessions.start(
        SessionConfig(prompt=PROMPT, tier="standard", session_id=f"r{variant}s{seed}", params=params)
    )
    started = time.perf_counter()
    progress = Driver(runtime, owner="cli", session_ids=[sid]).run_session(sid, timeout_s=600)
    assert progress.status == "completed", progress
    state = runtime.sessions.state(sid)
    figures = runtime.ledger.cost_figures(session_id=sid)
    winner = state.candidate(state.winner_id)
    return {
        "rounds": len(state.rounds),
        "calls": figures.calls,
        "batch_cost": figures.standard_for_calls / 2,
        "quality": ground_truth(PROMPT, params, winner.combined),
        "winner": winner.combined,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--turnaround-min", type=float, default=20.0, help="simulated minutes per batch round")
    parser.add_argument("-N", type=int, default=6)
    parser.add_argument("-M", type=int, default=2)
    parser.add_argument("-K", type=int, default=3)
    parser.add_argument("-E", type=int, default=2)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"N={args.N} M={args.M} K={args.K} E={args.E}, seeds 0..{args.seeds - 1}, "
        f"{args.turnaround_min:g} min per batch round"
    )
    results: dict[int, list[dict]] = {3: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with Simulator(SimulatorConfig(data_dir=home / "sim")).serve() as url:
            for seed in range(args.seeds):
                for variant in (3, 2):
                    results[variant].append(run(variant, seed, args, home, url))
    print(
        f"\n{'rounds/iteration':<17} {'dependent rounds':>16} {'calls':>7} {'batch cost':>11} "
        f"{'simulated wall time':>20} {'winner quality':>15}"
    )
    for variant in (3, 2):
        rows = results[variant]
        rounds = statistics.mean(r["rounds"] for r in rows)
        expected = dependent_rounds(SearchParams(N=args.N, M=args.M, K=args.K, E=args.E, rounds_per_iteration=variant))
        assert rounds == expected, (rounds, expected)
        cost = sum((r["batch_cost"] for r in rows), Decimal(0)) / len(rows)
        hours = rounds * args.turnaround_min / 60
        print(
            f"{variant:<17} {rounds:>16.0f} {statistics.mean(r['calls'] for r in rows):>7.1f} {format_usd(cost):>11} "
            f"{hours:>18.1f} h {statistics.mean(r['quality'] for r in rows):>15.3f}"
        )
    pairs = list(zip(results[3], results[2], strict=True))
    same = sum(a["winner"] == b["winner"] for a, b in pairs)
    two_better = sum(b["quality"] > a["quality"] for a, b in pairs)
    tied = sum(b["quality"] == a["quality"] for a, b in pairs)
    print(
        f"\nper seed (same seed, same prompt): identical winner prompt in {same}/{len(pairs)}; the 2-round winner "
        f"scores higher in {two_better}, ties in {tied}, lower in {len(pairs) - two_better - tied} "
        f"(simulator ground truth: alpha*alignment + (1-alpha)*aesthetics)"
    )
    print("per seed quality (3 -> 2): " + ", ".join(f"{a['quality']:.3f} -> {b['quality']:.3f}" for a, b in pairs))


if __name__ == "__main__":
    main()
