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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ledger import artifacts
from ledger.artifacts import Predictions
from ledger.checkpoint import Checkpoint
from ledger.data import Competition, fold_indices, load_images, split_indices
from ledger.errors import first_line
from ledger.memory import PeakMemory, device_name, is_out_of_memory
from ledger.models import save_weights
from ledger.plan import RunPlan
from ledger.probe import micro_batch_size
from ledger.record import RunResult
from ledger.schedule import fit_phases
from ledger.spec import dump_yaml, model_to_dict
from ledger.train import (Batches, Criterion, Progress, Runtime, SilentProgress, fit, model_on_device,
                          resolve_precision, stage_callback, tta)

PARTIAL_SUFFIX = ".partial"


@dataclass
class ImageSet:
    """A model entry's decoded images (train and test) at its item size, shared by its runs."""

    train: np.ndarray
    test: np.ndarray


def cached_images(competition: Competition, model, cache_dir: Path, progress: Progress | None = None) -> ImageSet:
    return ImageSet(
        train=load_images(competition.train_paths, model.item_size, model.resize, cache_dir,
                          progress=stage_callback(progress, "decoding train images")),
        test=load_images(competition.test_paths, model.item_size, model.resize, cache_dir,
                         progress=stage_callback(progress, "decoding test images")),
    )


def partial_dir(home: Path, experiment: str, run_id: str) -> Path:
    """Where a run is built, and where its checkpoint waits for a resume."""
    return Path(home) / experiment / (run_id + PARTIAL_SUFFIX)


def run_folders(home: Path, plan: RunPlan) -> tuple[Path, Path]:
    """(partial, final) folders of a run."""
    return partial_dir(home, plan.experiment, plan.run_id), Path(home) / plan.experiment / plan.run_id


def split_of(plan: RunPlan, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if plan.split.folds:
        return fold_indices(labels, plan.split.folds, plan.split.fold, plan.split.seed)
    return split_indices(labels, plan.split.valid_pct, plan.split.seed)


def one_line_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


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
            RunResult(plan.run_id, "failed", error=f"{final}: run folder already exists without a summary", **where)
    train_images = len(split_of(plan, competition.train_labels)[0])
    if plan.model.batch_size > train_images:
        # Batches would hold the whole set: one optimizer step an epoch, a run that learns nothing.
        return RunResult(plan.run_id, "failed", error=f"{plan.model.name}: batch_size {plan.model.batch_size} is "
                         f"larger than the {train_images} training images of its split; lower batch_size", **where)
    if not plan.resume:
        shutil.rmtree(partial, ignore_errors=True)  # a stale partial folder of a run not resumed
    partial.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(partial)
    try:
        summary, resumed = _train(plan, competition, images, partial, device, progress or SilentProgress(), checkpoint)
        # The rename is the commit; the checkpoint goes after it, so that at every instant the run
        # is either a partial folder that resumes (after its last epoch: only TTA is redone) or a
        # whole final folder that housekeeping records (`committed_result`).
        os.replace(partial, final)
        Checkpoint(final).delete()  # weights are kept only with save_weights
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - a failed run is reported; the next ones go on
        shutil.rmtree(partial, ignore_errors=True)
        message = ("out of memory: " if is_out_of_memory(error) else "") + one_line_error(error)
        return RunResult(plan.run_id, "failed", error=message, **where)
    return RunResult(plan.run_id, "done", folder=final, summary=summary, resumed_epochs=resumed, **where)


def committed_result(run_id: str, final: Path) -> RunResult | None:
    """The `done` result of a committed run folder (found whole after a kill between the rename
    and the ledger row), or None when `final` holds no readable summary. A checkpoint left by a
    kill between the rename and its deletion goes now."""
    try:
        summary = artifacts.read_json(final / artifacts.SUMMARY)
    except (OSError, ValueError):
        return None
    Checkpoint(final).delete()
    return RunResult(run_id, "done", folder=final, summary=summary, resumed_epochs=summary.get("resumed_epochs") or 0)


def _train(plan: RunPlan, competition: Competition, images: ImageSet, folder: Path, device: torch.device,
           progress: Progress, checkpoint: Checkpoint) -> tuple[dict, int]:
    model = plan.model
    precision = resolve_precision(model.precision, device)
    train_idx, valid_idx = split_of(plan, competition.train_labels)
    torch.manual_seed(plan.train_seed)
    np.random.seed(plan.train_seed % 2**32)  # timm's Mixup draws from numpy's global generator
    generator = torch.Generator().manual_seed(plan.train_seed)
    meter = PeakMemory(device)  # measured from here: the model, its optimizer and activations

    sizes = competition.head_sizes  # the submission's classes, then each extra target's
    net, transform = model_on_device(model, sum(sizes), device)
    micro_batch = micro_batch_size(model.batch_size, plan.accum)  # evaluation batches no larger than a training one
    labels = competition.target_labels()
    batches = Batches(images.train, labels, train_idx, model.batch_size, shuffle=True, drop_last=True,
                      seed=plan.train_seed)
    valid = Batches(images.train, labels, valid_idx, micro_batch) if len(valid_idx) else None
    runtime = Runtime(device, precision, plan.accum, transform, generator)
    criterion = Criterion(sizes, model.label_smoothing, model.mixup, model.cutmix,
                          extra_names=tuple(t.name for t in competition.extra))
    history = fit(net, model, fit_phases(model), batches, runtime, criterion, valid=valid, progress=progress,
                  checkpoint=checkpoint)

    resumed = checkpoint.restored_epochs  # epochs taken from a checkpoint, not trained again
    test_batches = Batches(images.test, None, np.arange(len(images.test)), micro_batch)
    test_probs = tta(net, test_batches, transform, device, precision, plan.tta_n, plan.tta_beta, generator=generator,
                     head_sizes=sizes, progress=stage_callback(progress, "tta test"))
    targets = [(None, competition.vocab, competition.train_labels),
               *((t.name, t.vocab, t.labels) for t in competition.extra)]
    for (name, vocab, _), probs in zip(targets, test_probs.split(sizes, dim=1)):
        artifacts.save_predictions(folder / artifacts.predictions_file(artifacts.TEST_PREDS, name), Predictions(
            ids=np.array(competition.test_ids), probs=probs.numpy(), vocab=np.array(vocab)))
    valid_loss = error_rate = tta_accuracy = None
    if valid is not None:
        # TTA on the held-out images too, so the out-of-bag estimate measures what the submission is.
        valid_probs = tta(net, valid, transform, device, precision, plan.tta_n, plan.tta_beta, generator=generator,
                          head_sizes=sizes, progress=stage_callback(progress, "tta valid"))
        valid_loss, error_rate = history[-1].valid_loss, history[-1].error_rate
        for (name, vocab, target), probs in zip(targets, valid_probs.split(sizes, dim=1)):
            vocab = np.array(vocab)
            artifacts.save_predictions(folder / artifacts.predictions_file(artifacts.VALID_PREDS, name), Predictions(
                ids=np.array(competition.train_ids)[valid_idx], probs=probs.numpy(), vocab=vocab,
                labels=vocab[target[valid_idx]]))
        main = valid_probs[:, : sizes[0]]
        tta_accuracy = float((main.argmax(1).numpy() == competition.train_labels[valid_idx]).mean())
    if model.save_weights:
        save_weights(net, folder / artifacts.WEIGHTS)
    peak_bytes = meter.read()

    rows = []
    for m in history:
        row = dataclasses.asdict(m) | {"accuracy": m.accuracy, "images_per_s": m.images_per_s}
        row |= {f"error_rate_{name}": rate for name, rate in row.pop("extra_error_rates").items()}
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / artifacts.METRICS, index=False)
    seconds = sum(m.train_seconds for m in history)
    summary = dict(
        experiment=plan.experiment, model=model.name, arch=model.arch, size=model.size_label, split_seed=plan.split.seed,
        fold=plan.split.fold, folds=plan.split.folds, train_seed=plan.train_seed, run_number=plan.run_number,
        fingerprint=plan.fingerprint, accum=plan.accum, micro_batch=micro_batch, epochs=model.epochs,
        train_images=len(train_idx), valid_images=len(valid_idx), test_images=len(competition.test_ids),
        valid_loss=valid_loss, error_rate=error_rate, accuracy=None if error_rate is None else 1 - error_rate,
        tta_accuracy=tta_accuracy, train_seconds=seconds,
        precision=precision.name, device=device_name(device), resumed_epochs=resumed,
        images_per_s=sum(m.train_images for m in history) / seconds if seconds else 0.0, peak_bytes=peak_bytes,
    )
    artifacts.write_json(folder / artifacts.SUMMARY, summary)
    resolved = dict(experiment=plan.experiment, model=model_to_dict(model) | {"accum": plan.accum},
                    split=dataclasses.asdict(plan.split), train_seed=plan.train_seed,
                    tta=dict(n=plan.tta_n, beta=plan.tta_beta), fingerprint=plan.fingerprint)
    (folder / artifacts.SPEC).write_text(dump_yaml(resolved))
    return summary, resumed
