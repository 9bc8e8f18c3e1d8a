"""Command-line entry point: `batch-pipeline demo | search | api | simulator`.

`demo` pushes a sample workload (chat, images, vision) through the batch core and prints the
ledger; `search` runs one beam-search session headless on a chosen tier and prints its winner,
scores, rounds and costs; `api` serves the seed's HTTP API and its web page; `simulator` runs the
OpenAI-compatible simulator. All but `api` use the bundled simulator unless told to use the real API.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import tempfile
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import openai
from tqdm import tqdm

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.pricing import cost_lines
from batch_pipeline.batching.requests import ChatRequest, ImageRequest, build_request
from batch_pipeline.driver import Driver, Tick
from batch_pipeline.ledger import Ledger
from batch_pipeline.runtime import Runtime, build_runtime
from batch_pipeline.search import SearchParams
from batch_pipeline.settings import SettingsError, is_loopback_host, load_settings, mask_url
from batch_pipeline.vocabulary import Tier
from openai_simulator.serving import port_in_use, port_taken_message

SUBJECTS = ["a lighthouse in a storm", "a fox in a snowy forest", "a city market at dusk", "a koi pond in autumn"]


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none to say
    (an unset value or an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    fmt = HelpWithDefaults
    parser = argparse.ArgumentParser(
        prog="batch-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,search,api,simulator}")
    demo = sub.add_parser(
        "demo", formatter_class=fmt, help="simulator + sample workload through the batch core, then a cost summary"
    )
    demo.add_argument("--home", type=Path, default=None, help="where the ledger and files go; unset means a temp dir")
    demo.add_argument("--requests", type=int, default=40, help="chat requests in the sample workload")
    demo.add_argument(
        "--use-env",
        action="store_true",
        help="use OPENAI_API_KEY / OPENAI_BASE_URL instead of the bundled simulator (real money!)",
    )
    search = sub.add_parser(
        "search",
        formatter_class=fmt,
        help="run one beam-search session headless and print its winner and costs",
        description="Run one beam-search session in this process and print its winner, scores, "
        "rounds and the three cost figures. Killed or stopped, the same command "
        "resumes it; --estimate prices it first without spending.",
    )
    search.add_argument("prompt", help='the short user prompt, e.g. "a lighthouse in a storm"')
    search.add_argument(
        "--tier",
        choices=["standard", "flex", "batch", "hybrid"],
        default="batch",
        help="batch: half price, hours; standard/flex: now; hybrid: per round by deadline",
    )
    for name, default, meaning in (
        ("N", 9, "beam width: new candidates per iteration (2..16)"),
        ("M", 3, "survivors per iteration: at most N/2 and a divisor of N"),
        ("K", 3, "iterations, counting iteration 0 (1..10)"),
        ("E", 3, "votes per pairwise comparison (1..5)"),
    ):
        search.add_argument(f"-{name}", type=int, default=default, help=meaning)
    search.add_argument("--alpha", type=float, default=0.7, help="weight of alignment against aesthetics (0..1)")
    search.add_argument("--seed", type=int, default=0, help="the only source of randomness")
    search.add_argument(
        "--deadline-hours",
        type=float,
        default=None,
        help="finish within this many hours (<= 24; default BATCH_MAX_WAIT_HOURS, 24)",
    )
    search.add_argument(
        "--budget",
        type=Decimal,
        default=None,
        metavar="USD",
        help="spend limit: a round that would go over it is not sent; the session ends stopped "
        "(budget); unset means no limit",
    )
    search.add_argument(
        "--estimate",
        action="store_true",
        help="print what the session would cost on each tier (and how long), then exit without spending",
    )
    search.add_argument("--text-model", default=SearchParams.model_fields["text_model"].default, help="text model")
    search.add_argument(
        "--vision-model", default=SearchParams.model_fields["vision_model"].default, help="vision (judge) model"
    )
    search.add_argument("--image-model", default=SearchParams.model_fields["image_model"].default, help="image model")
    search.add_argument(
        "--image-size",
        default="1024x1024",
        choices=["1024x1024", "1024x1536", "1536x1024"],
        help="image size (priced per size)",
    )
    search.add_argument(
        "--image-quality", default="low", choices=["low", "medium", "high"], help="image quality (priced per quality)"
    )
    search.add_argument(
        "--rounds-per-iteration",
        type=int,
        choices=[2, 3],
        default=2,
        help="2: the vision round also writes the next candidates (fewer batch waits); 3: a text "
        "round every iteration (docs/PERFORMANCE.md compares them)",
    )
    search.add_argument(
        "--prices",
        type=Path,
        default=None,
        metavar="FILE",
        help="prices for models the catalog lacks (JSON, the shape of batching/prices.json); "
        "the same as BATCH_PRICES_FILE; unset means the catalog alone",
    )
    search.add_argument(
        "--home",
        type=Path,
        default=None,
        help="ledger (unless BATCH_LEDGER_URL puts it on PostgreSQL) and images; unset means var/search",
    )
    resume = search.add_mutually_exclusive_group()
    resume.add_argument(
        "--new",
        action="store_true",
        help="start a fresh session even if an unfinished one with the same settings exists (default: resume it)",
    )
    resume.add_argument(
        "--session-id",
        default=None,
        help="start or resume the session with this id (default: resume the unfinished session "
        "with the same settings, else a new random id)",
    )
    search.add_argument(
        "--use-env",
        action="store_true",
        help="use OPENAI_API_KEY / OPENAI_BASE_URL instead of the bundled simulator (real money!)",
    )
    api = sub.add_parser(
        "api",
        formatter_class=fmt,
        help="the seed's HTTP API and web page: POST /api/beam-search, GET /api/job/{id}, ...",
        description="Serve the seed's HTTP API, its OpenAPI document (/openapi.json) and the web page "
        "(/). Guarded by BATCH_API_TOKEN, BATCH_API_ALLOWED_HOSTS, BATCH_API_CORS_ORIGINS "
        "and BATCH_API_MAX_BODY_BYTES (README: 'HTTP API').",
    )
    api.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs BATCH_API_TOKEN")
    api.add_argument("--port", type=int, default=8700, help="port to bind")
    api.add_argument(
        "--with-simulator",
        action="store_true",
        help="start the bundled simulator and point the API at it (no OpenAI key needed)",
    )
    sim = sub.add_parser("simulator", formatter_class=fmt, help="run the OpenAI-compatible simulator in the foreground")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind")
    sim.add_argument("--port", type=int, default=8800, help="port to bind")
    sim.add_argument("--data-dir", type=Path, default=Path("var/simulator"), help="where its files and batches live")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.command == "simulator":
            from openai_simulator.__main__ import main as simulator_main

            if port_taken(args):
                return 2
            simulator_main(["--host", args.host, "--port", str(args.port), "--data-dir", str(args.data_dir)])
            return 0
        if args.command == "api":
            return run_api(args)
        if args.command == "search":
            from batch_pipeline.cli.search import run_search_command

            return run_search_command(args)
        return run_demo(args)
    except Exception as exc:  # known start-up failures: one line, not a traceback
        message = startup_failure(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def startup_failure(exc: BaseException) -> str | None:
    """One line for the failures a user can fix (permissions, a locked or corrupt ledger, a refused key);
    None for anything else (a bug: keep its traceback)."""
    import duckdb
    import psycopg

    from batch_pipeline.api.app import ApiConfigError
    from batch_pipeline.errors import is_ledger_busy

    if isinstance(exc, ApiConfigError):
        return str(exc)
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES)):
        where = exc.filename or "the home directory"
        return (
            f"cannot write {where} ({exc.strerror or exc}); set BATCH_PIPELINE_HOME or --home to a writable directory"
        )
    if isinstance(exc, psycopg.OperationalError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot reach the PostgreSQL ledger ({first[:200]}); check BATCH_LEDGER_URL and the server"
    if is_ledger_busy(exc):
        return (
            "the ledger is locked by another process (a Dagster run, another CLI or API); stop it or use "
            "another --home / BATCH_PIPELINE_HOME"
        )
    if isinstance(
        exc, (duckdb.IOException, duckdb.SerializationException, duckdb.InvalidInputException, duckdb.CatalogException)
    ):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the ledger cannot be opened ({first[:200]}); move the file aside or use another --home"
    if isinstance(exc, openai.AuthenticationError):
        return (
            f"the API refused the key (401{': ' + _api_message(exc) if _api_message(exc) else ''}); "
            "check OPENAI_API_KEY"
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return f"the API denied access (403: {_api_message(exc) or 'permission denied'}); check the key's project"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the API ({type(exc).__name__}); check OPENAI_BASE_URL and the network"
    return None


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
    return str(error.get("message") or "")[:200]


def run_demo(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        home = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batch-pipeline-demo-")))
        if args.use_env:
            client = openai.OpenAI(**settings.openai_client_kwargs())
            where = mask_url(settings.openai_base_url) or "the OpenAI API"
        else:
            from openai_simulator import Simulator, SimulatorConfig

            simulator = Simulator(
                SimulatorConfig(
                    data_dir=home / "simulator",
                    phase_seconds={"validating": 0.5, "in_progress": 1.5, "finalizing": 0.5},
                )
            )
            base_url = stack.enter_context(simulator.serve())
            client = openai.OpenAI(api_key="sk-simulator", base_url=base_url)
            where = f"the bundled simulator at {base_url}"
        print(f"batch_pipeline demo: {where}; ledger in {home}")

        settings = settings.model_copy(update={"batch_pipeline_home": home, "batch_api_mode": "immediate"})
        runtime = build_runtime(settings, client=client, poll_policy=PollPolicy(initial_s=0.5, max_s=5))
        ledger, images = runtime.ledger, runtime.image_store

        run_stage("text and images", runtime, sample_text_and_images(args.requests, images))
        refs = image_refs(ledger)
        run_stage("vision comparisons", runtime, sample_comparisons(refs, images))
        print_summary(ledger)
        problems = ledger.check_invariants()
        if problems:
            print("ledger invariants violated:", *problems, sep="\n  ", file=sys.stderr)
            return 1
    return 0


def port_taken(args: argparse.Namespace) -> bool:
    """Whether the server's --port is taken on its --host, said in one line before anything starts."""
    if args.port and port_in_use(args.port, args.host):
        print(port_taken_message(args.port, args.host), file=sys.stderr)
        return True
    return False


def run_api(args: argparse.Namespace) -> int:
    import os

    from batch_pipeline.api.app import check_bind, serve
    from batch_pipeline.runtime import build_runtime

    with ExitStack() as stack:
        env = dict(os.environ)
        # Before anything starts: a public bind without a token is refused.
        check_bind(args.host, bool(env.get("BATCH_API_TOKEN")))
        if port_taken(args):
            return 2
        if args.with_simulator:
            from openai_simulator import Simulator, SimulatorConfig

            home = Path(env.get("BATCH_PIPELINE_HOME", "var"))
            simulator = Simulator(
                SimulatorConfig(
                    data_dir=home / "simulator", phase_seconds={"validating": 1, "in_progress": 3, "finalizing": 1}
                )
            )
            env |= {
                "OPENAI_BASE_URL": stack.enter_context(simulator.serve()),
                "OPENAI_API_KEY": "sk-simulator",
                "BATCH_API_ENABLED": env.get("BATCH_API_ENABLED", "true"),
            }
            if not is_loopback_host(args.host) and "BATCH_API_ALLOWED_HOSTS" not in env:
                print("note: add this server's public name to BATCH_API_ALLOWED_HOSTS", file=sys.stderr)
        try:
            runtime = build_runtime(load_settings(env))
        except SettingsError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        print(
            f"batch_pipeline API on http://{args.host}:{args.port}/ (web page), /api, /api/openapi.json "
            f"(calls go to {mask_url(env.get('OPENAI_BASE_URL')) or 'the OpenAI API'})"
        )
        serve(runtime, host=args.host, port=args.port)
    return 0


def sample_text_and_images(n: int, images: ImageStore) -> list:
    chats = [
        build_request(
            ChatRequest(
                key=f"describe-{i}",
                model="gpt-5-mini",
                max_tokens=200,
                temperature=0.7,
                messages=[
                    {"role": "system", "content": "Write one vivid image prompt."},
                    {"role": "user", "content": f"User prompt: {SUBJECTS[i % len(SUBJECTS)]} (variant {i})"},
                ],
            ),
            namespace="demo",
            operation="describe",
            session_id="demo",
        )
        for i in range(n)
    ]
    pictures = [
        build_request(
            ImageRequest(key=f"image-{i}", model="gpt-image-1-mini", prompt=subject),
            namespace="demo",
            operation="image",
            session_id="demo",
        )
        for i, subject in enumerate(SUBJECTS)
    ]
    return chats + pictures


def image_refs(ledger: Ledger) -> list[str]:
    ids = [f"demo-image-{i}" for i in range(len(SUBJECTS))]
    return [r.response["data"][0]["image_ref"] for r in ledger.final_results(ids).values() if r.response]


def sample_comparisons(refs: list[str], images: ImageStore) -> list:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["winner", "reason"],
        "properties": {"winner": {"type": "string", "enum": ["A", "B"]}, "reason": {"type": "string"}},
    }
    out = []
    for i in range(len(refs) - 1):
        out.append(
            build_request(
                ChatRequest(
                    key=f"compare-{i}",
                    model="gpt-5-nano",
                    max_completion_tokens=200,
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "comparison", "strict": True, "schema": schema},
                    },
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": f"Which image fits better?\nUser prompt: {SUBJECTS[i]}"},
                                {"type": "image_url", "image_url": {"url": refs[i], "detail": "low"}},
                                {"type": "image_url", "image_url": {"url": refs[i + 1], "detail": "low"}},
                            ],
                        }
                    ],
                ),
                namespace="demo",
                operation="compare",
                session_id="demo",
                image_store=images,
            )
        )
    return out


def run_stage(name: str, runtime: Runtime, requests: list) -> None:
    """Queue a stage's requests and drive the batch core (no sessions: the whole ledger) until they settle."""
    ledger = runtime.ledger

    def finished(counts: dict[str, int]) -> int:
        return sum(v for k, v in counts.items() if k not in {"queued", "submitted", "running"})

    def settled(_tick: Tick) -> bool:
        counts = ledger.state_counts(tier=Tier.BATCH)
        return not counts.get("queued") and not counts.get("submitted")

    already_done = finished(ledger.state_counts())
    ledger.enqueue(requests)
    with tqdm(total=len(requests), desc=name, unit="req") as bar:

        def on_tick(_tick: Tick) -> None:
            counts = ledger.state_counts()
            bar.n = finished(counts) - already_done
            bar.set_postfix({k: v for k, v in counts.items() if k in {"queued", "submitted"}})
            bar.refresh()

        Driver(runtime, owner="core").run(settled, timeout_s=600, on_tick=on_tick)
        if not settled(Tick()):
            raise SystemExit(f"{name}: not settled within 10 minutes")


def print_summary(ledger: Ledger) -> None:
    with ledger.connect() as con:
        by_op = con.execute(
            "SELECT operation, model, count(*), sum(input_tokens), sum(output_tokens), sum(images),"
            " sum(cost_usd), sum(standard_cost_usd) FROM spend WHERE outcome = 'succeeded' GROUP BY 1, 2 ORDER BY 1"
        ).fetchall()
        batches = con.execute("SELECT status, count(*), sum(request_count) FROM batches GROUP BY 1").fetchall()
    print("\nrequests by state:", ledger.state_counts())
    print("batches:", {status: f"{n} ({reqs} requests)" for status, n, reqs in batches})
    header = (
        f"{'operation':<10} {'model':<17} {'calls':>5} {'in tok':>8} {'out tok':>8} {'images':>6} "
        f"{'batch $':>10} {'standard $':>11}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for op, model, n, tin, tout, imgs, cost, std in by_op:
        print(f"{op:<10} {model:<17} {n:>5} {tin:>8} {tout:>8} {imgs:>6} {cost:>10.6f} {std:>11.6f}")
    print("-" * len(header))
    print("\n".join(cost_lines(ledger.cost_figures())))


if __name__ == "__main__":
    sys.exit(main())
