"""The runs of an experiment: housekeeping, plan, then each run executed and recorded.

`train_experiment` is the local executor: runs one after another in this process. Before
planning it settles what earlier commands left behind: `running` rows whose process is gone become
`interrupted`, and partial folders are either kept for a resume (an interrupted run with a
checkpoint) or removed. Nothing here prints: the caller's `ExperimentEvents` shows progress.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from ledger.checkpoint import CHECKPOINT
from ledger.data import load_competition
from ledger.execute import PARTIAL_SUFFIX, cached_images, execute, partial_dir
from ledger.memory import device_name, release_memory
from ledger.plan import RunPlan, plan
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


def housekeeping(store: Store, experiment: str) -> list[str]:
    """Stale `running` rows -> `interrupted`; partial folders that cannot be resumed are removed
    (those of live runs are left alone). Returns the ids marked interrupted."""
    stale = store.mark_stale_runs()
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


def plan_experiment(spec: Spec, models: Sequence[ModelSpec], store: Store, accum_for: Callable[[ModelSpec], int],
                    more: int = 0) -> list[RunPlan]:
    housekeeping(store, spec.name)
    return plan(spec, models, store.runs(spec.name), accum_for, new_id, more=more,
                resumable=lambda row: resumable(store, row), teachers=teacher_runs(spec, store))


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
        record_start(store, run, device_name(device), resolve_precision(run.model.precision, device).name,
                     socket.gethostname(), os.getpid())
        try:
            result = execute(run, competition, images[run.model.name], store.home, device, progress)
        except KeyboardInterrupt:
            record(store, RunResult(run.run_id, "interrupted", error="interrupted; resumes from its last finished epoch"))
            raise
        finally:
            release_memory()  # this run's model, optimizer and cached blocks, before the next run
        record(store, result)
        events.run_finished(index, len(plans), run, result)
        results.append(result)
    return results
