"""Execute one planned run: train it, write its artifacts into its own folder, report a result.

It writes nothing but `<home>/<experiment>/<run_id>.partial/` (renamed to `<run_id>/` when the run
is complete), reports progress through the `Progress` object it is given, and returns a small
`RunResult`; the ledger row is the caller's (`record`). The same function runs in-process or in a
Ray task.

A killed run leaves its partial folder with the checkpoint of its last finished epoch; executing
the same plan again (`plan.resume`) goes on from there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import torch

from ledger.store.rows import RunStatus, RunSummary
from ledger.runs import artifacts
from ledger.runs.checksums import read_checksums, write_checksums
from ledger.training.checkpoint import CHECKPOINT, Checkpoint
from ledger.data.competition import Competition
from ledger.data.images import load_images
from ledger.errors import describe
from ledger.training.callbacks import Progress, stage_callback
from ledger.probe.memory import is_out_of_memory
from ledger.runs.plan import RunPlan
from ledger.runs.recording import RunResult
from ledger.runs.training_run import ImageSet, split_of, train_run, write_run_folder

PARTIAL_SUFFIX = ".partial"


def cached_images(competition: Competition, model, cache_dir: Path, progress: Progress | None = None) -> ImageSet:
    return ImageSet(
        train=load_images(competition.train_paths, model.item_size, model.resize, cache_dir,
                          progress=stage_callback(progress, "decoding train images")),
        test=load_images(competition.test_paths, model.item_size, model.resize, cache_dir,
                         progress=stage_callback(progress, "decoding test images")),
    )


def worker_images(competition: Competition, model, cache_dir: Path, progress: Progress | None = None) -> ImageSet:
    """A worker process's images for a run (a `--jobs` worker, a Ray task), with the process set up as
    the driver's and the probe trial's are when their meters start, so that the run's peak counts the
    same things. The spec check's meta-device build first: it maps library code (about 10 MiB of timm)
    into memory, which the driver had mapped before any run. Then the images read from the disk cache
    (decoded into it first on a miss, the decoder's leftovers handed back) and copied into memory:
    pages of a memory-mapped cache read during training would be charged to the run, and its peak
    would read well over the probe's prediction (docs/benchmarks.md)."""
    from ledger.probe.memory import release_memory
    from ledger.spec.loader import check_model

    check_model(Path(competition.root), 0, model)
    cached_images(competition, model, cache_dir, progress)  # a miss decodes into the cache
    release_memory()
    mapped = cached_images(competition, model, cache_dir)
    return dataclasses.replace(mapped, train=np.array(mapped.train), test=np.array(mapped.test))


def partial_dir(home: Path, experiment: str, run_id: str) -> Path:
    """Where a run is built, and where its checkpoint waits for a resume."""
    return Path(home) / experiment / (run_id + PARTIAL_SUFFIX)


def run_folders(home: Path, plan: RunPlan) -> tuple[Path, Path]:
    """(partial, final) folders of a run."""
    return partial_dir(home, plan.experiment, plan.run_id), Path(home) / plan.experiment / plan.run_id


def execute(plan: RunPlan, competition: Competition, images: ImageSet, home: Path, device: torch.device,
            progress: Progress | None = None) -> RunResult:
    """Train `plan` and commit its folder. Failures come back as a `failed` result (the partial
    folder is removed); a KeyboardInterrupt propagates and leaves the partial folder and its
    checkpoint for a resume."""
    partial, final = run_folders(home, plan)
    where = dict(host=socket.gethostname(), pid=os.getpid())
    if final.exists():
        # Committed by an earlier command killed before it could record it: recorded, not retrained.
        committed = committed_result(plan.run_id, final)
        return committed if committed is not None else \
            RunResult(plan.run_id, RunStatus.FAILED, error=f"{final}: run folder already exists without a summary", **where)
    train_images = len(split_of(plan, competition)[0])
    if plan.model.batch_size > train_images:
        # Batches would hold the whole set: one optimizer step an epoch, a run that learns nothing.
        return RunResult(plan.run_id, RunStatus.FAILED, error=f"{plan.model.name}: batch_size {plan.model.batch_size} is "
                         f"larger than the {train_images} training images of its split; lower batch_size", **where)
    if not plan.resume:
        shutil.rmtree(partial, ignore_errors=True)  # a stale partial folder of a run not resumed
    partial.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(partial)
    try:
        trained = train_run(plan, competition, images, device, progress or Progress(), checkpoint)
        summary = write_run_folder(partial, plan, competition, trained)
        checksums = write_checksums(partial)  # what ensemble, predict and export check before reading
        # The rename is the commit; the checkpoint goes after it, so that at every instant the run
        # is either a partial folder that resumes (after its last epoch: only TTA is redone) or a
        # whole final folder that housekeeping records (`committed_result`).
        os.replace(partial, final)
        Checkpoint(final).delete()  # weights are kept only with save_weights
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - a failed run is reported; the next ones go on
        if _interrupted(error):  # an interrupt some library wrapped: the run stopped, it did not fail
            raise KeyboardInterrupt from error
        shutil.rmtree(partial, ignore_errors=True)
        message = ("out of memory: " if is_out_of_memory(error) else "") + describe(error)
        return RunResult(plan.run_id, RunStatus.FAILED, error=message, **where)
    return RunResult(plan.run_id, RunStatus.DONE, folder=final, summary=summary, resumed_epochs=summary.resumed_epochs,
                     checksums=checksums, **where)


def _interrupted(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the errors that led to `error`."""
    seen = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def committed_result(run_id: str, final: Path) -> RunResult | None:
    """The `done` result of a committed run folder (found whole after a kill between the rename
    and the ledger row), or None when `final` holds no readable summary. A checkpoint left by a
    kill between the rename and its deletion goes now."""
    try:
        summary = RunSummary.from_dict(artifacts.read_json(final / artifacts.SUMMARY))
    except (OSError, ValueError, TypeError):
        return None
    Checkpoint(final).delete()
    checksums = read_checksums(final) or write_checksums(final)  # written before the rename, unless older
    return RunResult(run_id, RunStatus.DONE, folder=final, summary=summary, resumed_epochs=summary.resumed_epochs,
                     checksums=checksums)


def interrupted_reason(store, run: RunPlan) -> str:
    """What an interrupt leaves of a run: a checkpoint to resume from, or nothing (stopped before
    its first epoch ended, so it starts again from epoch 1)."""
    if (partial_dir(store.home, run.experiment, run.run_id) / CHECKPOINT).is_file():
        return "interrupted; resumes after its last finished epoch"
    return "interrupted before its first epoch ended; starts again from epoch 1"
