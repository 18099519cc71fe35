"""One run's work, in two parts: `train_run` seeds, builds, fits and predicts (TTA on the test and
held-out images), in memory; `write_run_folder` writes what it produced into the run's folder.
`execute` calls both and commits the folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ledger.runs import artifacts
from ledger.runs.artifacts import Predictions
from ledger.data.batches import Batches
from ledger.training.checkpoint import Checkpoint
from ledger.data.competition import Competition
from ledger.training.device import Runtime, library_versions, model_on_device, resolve_precision
from ledger.errors import LedgerError
from ledger.training.callbacks import Progress, ProgressCallback, stage_callback
from ledger.training.inference import tta_at_sizes
from ledger.training.loss import Criterion, Head
from ledger.probe.memory import PeakMemory, device_name
from ledger.bag.metrics import Metric, metric_by_name
from ledger.bag.task_metrics import task_metric
from ledger.training.models import save_weights
from ledger.runs.plan import RunPlan
from ledger.probe.accumulation import micro_batch_size
from ledger.runs.pseudo_labels import pseudo_labels, training_set
from ledger.store.rows import RunSummary
from ledger.training.schedule import fit_phases
from ledger.spec.loader import dump_yaml
from ledger.spec.objects import model_to_dict
from ledger.data.splits import fold_indices, split_indices
from ledger.training.step import StepSettings
from ledger.training.learner import FitResult, Learner


@dataclass
class ImageSet:
    """A model entry's decoded images (train and test) at its item size, shared by its runs."""

    train: np.ndarray
    test: np.ndarray
    # The resident size (CPU) before the entry's first run: its later runs in the same process count
    # from it too, so pages an earlier run freed but the process kept are still counted, as they are
    # in the probe's fresh child. None until the first run starts.
    memory_baseline: int | None = None


@dataclass
class TrainedRun:
    """What `train_run` produced, before anything is written."""

    fitted: FitResult
    runtime: Runtime
    micro_batch: int
    train_idx: np.ndarray
    valid_idx: np.ndarray
    test_probs: torch.Tensor  # every target's classes side by side, TTA'd (tags' probabilities, or numbers)
    valid_probs: torch.Tensor | None  # the same for the held-out images; None without any
    peak_bytes: int
    metric: Metric  # the competition's metric, as the epochs were scored on it
    head: Head  # what the predictions are (and regression's scale, from the run's training images)
    pseudo_images: int = 0  # pseudo-labelled test images trained on


def split_of(plan: RunPlan, competition: Competition) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) indices of the run's split: its fold (kept whole by group with split.group),
    or its random split."""
    labels = competition.strata
    if plan.split.folds:
        groups = competition.train_column(plan.split.group) if plan.split.group else None
        return fold_indices(labels, plan.split.folds, plan.split.fold, plan.split.seed, groups)
    return split_indices(labels, plan.split.valid_pct, plan.split.seed)


def run_metric(plan: RunPlan, competition: Competition) -> Metric:
    """The competition's metric over this competition's classes, in the spec's class order (a
    multi-label or regression metric scores every column)."""
    if competition.task != "single_label":
        return task_metric(plan.metric, competition.task)
    return metric_by_name(plan.metric, competition.vocab, plan.class_order)


def _settle_before_the_meter(images: ImageSet, metric: Metric, competition: Competition) -> None:
    """What is not the run's own memory, in place before its meter starts, as the probe's child has
    it: the image cache's pages read in (a memory-mapped cache faults them in as training reads
    them), and the libraries the metric imports on its first score (scikit-learn's metrics)."""
    for array in (images.train, images.test):
        if isinstance(array, np.memmap) and array.size:
            array.max()  # reads every page once
    one = competition.train_labels[:1]
    metric.score(one, np.full((1, len(competition.vocab)), 1.0 / len(competition.vocab)) if one.ndim == 1
                 else np.asarray(one, dtype=np.float64))


def train_run(plan: RunPlan, competition: Competition, images: ImageSet, device: torch.device,
              progress: Progress, checkpoint: Checkpoint) -> TrainedRun:
    """Seed, build, fit (resuming from `checkpoint` when it holds a state), then TTA the test images
    and the held-out ones (so the out-of-bag estimate measures what the submission is)."""
    model = plan.model
    train_idx, valid_idx = split_of(plan, competition)
    torch.manual_seed(plan.train_seed)
    np.random.seed(plan.train_seed % 2**32)  # timm's Mixup draws from numpy's global generator
    metric = run_metric(plan, competition)
    _settle_before_the_meter(images, metric, competition)
    meter = PeakMemory(device, images.memory_baseline)  # from here: the model, its optimizer and activations
    if device.type == "cpu" and images.memory_baseline is None:
        images.memory_baseline = meter.baseline_bytes

    sizes = competition.head_sizes  # the submission's classes, then each extra target's (or tags, or numbers)
    head = Head.of(competition, train_idx)
    net, transform = model_on_device(model, head.outputs, device)
    runtime = Runtime(device, resolve_precision(model.precision, device), plan.accum, transform,
                      torch.Generator().manual_seed(plan.train_seed))
    micro_batch = micro_batch_size(model.batch_size, plan.accum)  # evaluation batches no larger than a training one
    labels = competition.target_labels()
    train_images, train_labels, train_rows, pseudo_images = images.train, labels, train_idx, 0
    if plan.pseudo is not None:  # only from teacher runs that held out this run's validation images
        chosen, chosen_labels = pseudo_labels(plan.pseudo, competition, valid_idx)
        train_images, train_labels, train_rows = training_set(
            images.train, labels, train_idx, images.test, chosen, chosen_labels, plan.pseudo.weight, sizes[0],
            model.label_smoothing)
        pseudo_images = len(chosen)
    batches = Batches(train_images, train_labels, train_rows, model.batch_size, shuffle=True, drop_last=True,
                      seed=plan.train_seed)
    # TTA keys each image's draws to its file name (see Batches).
    train_keys, test_keys = [p.name for p in competition.train_paths], [p.name for p in competition.test_paths]
    valid = Batches(images.train, labels, valid_idx, micro_batch, keys=train_keys) if len(valid_idx) else None
    criterion = Criterion(head, model.label_smoothing, model.mixup, model.cutmix,
                          extra_names=tuple(t.name for t in competition.extra), loss=model.loss)
    _check_tta_sizes(net, images.test[:1], runtime, plan.tta.sizes)
    # The checkpoint before the display: it restores before the display reports the resumed epochs,
    # and each epoch is saved before its end is shown.
    learner = Learner(net, batches, runtime, criterion, StepSettings.of(model), valid=valid, metric=metric,
                      callbacks=[checkpoint, ProgressCallback(progress)])
    fitted = learner.fit(fit_phases(model))

    # The held-out images get exactly the test images' TTA (sizes included): the estimate measures it.
    test_batches = Batches(images.test, None, np.arange(len(images.test)), micro_batch, keys=test_keys)
    # TTA's draws are keyed to the run's seed (recorded as tta.seed) and each image's name: the
    # exported bundle and `ledger predict` then repeat these test predictions exactly, for any
    # subset or order of the images.
    test_probs = tta_at_sizes(fitted.net, test_batches, runtime, plan.tta, head=head,
                              progress=stage_callback(progress, "tta test"))
    valid_probs = None
    if valid is not None:
        valid_probs = tta_at_sizes(fitted.net, valid, runtime, plan.tta, head=head,
                                   progress=stage_callback(progress, "tta valid"))
    return TrainedRun(fitted, runtime, micro_batch, train_idx, valid_idx, test_probs, valid_probs, meter.read(),
                      metric, head, pseudo_images)


@torch.no_grad()
def _check_tta_sizes(net: torch.nn.Module, image: np.ndarray, runtime: Runtime,
                     sizes: tuple[tuple[int, int], ...]) -> None:
    """One image through the net at each tta.size before training: an architecture that takes one
    input size only (a ViT) fails now, in one line, not after the training it would waste."""
    if not sizes:
        return
    was_training = net.training
    net.eval()
    try:
        for size in sizes:
            x = runtime.transform.resized(size).plain(torch.from_numpy(np.ascontiguousarray(image)).to(runtime.device))
            try:
                net(x)
            except (RuntimeError, AssertionError, ValueError) as error:
                raise LedgerError(f"tta.size {size[0]}x{size[1]}: this architecture cannot predict at that size "
                                  f"({str(error).strip().splitlines()[0]})") from None
    finally:
        net.train(was_training)


def write_run_folder(folder: Path, plan: RunPlan, competition: Competition, trained: TrainedRun) -> RunSummary:
    """Predictions (test, held-out), weights (with save_weights), per-epoch metrics, the summary
    and the resolved spec entry, into `folder` (the run's partial folder)."""
    model, sizes, history = plan.model, competition.head_sizes, trained.fitted.history
    task = competition.task
    targets = [(None, competition.vocab, competition.train_labels),
               *((t.name, t.vocab, t.labels) for t in competition.extra)]
    for (name, vocab, _), probs in zip(targets, trained.test_probs.split(sizes, dim=1)):
        artifacts.save_predictions(folder / artifacts.predictions_file(artifacts.TEST_PREDS, name), Predictions(
            ids=np.array(competition.test_ids), probs=probs.numpy(), vocab=np.array(vocab), task=task))
    tta_accuracy = tta_metric = None
    if trained.valid_probs is not None:
        valid_idx = trained.valid_idx
        for (name, vocab, target), probs in zip(targets, trained.valid_probs.split(sizes, dim=1)):
            vocab = np.array(vocab)
            truth = dict(labels=vocab[target[valid_idx]]) if task == "single_label" else dict(targets=target[valid_idx])
            artifacts.save_predictions(folder / artifacts.predictions_file(artifacts.VALID_PREDS, name), Predictions(
                ids=np.array(competition.train_ids)[valid_idx], probs=probs.numpy(), vocab=vocab, task=task,
                **truth))
        main, truth = trained.valid_probs[:, : sizes[0]].numpy(), competition.train_labels[valid_idx]
        if task == "single_label":  # tags and numbers have no accuracy: the metric says how good they are
            tta_accuracy = float((main.argmax(1) == truth).mean())
        tta_metric = trained.metric.score(truth, main)
    if model.save_weights:
        save_weights(trained.fitted.net, folder / artifacts.WEIGHTS)

    rows = []
    for m in history:
        row = dataclasses.asdict(m) | {"accuracy": m.accuracy, "images_per_s": m.images_per_s}
        row |= {f"error_rate_{name}": rate for name, rate in row.pop("extra_error_rates").items()}
        metric = row.pop("metric")
        del row["metric_name"]
        if plan.metric != "accuracy":  # the column named as the metric; accuracy has its column already
            row[plan.metric] = metric
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / artifacts.METRICS, index=False)
    seconds = sum(m.train_seconds for m in history)
    last = history[-1]
    summary = RunSummary(
        experiment=plan.experiment, model=model.name, arch=model.arch, size=model.size_label,
        fingerprint=plan.fingerprint, run_number=plan.run_number, train_seed=plan.train_seed,
        split_seed=plan.split.seed, fold=plan.split.fold, folds=plan.split.folds, accum=plan.accum,
        micro_batch=trained.micro_batch, epochs=model.epochs, train_images=len(trained.train_idx),
        valid_images=len(trained.valid_idx), test_images=len(competition.test_ids),
        valid_loss=last.valid_loss, error_rate=last.error_rate, tta_accuracy=tta_accuracy, train_seconds=seconds,
        images_per_s=sum(m.train_images for m in history) / seconds if seconds else 0.0,
        precision=trained.runtime.precision.name, device=device_name(trained.runtime.device),
        resumed_epochs=trained.fitted.resumed_epochs, peak_bytes=trained.peak_bytes, metric=plan.metric,
        valid_metric=last.metric, tta_metric=tta_metric)
    artifacts.write_json(folder / artifacts.SUMMARY, summary.to_dict())
    resolved = dict(experiment=plan.experiment, model=model_to_dict(model) | {"accum": plan.accum},
                    split=dataclasses.asdict(plan.split), train_seed=plan.train_seed,
                    tta=plan.tta.to_dict(), head=trained.head.to_dict(),
                    fingerprint=plan.fingerprint, versions=library_versions())
    if plan.pseudo is not None:
        resolved["pseudo"] = dict(teacher_runs=[t.run_id for t in plan.pseudo.teachers],
                                  threshold=plan.pseudo.threshold, weight=plan.pseudo.weight,
                                  images=trained.pseudo_images)
    (folder / artifacts.SPEC).write_text(dump_yaml(resolved))
    return summary
