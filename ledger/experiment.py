"""The runs of an experiment: housekeeping, plan, then each run executed and recorded.

`train_experiment` is the local executor: runs one after another in this process. Before
planning it settles what earlier commands left behind: `running` rows whose process is gone become
`interrupted`, and partial folders are either kept for a resume (an interrupted run with a
checkpoint) or removed. Nothing here prints: the caller's `ExperimentEvents` shows progress.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from ledger.checkpoint import CHECKPOINT
from ledger.data import load_competition
from ledger.execute import PARTIAL_SUFFIX, cached_images, committed_result, execute, partial_dir
from ledger.memory import device_name, release_memory
from ledger.plan import RunPlan, keep_promise, plan, promise
from ledger.probing import record_peak_check, recorded_trial
from ledger.pseudo import teacher_runs
from ledger.record import RunResult, record, record_start
from ledger.spec import ModelSpec, Spec
from ledger.store import Store, new_id
from ledger.device import resolve_precision
from ledger.hooks import Progress


class ExperimentEvents(Protocol):
    def run_started(self, index: int, total: int, plan: RunPlan) -> Progress: ...
    def run_finished(self, index: int, total: int, plan: RunPlan, result: RunResult) -> None: ...


def resumable(store: Store, row: dict) -> bool:
    partial = partial_dir(store.home, row.experiment, row.id)
    return row.status == "interrupted" and (partial / CHECKPOINT).is_file()


def interrupted_reason(store: Store, run: RunPlan) -> str:
    """What an interrupt leaves of a run: a checkpoint to resume from, or nothing (stopped before
    its first epoch ended, so it starts again from epoch 1)."""
    if (partial_dir(store.home, run.experiment, run.run_id) / CHECKPOINT).is_file():
        return "interrupted; resumes after its last finished epoch"
    return "interrupted before its first epoch ended; starts again from epoch 1"


def recover_committed(store: Store, experiment: str) -> list[str]:
    """Interrupted rows whose run folder was committed (renamed whole) before the kill came are
    recorded `done` from the folder's summary, never trained again. Returns their ids."""
    recovered = []
    for row in store.runs(experiment, status="interrupted"):
        result = committed_result(row.id, store.run_dir(experiment, row.id))
        if result is not None:
            record(store, result)
            recovered.append(row.id)
    return recovered


def housekeeping(store: Store, experiment: str) -> list[str]:
    """Stale `running` rows -> `interrupted`; interrupted runs whose folder was committed ->
    `done`; partial folders that cannot be resumed are removed (those of live runs are left
    alone). Returns the ids marked interrupted."""
    stale = store.mark_stale_runs()
    recover_committed(store, experiment)
    folder = store.home / experiment
    if not folder.is_dir():
        return stale
    for partial in [*folder.glob("*" + PARTIAL_SUFFIX), *folder.glob("*.tmp-*")]:
        run_id = partial.name.split(".")[0]
        rows = store.runs(ids=[run_id])
        if rows and rows[0].status == "running":
            continue  # another live command's run
        if rows and resumable(store, rows[0]) and partial.name.endswith(PARTIAL_SUFFIX):
            continue
        shutil.rmtree(partial, ignore_errors=True)
    return stale


def _promise_file(store: Store, experiment: str) -> Path:
    return store.home / f".plan-{experiment}.json"


def plan_experiment(spec: Spec, models: Sequence[ModelSpec], store: Store, accum_for: Callable[[ModelSpec], int],
                    more: int = 0, dry_run: bool = False) -> list[RunPlan]:
    """The runs owed. A dry run's new runs are kept in `<home>/.plan-<experiment>.json`, and the
    next plan of the same runs takes their ids, splits and seeds: what `--dry-run` printed is what
    `train` does."""
    housekeeping(store, spec.name)
    rows = store.runs(spec.name)
    plans = plan(spec, models, rows, accum_for, new_id, more=more, resumable=lambda row: resumable(store, row),
                 teachers=teacher_runs(spec, store))
    promise_file = _promise_file(store, spec.name)
    try:
        promised = json.loads(promise_file.read_text())
    except (OSError, ValueError):
        promised = []
    plans = keep_promise(plans, promised, {row.id for row in store.runs()})
    if dry_run:
        temporary = promise_file.with_name(f"{promise_file.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(promise(plans)))
        os.replace(temporary, promise_file)
    else:
        promise_file.unlink(missing_ok=True)  # kept now (the rows are written as each run starts)
    return plans


def train_experiment(spec: Spec, plans: Sequence[RunPlan], store: Store, events: ExperimentEvents,
                     device: torch.device) -> list[RunResult]:
    """Execute and record `plans` one after another. Ctrl-C (or SIGTERM, which the command line
    turns into one) records the run in progress as interrupted, keeps its checkpoint, and re-raises."""
    competition = load_competition(spec.data)
    images, results = {}, []
    for index, run in enumerate(plans):
        progress = events.run_started(index, len(plans), run)
        if run.model.name not in images:  # one entry's images at a time; decoding shows on the run's display
            images = {run.model.name: cached_images(competition, run.model, store.home / "cache", progress)}
        probed = recorded_trial(store, spec, run.model, device, run.accum)  # the probe's prediction for this run
        record_start(store, run, device_name(device), resolve_precision(run.model.precision, device).name,
                     socket.gethostname(), os.getpid(), probed and probed["peak_bytes"])
        try:
            result = execute(run, competition, images[run.model.name], store.home, device, progress)
        except KeyboardInterrupt:
            record(store, RunResult(run.run_id, "interrupted", error=interrupted_reason(store, run)))
            raise
        finally:
            release_memory()  # this run's model, optimizer and cached blocks, before the next run
        record(store, result)
        if result.status == "done":
            record_peak_check(store, run.run_id, probed and probed["peak_bytes"], result.summary.peak_bytes,
                              spec.probe.margin)
        events.run_finished(index, len(plans), run, result)
        results.append(result)
    return results
