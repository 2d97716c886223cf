"""Every bench at a tiny size, so that none breaks silently between the runs that measure.

    .venv/bin/python bench/smoke.py [--jobs 2] [--timeout 120] [NAME ...]

The convention every bench under bench/ follows (locustfile.py aside: locust runs it, it has
no command line of its own): `--smoke` runs it at tiny sizes, in seconds rather than minutes,
on whatever it needs anyway (a scratch database, an embedded Redis, the fake LLM), prints its
goals as lines holding PASS or FAIL like a real run, and exits 0 unless it crashed. A FAIL at
a tiny size is no failure here: the figures of a smoke run mean nothing, only that the bench
got as far as judging them.

Runs `python bench/<name>.py --smoke` for every bench found by a glob (or the NAMEs given),
`--jobs` at a time, each with a `--timeout`. A bench fails the smoke when it exits non-zero
(an argparse error, status 2, when it does not know `--smoke`), times out, or prints no
PASS/FAIL line; its output's tail is shown then. Prints each bench's seconds and verdict and
the load average. Unlike the benches it gates: the exit status is 1 when any bench failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BASE_DIR = BENCH_DIR.parent
# Not benches of their own: this script, and locust's file (run by locust through api_load.py).
NOT_BENCHES = {"smoke.py", "locustfile.py"}
VERDICT = re.compile(r"\b(PASS|FAIL)\b")


@dataclass
class Outcome:
    name: str
    seconds: float
    problem: str  # empty when the bench passed the smoke
    verdicts: int
    output: str


def benches(names: list[str]) -> list[Path]:
    found = sorted(
        p for p in BENCH_DIR.glob("*.py") if p.name not in NOT_BENCHES and not p.name.startswith("_")
    )
    if not names:
        return found
    wanted = {name.removesuffix(".py") for name in names}
    unknown = wanted - {p.stem for p in found}
    if unknown:
        raise SystemExit(f"No such bench: {', '.join(sorted(unknown))}")
    return [p for p in found if p.stem in wanted]


def smoke(path: Path, timeout: float) -> Outcome:
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            [sys.executable, str(path), "--smoke"],
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return Outcome(path.stem, time.perf_counter() - started, f"timed out after {timeout:g} s", 0, output)
    seconds = time.perf_counter() - started
    output = completed.stdout + completed.stderr
    verdicts = len(VERDICT.findall(completed.stdout))
    problem = ""
    if completed.returncode != 0:
        problem = f"exited with {completed.returncode}"
    elif not verdicts:
        problem = "printed no PASS/FAIL line"
    return Outcome(path.stem, seconds, problem, verdicts, output)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="benches to run (default: every bench/*.py)")
    parser.add_argument("--jobs", type=int, default=2, help="benches run at once")
    parser.add_argument("--timeout", type=float, default=120, help="seconds each bench may take")
    args = parser.parse_args()
    paths = benches(args.names)
    print(
        f"{len(paths)} benches, {args.jobs} at a time; {os.cpu_count()} CPUs, load average {_load()}",
        flush=True,
    )
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda path: smoke(path, args.timeout), paths))
    for outcome in outcomes:
        verdict = (
            f"FAILED: {outcome.problem}" if outcome.problem else f"ok ({outcome.verdicts} PASS/FAIL lines)"
        )
        print(f"  {outcome.name:<16} {outcome.seconds:6.1f} s  {verdict}")
    for outcome in outcomes:
        if outcome.problem:
            tail = "\n".join(outcome.output.splitlines()[-25:])
            print(f"\n--- {outcome.name}: the end of its output ---\n{tail}")
    failed = [o.name for o in outcomes if o.problem]
    print(
        f"\n{len(outcomes) - len(failed)} of {len(outcomes)} benches ran at smoke size in "
        f"{time.perf_counter() - started:.1f} s; load average {_load()}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
