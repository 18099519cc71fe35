"""Run ledger's benchmarks, record each result with the machine it ran on, and fail on a missed target.

    .venv/bin/python bench/run.py                       # all of them (make bench); a few minutes on 2 cores
    .venv/bin/python bench/run.py --quick               # smoke run: small competition, few steps, one round
    .venv/bin/python bench/run.py --only probe_time --only probe_accuracy
    .venv/bin/python bench/run.py --quick --threads 1   # smoke run on a machine busy with other work

Each benchmark appends one JSON line to bench/results/<name>.jsonl, and bench/results/latest.md is
rewritten from the last line of each. --quick results are smoke figures: they are printed (and judged)
but not recorded unless --results names a folder. Exit status 1 when a target is missed or a
benchmark fails.

Module-level imports stay light: the memory probe's child processes ('spawn') re-run this file's top
level, and what it imports would count as their start-up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import common

# name -> (module, function); run in this order. probe_accuracy reuses probe_time's probe.
BENCHMARKS = {
    "ensemble": ("bench_ensemble", "run"),
    "train_throughput": ("bench_train", "train_throughput"),
    "data_path": ("bench_train", "data_path"),
    "probe_time": ("bench_probe", "probe_time"),
    "probe_accuracy": ("bench_probe", "probe_accuracy"),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: seconds, not minutes; not recorded")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"folder for <name>.jsonl and latest.md (default {common.RESULTS_DIR}; none with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads here and in every child process (OMP_NUM_THREADS); default: torch's "
                             "own (one per core). Use 1 on a busy machine: threads that wait for a core another "
                             "process holds make each step many times slower")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="device to train and probe on (the targets are set for cpu)")
    return parser.parse_args(argv)


def _summary_table(outcomes: list[tuple[common.Result, float]], quick: bool):
    from rich.table import Table

    table = Table("benchmark", "result", "target", "", "seconds",
                  title="ledger benchmarks" + (" (--quick: smoke figures)" if quick else ""))
    for result, seconds in outcomes:
        verdict = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "-"}[result.passes]
        table.add_row(result.name, result.summary, result.target or "", verdict, f"{seconds:.0f}")
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads is not None:
        # Before torch is imported, and inherited by the probe's children and `ledger train` subprocesses.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from rich.console import Console

    console = Console(highlight=False)
    results_dir = args.results or (None if args.quick else common.RESULTS_DIR)
    names = [name for name in BENCHMARKS if not args.only or name in args.only]
    facts = common.machine()
    console.print(f"machine: {facts['node']}, {facts['processor']} x{facts['cores']}, torch {facts['torch']}, "
                  f"timm {facts['timm']}, CUDA {facts['cuda_device']}; load average {common.load_average()}")
    outcomes = []
    started_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as workdir:
        context = common.Context(quick=args.quick, device=args.device, workdir=Path(workdir), log=console)
        for name in names:
            module_name, function_name = BENCHMARKS[name]
            console.rule(name)
            started = time.perf_counter()
            try:
                function = getattr(importlib.import_module(module_name), function_name)
                result = function(context)
            except Exception as error:  # noqa: BLE001 - a broken benchmark is a failed one; the others go on
                traceback.print_exc()
                result = common.Result(name=name, summary=f"error: {type(error).__name__}: {error}",
                                       target=None, passes=False)
            seconds = time.perf_counter() - started
            outcomes.append((result, seconds))
            line = common.record(result, context, seconds, facts)
            if results_dir is not None:
                path = common.append_record(line, results_dir, name)
                console.print(f"{name}: {result.summary}  -> {path}")
            else:
                console.print(f"{name}: {result.summary}")
    if results_dir is not None:
        console.print(f"table: {common.write_latest(results_dir)}")
    console.print(_summary_table(outcomes, args.quick))
    console.print(f"all benchmarks: {time.perf_counter() - started_all:.0f} s")
    return 0 if all(result.passes is not False for result, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
