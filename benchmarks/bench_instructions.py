"""Benchmark: instructions per line of the single-threaded hot paths, their yardsticks and the peer (issue 14).

Wall-clock ratios on a shared 2-core machine swing by up to 2x between runs; instruction counts do not.
Each path runs under valgrind's callgrind twice, over n lines and over none, in a fresh process; the
difference divided by n is its instructions per line (imports and set-up cancel out). The paths and data
are `bench_side_by_side`'s. Needs `valgrind` on PATH. Under valgrind OpenSSL's SHA-256 runs its generic
code (no SHA-NI), so the build's hash counts more than it costs natively.
Usage: python benchmarks/bench_instructions.py [--lines 3000] [--no-peer]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from batch_pipeline.batching.pricing import PriceCatalog

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench_side_by_side import (  # noqa: E402  (a sibling script, importable once its folder is on the path)
    PEER,
    output_line,
    peer_install,
    project_build,
    project_parse,
    project_parse_price,
    yardstick_envelopes,
)

PATHS = ("build", "dumps", "parse", "price", "loads")


def run_path(what: str, n: int, directory: Path) -> None:
    """One path over n lines (n = 0: only its set-up), as the child process under valgrind runs it."""
    lines = directory / f"output-{n}.jsonl"  # the first n output lines, written by the parent
    if what == "build":
        project_build(n, directory / "input.jsonl")
    elif what == "dumps":  # the envelopes are made for every line, n or none, so only the dumps differ
        envelopes = yardstick_envelopes(int((directory / "lines").read_text()))
        for envelope in envelopes[:n]:
            orjson.dumps(envelope)
    elif what == "parse":
        project_parse(lines)
    elif what == "price":
        project_parse_price(lines, PriceCatalog.load())
    elif what == "loads":
        with lines.open("rb") as fh:
            for raw in fh:
                orjson.loads(raw)


def instructions(command: list[str]) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {done.stderr[-300:]}")
    return int(found.group(1))


def per_line(command: list[str], n: int) -> float:
    return (instructions([*command, str(n)]) - instructions([*command, "0"])) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "DIR", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, directory, n = args.child
        run_path(what, int(n), Path(directory))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on PATH")
    n = args.lines
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / f"output-{n}.jsonl").write_bytes(b"".join(output_line(i) for i in range(n)))
        (home / "output-0.jsonl").write_bytes(b"")
        (home / "lines").write_text(str(n))
        counts = {what: per_line([sys.executable, __file__, "--child", what, str(home)], n) for what in PATHS}
        peer = "skipped: --no-peer given"
        if not args.no_peer:
            command, why = peer_install(home)
            if command is None:
                peer = why
            else:  # the peer's script takes (lines, repeats, output file); the lines go last here
                wrapper = home / "peer_n.py"
                wrapper.write_text(
                    "import sys, runpy\n"
                    f"sys.argv = [{command[1]!r}, sys.argv[1], '1', {str(home / 'peer.jsonl')!r}]\n"
                    f"runpy.run_path({command[1]!r}, run_name='__main__')\n"
                )
                peer = f"{per_line([command[0], str(wrapper)], n):,.0f}"
    print(f"instructions per line, {n:,} lines (callgrind, n lines minus none)\n")
    print("| path | project | yardstick | project / yardstick |")
    print("|---|---:|---:|---:|")
    rows = (
        ("build + validate + JSONL line", "build", "dumps", "orjson.dumps of the envelope"),
        ("parse + classify", "parse", "loads", "orjson.loads per line"),
        ("parse + classify + price", "price", "loads", "orjson.loads per line"),
    )
    for label, project, yardstick, yard_label in rows:
        ratio = counts[yardstick] / counts[project]
        print(f"| {label} | {counts[project]:,.0f} | {yard_label}: {counts[yardstick]:,.0f} | {ratio:.2f} |")
    print(f"| (peer) {PEER} add_to_batch | {peer} | | |")


if __name__ == "__main__":
    main()
