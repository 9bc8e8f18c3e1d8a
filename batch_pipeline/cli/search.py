"""`batch-pipeline search`: one beam-search session, headless, with a progress bar and a cost table.

Builds the runtime (`runtime.build_runtime`, as Dagster does) against the bundled simulator, or against
the API named by OPENAI_API_KEY / OPENAI_BASE_URL with --use-env, and drives the session with the one
session driver. Running the same command again resumes an unfinished session with the same settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.pricing import UnpricedModelError, cost_lines, format_usd
from batch_pipeline.driver import Driver, Tick
from batch_pipeline.estimates import estimate_completion, estimate_session, rounds_left, session_completion
from batch_pipeline.runtime import Runtime, build_runtime
from batch_pipeline.search import SearchParams, dependent_rounds, start_search
from batch_pipeline.sessions import SessionConfig, SessionConflict, SessionProgress
from batch_pipeline.settings import SettingsError, load_settings, mask_url
from batch_pipeline.vocabulary import RoundId


def run_search_command(args: argparse.Namespace) -> int:
    home = (args.home or Path("var/search")).resolve()
    try:
        params = SearchParams(
            N=args.N,
            M=args.M,
            K=args.K,
            E=args.E,
            alpha=args.alpha,
            seed=args.seed,
            text_model=args.text_model,
            vision_model=args.vision_model,
            image_model=args.image_model,
            image_size=args.image_size,
            image_quality=args.image_quality,
            rounds_per_iteration=args.rounds_per_iteration,
        )
        config = SessionConfig(
            prompt=args.prompt,
            tier=args.tier,
            deadline_hours=args.deadline_hours,
            driver="cli",
            session_id=args.session_id,
            budget_usd=args.budget,
            params=params,
        )
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        print("invalid session: " + "; ".join(problems), file=sys.stderr)
        return 2
    with ExitStack() as stack:
        env = dict(os.environ)
        if args.prices is not None:
            env["BATCH_PRICES_FILE"] = str(args.prices.resolve())
        if not args.use_env and not args.estimate:
            from openai_simulator import Simulator, SimulatorConfig

            simulator = Simulator(
                SimulatorConfig(
                    data_dir=home / "simulator",
                    phase_seconds={"validating": 0.2, "in_progress": 0.5, "finalizing": 0.2},
                )
            )
            env |= {
                "OPENAI_BASE_URL": stack.enter_context(simulator.serve()),
                "OPENAI_API_KEY": "sk-simulator",
                "BATCH_API_ENABLED": "true",
                "BATCH_API_MODE": "immediate",
            }
        elif args.estimate:  # nothing is called: a placeholder endpoint satisfies the settings
            env.setdefault("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        env["BATCH_PIPELINE_HOME"] = str(home)
        # One session, one process: each round's batch goes out at once (nothing to share it with).
        env["BATCH_API_MODE"] = "immediate"
        try:
            runtime = build_runtime(load_settings(env), poll_policy=PollPolicy(initial_s=0.5, max_s=30))
            config = runtime.sessions.resolve(config)
        except SettingsError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        except UnpricedModelError as exc:
            print(f"invalid session: {exc.field}: {exc}", file=sys.stderr)
            return 2
        for note in runtime.catalog.check_search_models(**_model_fields(config.params)):
            print(f"note: {note}", file=sys.stderr)
        if args.estimate:
            print_estimate(runtime, config)
            return 0
        try:
            session_id, resumed = runtime.sessions.resume_or_start(config, new=args.new)
        except SessionConflict as exc:
            print(f"{exc}: pass the same settings to resume it, or another --session-id", file=sys.stderr)
            return 2
        verb = "resuming unfinished session" if resumed else "new session"
        target = mask_url(env.get("OPENAI_BASE_URL")) or "the OpenAI API"
        print(
            f"{verb} {session_id} on tier {args.tier} against {target}; "
            f"ledger {runtime.ledger.store}"
            + ("" if resumed or args.new else " (the same command resumes it if interrupted)")
        )
        print(f"estimated completion: {completion_line(runtime, session_id)}")
        progress = run_with_progress(runtime, session_id, rounds=dependent_rounds(config.params))
        print_report(runtime, session_id, progress)
    return 0 if progress.status == "completed" else 1


def _model_fields(params: SearchParams) -> dict[str, str]:
    return {
        "text_model": params.text_model,
        "vision_model": params.vision_model,
        "image_model": params.image_model,
        "image_size": params.image_size,
        "image_quality": params.image_quality,
    }


def print_estimate(runtime: Runtime, config: SessionConfig) -> None:
    """`search --estimate`: the session priced on every tier from the call counts and the catalog."""
    estimate = estimate_session(
        config.prompt, config.params, runtime.catalog, history=runtime.ledger.observed_output_tokens()
    )
    print(
        f"estimate for N={config.params.N} M={config.params.M} K={config.params.K} E={config.params.E} "
        f"({config.params.text_model}, {config.params.vision_model}, {config.params.image_model} "
        f"{config.params.image_size} {config.params.image_quality}):"
    )
    for tier, cost in estimate.per_tier.items():
        print(f"  {tier:<9} {format_usd(cost)}")
    if config.budget_usd is not None:
        print(f"  budget    {format_usd(config.budget_usd)} (a round that would go over it is not sent)")
    print("basis: " + "; ".join(estimate.basis))
    rounds = rounds_left(start_search(config.prompt, config.params, "estimate"))
    now = time.time()
    done = estimate_completion(
        now=now,
        deadline_at=now + runtime.sessions.deadline_hours(config) * 3600,
        rounds=rounds,
        params=config.params,
        mode=config.tier,
        turnaround=runtime.ledger.observed_turnaround(),
    )
    print(f"time: about {done.wait_hours:.2f} h ({done.basis}); deadline {config.deadline_hours:g} h")


def completion_line(runtime: Runtime, session_id: str) -> str:
    row = runtime.sessions.row(session_id)
    done = session_completion(
        now=time.time(),
        deadline_at=row.deadline_at,
        state=runtime.sessions.state(session_id),
        mode=row.config.get("tier", "batch"),
        turnaround=runtime.ledger.observed_turnaround(),
    )
    return f"{done.to_json()['estimatedCompletionTime']} (in {done.wait_hours:.2f} h; {done.basis})"


def run_with_progress(runtime: Runtime, session_id: str, *, rounds: int) -> SessionProgress:
    """Drive the session with the one session driver, showing a bar of rounds applied."""
    with tqdm(
        total=rounds, desc=f"session {session_id}", unit="round", initial=len(runtime.sessions.state(session_id).rounds)
    ) as bar:

        def show(tick: Tick) -> None:
            bar.n = len(runtime.sessions.state(session_id).rounds)
            progress = tick.progress.get(session_id)
            if progress is not None:
                bar.set_postfix(
                    iteration=progress.iteration, round=progress.next_round, waiting=progress.pending_requests
                )
            elif tick.error:
                bar.set_postfix_str(tick.error[:60])
            bar.refresh()

        progress = Driver(runtime, owner="cli", session_ids=[session_id]).run_session(session_id, on_tick=show)
        bar.n = len(runtime.sessions.state(session_id).rounds)
        bar.refresh()
    return progress


def print_report(runtime: Runtime, session_id: str, progress: SessionProgress) -> None:
    state = runtime.sessions.state(session_id)
    if progress.status != "completed":
        print(f"\nsession {session_id} {progress.status}: {progress.error or 'not finished'}")
    if state.winner_id:
        winner = state.candidate(state.winner_id)
        print(
            f"\nwinner {winner.id} (lineage {' <- '.join(state.lineage)})\n  prompt: {winner.combined}\n"
            f"  image:  {winner.image_path}"
        )
    print(
        "\nbest score per iteration (final Bradley-Terry fit): "
        + ", ".join(f"i{k}: {s:+.3f}" for k, s in enumerate(state.final_best_scores))
    )
    print(f"\n{'round':<10} {'calls':>6} {'ok':>5} {'failed':>6} {'in tok':>9} {'out tok':>8}")
    for r in state.rounds:
        print(
            f"{RoundId(r.iteration, r.round)!s:<10} {r.calls:>6} {r.succeeded:>5} {r.failed:>6} "
            f"{r.input_tokens:>9} {r.output_tokens:>8}"
        )
    print(f"{len(state.rounds)} rounds, {sum(r.calls for r in state.rounds)} calls")
    costs = runtime.ledger.session_costs(session_id)
    header = f"{'tier':<9} {'calls':>6} {'in tok':>9} {'out tok':>8} {'images':>6} {'paid':>10} {'standard':>10}"
    print("\n" + header + "\n" + "-" * len(header))
    for tier, c in costs.items():
        print(
            f"{tier:<9} {c['calls']:>6} {c['input_tokens']:>9} {c['output_tokens']:>8} {c['images']:>6} "
            f"{format_usd(c['cost_usd']):>10} {format_usd(c['standard_cost_usd']):>10}"
        )
    print("-" * len(header))
    print("\n".join(cost_lines(runtime.ledger.cost_figures(session_id=session_id))))
