"""What `train --jobs 2` saves on this machine's CPU: the embedded default's runs trained one at a time
and two at a time, in one call, each in a fresh ledger home; one JSON line to bench/results/jobs.jsonl.

    .venv/bin/python bench/bench_jobs.py                 # the default spec as `make submission` trains it
    .venv/bin/python bench/bench_jobs.py --rounds 2      # more pairs: each round runs both, in turn

Each side probes first (`probe-memory`, with `--jobs` for the side that trains side by side), then
`ledger train`; the figure is the train command's wall time. Rounds alternate which side goes first,
since a shared machine's speed drifts over minutes; the ratio is taken per round, then its median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, RESULTS_DIR, SPEC_PATH, append_record, load_average, machine, now

LEDGER = [str(Path(sys.executable).with_name("ledger"))]  # the venv's command, beside its python


def _train_seconds(spec: Path, home: Path, jobs: int) -> float:
    subprocess.run([*LEDGER, "probe-memory", str(spec), "--home", str(home), "--jobs", str(jobs)], check=True,
                   capture_output=True)
    started = time.perf_counter()
    subprocess.run([*LEDGER, "train", str(spec), "--home", str(home), "--jobs", str(jobs)], check=True,
                   capture_output=True)
    return round(time.perf_counter() - started, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC_PATH)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not (DATA_DIR / "train.csv").is_file():
        sys.exit(f"{DATA_DIR}: no competition; run `make data` first")
    one, two = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            for jobs in order:
                seconds = _train_seconds(args.spec, Path(scratch) / f"r{round_}-j{jobs}", jobs)
                (one if jobs == 1 else two).append(seconds)
                print(f"round {round_ + 1}: --jobs {jobs}: {seconds} s", flush=True)
    speedup = statistics.median(a / b for a, b in zip(one, two))
    line = dict(benchmark="jobs", at=now(), machine=machine(), load_average=load_average(), spec=str(args.spec),
                one_at_a_time_s=one, two_at_a_time_s=two, speedup=round(speedup, 3))
    path = append_record(line, args.results, "jobs")
    print(f"--jobs 2 trains the spec {speedup:.2f}x as fast as one run at a time ({path})")


if __name__ == "__main__":
    main()
