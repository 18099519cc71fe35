"""`ledger lr-find` and `train`: everything that trains a model (the probe: cli/probe.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ledger.store.rows import RunStatus
from ledger.cli.common import (DeviceOpt, HomeOpt, ModelOpt, SetOpt, SpecArg, _device, _load, _print_json, app,
                        console, err_console, friendly_errors)
from ledger.errors import SpecError

# ---------------------------------------------------------------- train


def _override(models, runs: int | None, epochs: int | None):
    changes = {k: v for k, v in (("runs", runs), ("epochs", epochs)) if v is not None}
    return tuple(dataclasses.replace(m, **changes) for m in models)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a preempted machine, `kill`) is handled exactly as Ctrl-C."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)



def _plan_table(plans, console_: Console, precisions: dict | None = None, estimates: dict | None = None) -> Table:
    from ledger.cli.tables import Column, duration, fit_table

    precisions, estimates = precisions or {}, estimates or {}
    columns = [Column("run", is_id=True), Column("model"), Column("arch", drop=3), Column("size", drop=2),
               Column("split", drop=4), Column("train seed", drop=5), Column("accum"), Column("epochs", drop=1),
               Column("precision"), Column("estimate"), Column("resume")]
    rows = [[p.run_id, p.model.name, p.model.arch, p.model.size_label, p.split.describe(), str(p.train_seed),
             str(p.accum) if p.accum else "auto", str(p.model.epochs), precisions.get(p.run_id, ""),
             "?" if estimates.get(p.run_id) is None else duration(estimates[p.run_id]),
             "yes" if p.resume else ""] for p in plans]
    return fit_table(console_, columns, rows, title="plan")


def _dry_run(spec, plans, store, torch_device, jobs: int = 1) -> None:
    """The plan with each run's precision and its time on this device (from the probe's timings), and the
    total: does the spec fit a 12-hour Kaggle session?"""
    from ledger.data.competition import load_competition
    from ledger.cli.tables import duration
    from ledger.probe.planned_time import decoding_seconds, estimated_seconds
    from ledger.training.device import resolve_precision

    competition = load_competition(spec.data)
    precisions = {p.run_id: resolve_precision(p.model.precision, torch_device).name for p in plans}
    estimates = {p.run_id: estimated_seconds(spec, store, p, torch_device, competition, jobs) for p in plans}
    # An entry's first run decodes its images (the cache serves the others): charged to that run.
    first_runs = {}
    for p in plans:
        first_runs.setdefault(p.model.name, p)
    for name, p in first_runs.items():
        if estimates[p.run_id] is not None:
            estimates[p.run_id] += decoding_seconds(competition, p.model, store.home / "cache")
    console.print(_plan_table(plans, console, precisions, estimates))
    known = [seconds for seconds in estimates.values() if seconds is not None]
    if known:
        missing = len(plans) - len(known)
        console.print(f"estimated time on this device: {duration(sum(known))} for {len(known)} run(s)"
                      + (f"; {missing} run(s) without probe timings ({_probes_elsewhere(spec, store, precisions)})"
                         if missing else ""))
    elif plans:
        console.print("no time estimate: no probe timings on record for these runs on this device "
                      f"({_probes_elsewhere(spec, store, precisions)})")
    console.print(f"{len(plans)} run(s) owed; nothing trained (--dry-run)")


def _probes_elsewhere(spec, store, precisions: dict) -> str:
    """Why no timings: no probe at all, or probes for another target card or precision (a probe
    for a T4 in fp16 times nothing for this device's fp32)."""
    probes = store.probes(spec.name)
    if not probes:
        return "run `ledger probe-memory` first"
    on_record = sorted({f"{p.target or p.device} in {p.precision or '?'}" for p in probes})
    here = ", ".join(sorted(set(precisions.values())))
    return (f"the probes on record are for {', '.join(on_record)}, not the spec's probe.budget "
            f"({spec.probe.budget}) in {here} on this device: run `ledger probe-memory` without --budget to time it")


def _over_prediction(store, results, console_: Console) -> None:
    """A run whose peak went over the probe's prediction by more than the margin says so in the log."""
    from ledger.units import format_size

    done = [r.run_id for r in results if r.status == RunStatus.DONE]
    for row in store.runs(ids=done) if done else []:
        if row.peak_over_prediction:
            console_.print(f"warning: run {row.id} ({row.model}): peak {format_size(row.peak_bytes)} is "
                           f"{row.peak_vs_prediction} ({format_size(row.predicted_peak_bytes)})",
                           style="yellow", markup=False, soft_wrap=True)


def _results_table(plans, results, console_: Console) -> Table:
    from ledger.units import format_size
    from ledger.cli.tables import Column, fit_table

    # Both accuracies, each labelled: the last epoch's plain one and the held-out TTA'd one.
    columns = [Column("run", is_id=True), Column("model"), Column("status"), Column("acc no TTA"),
               Column("TTA acc"), Column("TTA metric", drop=3), Column("time", drop=1), Column("peak", drop=2)]
    by_id, rows = {r.run_id: r for r in results}, []
    for p in plans:
        r = by_id.get(p.run_id)
        if r is None:
            continue
        s = r.summary  # None unless the run is done
        accuracy = "" if s is None or s.accuracy is None else f"{s.accuracy:.4f}"
        tta_accuracy = "" if s is None or s.tta_accuracy is None else f"{s.tta_accuracy:.4f}"
        metric = "" if s is None or s.tta_metric is None else f"{s.metric} {s.tta_metric:.4f}"
        rows.append([p.run_id, p.model.name, r.status if r.status == RunStatus.DONE else f"{r.status}: {r.error}",
                     accuracy, tta_accuracy, metric, "" if s is None else f"{s.train_seconds:.0f}s",
                     "" if s is None else format_size(s.peak_bytes)])
    return fit_table(console_, columns, rows, title="runs trained")


class Executor(str, enum.Enum):
    local = "local"
    ray = "ray"


@app.command()
@friendly_errors
def train(
    spec_path: SpecArg,
    model: ModelOpt = None,
    runs: Annotated[Optional[int], typer.Option(min=1, max=1000, help="Runs per model, overriding the spec.")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs, overriding the spec.")] = None,
    more: Annotated[int, typer.Option(min=0, max=1000, help="Runs to add per model beyond what the spec asks for.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (runs owed, splits, seeds, accum); train nothing.")] = False,
    device: DeviceOpt = None,
    overrides: SetOpt = None,
    home: HomeOpt = None,
    executor: Annotated[Executor, typer.Option(help="local: one run after another here; ray: one Ray task per run.")] = Executor.local,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address, e.g. auto (default: $RAY_ADDRESS, else a new local Ray).")] = None,
    gpus_per_run: Annotated[Optional[float], typer.Option(min=0, help="GPUs per Ray run (default: 1 when the cluster has GPUs, else 0).")] = None,
    cpus_per_run: Annotated[float, typer.Option(min=0.01, help="CPUs per Ray run.")] = 1,
    jobs: Annotated[int, typer.Option(min=1, max=64, help="local: runs at once, each in its own process with "
                                      "its share of the CPU cores (CPU only).")] = 1,
) -> None:
    """Train the runs the spec still owes; each run gets its own split, artifacts and ledger row.

    Runs already done with the same recipe (fingerprint) count; a run killed part-way resumes from
    its last finished epoch. A second call trains nothing. With --executor ray the runs are Ray
    tasks (install the ray extra: uv sync --extra ray); the ledger home must be on a filesystem
    every node sees.

    Example: ledger train experiments/fashion.yaml --model convnext --more 2
    Example: ledger train experiments/fashion.yaml --jobs 2
    Example: ledger train experiments/fashion.yaml --executor ray --address auto --home /shared/runs
    """
    from ledger.executors.local import plan_experiment
    from ledger.runs.lock import experiment_lock
    from ledger.probe.spec_probe import accum_resolver
    from ledger.cli.progress import ProbeDisplay
    from ledger.store.database import Store, now

    spec = _load(spec_path, overrides=overrides, check_data=True)
    models = _override(spec.select(model), runs, epochs)
    store = Store(home)
    torch_device = _device(device)
    if executor is Executor.local:
        from ledger.executors.process_pool import check_jobs

        check_jobs(jobs, torch_device)
    elif jobs > 1:
        from ledger.errors import LedgerError

        raise LedgerError("--jobs is for the local executor; on Ray, --cpus-per-run sets how many runs share a node")
    if dry_run:
        plans = plan_experiment(spec, models, store, accum_resolver(spec, store, ProbeDisplay(console), torch_device,
                                                                    may_probe=False, jobs=jobs), more, dry_run=True)
        _dry_run(spec, plans, store, torch_device, jobs)
        return
    with experiment_lock(store.home, spec.name, now()):
        _train_locked(spec, models, store, torch_device, more, executor, address, gpus_per_run, cpus_per_run, jobs)


def _train_locked(spec, models, store, torch_device, more, executor, address, gpus_per_run, cpus_per_run,
                  jobs) -> None:
    """`train` once it holds the experiment's lock: housekeeping, plan, execute, record."""
    from ledger.executors.local import plan_experiment, train_experiment
    from ledger.probe.spec_probe import accum_resolver
    from ledger.cli.progress import ConsoleEvents, ProbeDisplay

    # Under Ray, `accum: auto` is settled for the workers' device, which the executor finds out
    # (`train` refused --jobs above 1 there, so `jobs` is the local executor's).
    resolver = accum_resolver(spec, store, ProbeDisplay(console), torch_device,
                              may_probe=executor is Executor.local, jobs=jobs)
    plans = plan_experiment(spec, models, store, resolver, more)
    if not plans:
        console.print(f"nothing to train: every run the spec asks for is done (ledger in {store.home}); "
                      "--more N adds runs")
        return
    results = []
    try:
        with _sigterm_as_interrupt(), ConsoleEvents(console, plans, jobs) as events:
            if executor is Executor.ray:
                from ledger.executors.ray_executor import RayOptions, train_on_ray

                options = RayOptions(address=address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run)
                results = train_on_ray(spec, plans, store, events, options)
            else:
                results = train_experiment(spec, plans, store, events, torch_device, jobs)
    except KeyboardInterrupt:
        done = len([r for r in store.runs(spec.name, status=RunStatus.DONE)])
        stopped = store.runs(spec.name, status=RunStatus.INTERRUPTED, ids=[p.run_id for p in plans])
        # Each row's reason says whether it resumes or starts again (it may not have finished an epoch).
        notes = "".join(f"\nrun {r.id}: {r.error or 'interrupted'}" for r in stopped)
        console.print(f"interrupted: {done} done run(s) kept; run the same command again to go on{notes}")
        raise typer.Exit(130)
    console.print(_results_table(plans, results, console))
    _over_prediction(store, results, console)
    failed = [r for r in results if r.status != RunStatus.DONE]
    console.print(f"{len(results) - len(failed)} run(s) done, {len(failed)} failed; ledger in {store.home}")
    if results and not failed:
        _print_bag_estimate(spec, store)
    if failed:
        raise typer.Exit(1)


def _print_bag_estimate(spec, store) -> None:
    """The spec's bag as `ledger ensemble` would make it, judged out of bag on the competition's
    metric: what the runs just trained are worth together. Nothing when there is no bag to judge yet."""
    from ledger.errors import LedgerError
    from ledger.bag.metrics import format_score
    from ledger.bag.submission import BagOptions, make_submission

    try:
        # This train still holds the experiment's lock, which a bag would take for one still running.
        figure = make_submission(spec, store, BagOptions(allow_missing=True), dry_run=True).estimate
    except LedgerError:
        return  # no sample submission yet, or runs of an older recipe: `ledger ensemble` says why
    if figure.images:
        accuracy = "" if figure.metric == "accuracy" else f" (accuracy {format_score(figure.accuracy)})"
        console.print(f"out-of-bag {figure.metric} of the spec's bag: {format_score(figure.score)}{accuracy} on "
                      f"{figure.images} of {figure.train_images} training images; `ledger ensemble` writes it")


# ---------------------------------------------------------------- lr-find


def _lr_find_progress(console_: Console, model: str):
    """A rich bar on a terminal, a plain line every 10 batches otherwise (logs stay readable).
    Returns (callback, close)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    if not console_.is_terminal:
        def line(batch, total, lr, loss):
            if batch == 1 or batch % 10 == 0:
                console_.print(f"{model} lr-find batch {batch}/{total}: lr {lr:.2e}  smoothed loss {loss:.4f}",
                               highlight=False)
        return line, lambda: None
    bar = Progress(TextColumn(f"{model} lr-find"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("lr {task.fields[lr]:.2e}  loss {task.fields[loss]:.4f}"),
                   console=console_, transient=True)
    task = bar.add_task("", total=None, lr=0.0, loss=float("nan"))
    bar.start()
    return (lambda batch, total, lr, loss: bar.update(task, completed=batch, total=total, lr=lr, loss=loss)), bar.stop


@app.command("lr-find")
@friendly_errors
def lr_find_command(
    spec_path: SpecArg,
    model: Annotated[Optional[str], typer.Option("--model", help="Model entry to test (may be left out when the spec has one).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Plot PNG (default: in <home>/<experiment>/lr_find/ named <id>-<model>.png).")] = None,
    num_it: Annotated[int, typer.Option("--num-it", min=6, help="Mini-batches (effective batches) to try.")] = 100,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='Print only {"suggestions": {...}, "plot": PATH}.')] = False,
    device: DeviceOpt = None,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """fastai's learning-rate range test: suggestions (valley, slide, minimum/10, steep) and a plot.

    Trains a fresh model (head only with finetune: true) for up to --num-it batches at learning
    rates growing exponentially from 1e-7 to 10, stops when the smoothed loss passes 4x its minimum,
    then throws the model away. The result is recorded in the ledger.

    Example: ledger lr-find experiments/fashion.yaml --model convnext --json
    """
    from ledger.runs.lr_find_run import lr_find
    from ledger.probe.spec_probe import accum_resolver
    from ledger.cli.progress import ProbeDisplay
    from ledger.store.database import Store

    spec = _load(spec_path, overrides=overrides)
    if model is None and len(spec.models) != 1:
        raise SpecError(f"{spec_path}: --model is needed: the spec has {len(spec.models)} models "
                        f"({', '.join(m.name for m in spec.models)})")
    entry = spec.model(model) if model else spec.models[0]
    store = Store(home)
    if out is not None:
        from ledger.runs.outputs import FILE, guard_output

        out = guard_output(out, FILE, spec=spec, homes=[store.home], force=force)
    # With --json stdout carries only the JSON: every message goes to stderr.
    chatter = err_console if as_json else console
    torch_device = _device(device)
    accum = accum_resolver(spec, store, ProbeDisplay(chatter), torch_device)(entry)
    progress, close = _lr_find_progress(chatter, entry.name)
    try:
        result = lr_find(spec, entry, store, accum, out=out, device=torch_device, num_it=num_it, progress=progress)
    finally:
        close()
    if as_json:
        _print_json({"suggestions": result.suggested_lrs(), "plot": str(result.plot)})
        return
    table = Table("method", "suggested lr", title=f"lr-find {entry.name}: {len(result.test.lrs)} batches, "
                                                  f"stopped: {result.test.stopped}")
    for name, lr in result.suggested_lrs().items():
        table.add_row("minimum/10" if name == "minimum" else name, "-" if lr is None else f"{lr:.2e}")
    console.print(table)
    console.print(f"plot {result.plot}; recorded as {result.id} in {store.home}")
