"""The runs of an experiment: housekeeping, plan, then each run executed and recorded.

`train_experiment` is the local executor: runs one after another in this process, or `--jobs N` at
a time in worker processes. Before
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
from typing import Callable, Sequence

import torch

from ledger.store.rows import RunStatus
from ledger.training.checkpoint import CHECKPOINT
from ledger.data.competition import load_competition
from ledger.executors.dispatch import RowFacts, dispatch, longest_first
from ledger.runs.execution import PARTIAL_SUFFIX, cached_images, committed_result, execute, interrupted_reason, partial_dir
from ledger.probe.memory import device_name, release_memory
from ledger.runs.plan import RunPlan, keep_promise, plan, promise
from ledger.executors.process_pool import ProcessPool, check_jobs
from ledger.probe.planned_time import estimated_seconds
from ledger.probe.spec_probe import record_peak_check, recorded_trial
from ledger.runs.pseudo_labels import teacher_runs
from ledger.runs.recording import RunResult, record, record_start
from ledger.spec.loader import ModelSpec, Spec
from ledger.store.database import Store, new_id
from ledger.training.device import resolve_precision
from ledger.training.callbacks import ExperimentEvents


def resumable(store: Store, row: dict) -> bool:
    partial = partial_dir(store.home, row.experiment, row.id)
    return row.status == RunStatus.INTERRUPTED and (partial / CHECKPOINT).is_file()


def recover_committed(store: Store, experiment: str) -> list[str]:
    """Interrupted rows whose run folder was committed (renamed whole) before the kill came are
    recorded `done` from the folder's summary, never trained again. Returns their ids."""
    recovered = []
    for row in store.runs(experiment, status=RunStatus.INTERRUPTED):
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
        if rows and rows[0].status == RunStatus.RUNNING:
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


def row_facts(spec: Spec, store: Store, device: torch.device, jobs: int = 1) -> RowFacts:
    """What a run trained here (`jobs` at a time) records when it starts, and the probe's prediction
    for its peak."""
    def predicted_peak(run: RunPlan) -> int | None:
        trial = recorded_trial(store, spec, run.model, device, run.accum, jobs)
        return trial and trial.peak_bytes

    return RowFacts(device_name(device), lambda run: resolve_precision(run.model.precision, device).name,
                    predicted_peak, spec.probe.margin)


def train_experiment(spec: Spec, plans: Sequence[RunPlan], store: Store, events: ExperimentEvents,
                     device: torch.device, jobs: int = 1) -> list[RunResult]:
    """Execute and record `plans` one after another, or `jobs` at a time in worker processes
    (`process_pool`). Ctrl-C (or SIGTERM, which the command line turns into one) records the runs in
    progress as interrupted, keeps their checkpoints, and re-raises."""
    competition = load_competition(spec.data)
    facts = row_facts(spec, store, device, jobs)
    if jobs > 1:
        check_jobs(jobs, device)
        plans = longest_first(plans, lambda run: estimated_seconds(spec, store, run, device, competition, jobs))
        pool = ProcessPool(store.home, jobs)
        try:
            return dispatch(plans, store, events, pool, facts, socket.gethostname(), os.getpid())
        finally:
            pool.close()
    images, results = {}, []
    for index, run in enumerate(plans):
        progress = events.run_started(index, len(plans), run)
        if run.model.name not in images:  # one entry's images at a time; decoding shows on the run's display
            images = {run.model.name: cached_images(competition, run.model, store.home / "cache", progress)}
        predicted = facts.predicted_peak(run)
        record_start(store, run, facts.device, facts.precision(run), socket.gethostname(), os.getpid(), predicted)
        try:
            result = execute(run, competition, images[run.model.name], store.home, device, progress)
        except KeyboardInterrupt:
            record(store, RunResult(run.run_id, RunStatus.INTERRUPTED, error=interrupted_reason(store, run)))
            raise
        finally:
            release_memory()  # this run's model, optimizer and cached blocks, before the next run
        record(store, result)
        if result.status == RunStatus.DONE:
            record_peak_check(store, run.run_id, predicted, result.summary.peak_bytes, facts.margin)
        events.run_finished(index, len(plans), run, result)
        results.append(result)
    return results
