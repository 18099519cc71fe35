"""The training loop: fastai's phases and one-cycle schedule around `train_step`, validation after
each epoch, a checkpoint after each epoch.

`fit` is the whole loop, top to bottom. Side concerns (progress display, checkpoints) are objects it
calls by name; it knows nothing of ledger rows or artifact files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
import torch
from torch import nn

from ledger.data.batches import Batches
from ledger.training.device import Runtime
from ledger.training.hooks import EpochMetrics, Progress, stage_callback
from ledger.training.inference import classification_metrics, predict
from ledger.training.loss import Criterion
from ledger.bag.metrics import Metric
from ledger.training.models import freeze_body
from ledger.training.schedule import OneCycle, Phase
from ledger.training.step import StepSettings, loop_parts, train_step

class NonFiniteLoss(RuntimeError):
    """A NaN or infinite training loss: the run fails instead of bagging garbage."""


@dataclass(frozen=True)
class FitResult:
    history: list[EpochMetrics]  # every epoch, restored ones included
    net: nn.Module  # what to predict with: the averaged weights when averaging is on
    resumed_epochs: int  # epochs restored from a checkpoint instead of trained again


def _first_non_finite(losses: list[torch.Tensor], since: int) -> int | None:
    if len(losses) <= since:
        return None
    finite = torch.isfinite(torch.stack(losses[since:]))
    if bool(finite.all()):  # one device sync per check, not per step
        return None
    return since + int((~finite).nonzero()[0, 0])


def fit(net: nn.Module, phases: list[Phase], batches: Batches, runtime: Runtime, criterion: Criterion,
        settings: StepSettings = StepSettings(), valid: Batches | None = None, progress: Progress | None = None,
        checkpoint=None, metric: Metric | None = None) -> FitResult:
    """fastai's recipe as one loop over `phases` (see schedule.fit_phases): one AdamW (fastai's
    Adam) kept across phases as fastai keeps its optimizer; each phase freezes or unfreezes the body
    and runs its own one-cycle schedule of learning rate and momentum, stepped once per effective
    batch. After each epoch the held-out `valid` images are predicted (with the averaged weights
    when `settings.ema` is on) and scored: loss, error rate and, with `metric`, the competition's metric.

    `checkpoint` (optional) saves after every epoch and, when it holds a saved state, the loop
    resumes after the last epoch it saved, with every random generator where it was."""
    progress = progress or Progress()
    device = runtime.device
    parts = loop_parts(net, batches, runtime, settings)
    history = checkpoint.restore(parts) if checkpoint is not None and checkpoint.exists() else []
    resumed = len(history)
    if resumed:
        progress.resumed(resumed)
    steps_per_epoch = len(batches)
    total_epochs = sum(p.epochs for p in phases)
    epoch_number = 0  # over all phases
    for phase in phases:
        freeze_body(net, phase.frozen)
        schedule = OneCycle(parts.optimizer, phase, total_steps=max(1, phase.epochs * steps_per_epoch))
        for phase_epoch in range(phase.epochs):
            epoch_number += 1
            if epoch_number <= len(history):
                continue  # done before the checkpoint
            net.train()
            progress.start(phase.name, epoch_number - 1, total_epochs, steps_per_epoch)
            losses, seen, started, shown, checked = [], 0, time.perf_counter(), 0.0, 0
            for step, (images, targets) in enumerate(batches):
                schedule.apply(phase_epoch * steps_per_epoch + step)
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                losses.append(train_step(parts, images, targets, runtime, criterion, settings))
                seen += len(images)
                now = time.perf_counter()
                if now - shown >= 1.0 or step == steps_per_epoch - 1:
                    # .item() and the finiteness check wait for the device: once a second at most.
                    bad = _first_non_finite(losses, checked)
                    if bad is not None:
                        raise NonFiniteLoss(f"non-finite training loss ({losses[bad].item()}) at epoch "
                                            f"{epoch_number}, step {bad + 1}")
                    checked, shown = len(losses), now
                    progress.step(step + 1, losses[-1].item(), seen / (now - started))
            if device.type == "cuda":
                torch.cuda.synchronize()  # so the epoch's time is the device's time
            seconds = time.perf_counter() - started
            train_loss = torch.stack(losses).mean().item() if losses else float("nan")
            valid_loss = error_rate = score = None
            extra_errors: list[float] = []
            if valid is not None:
                probs, labels = predict(parts.inference_net, valid, runtime, head_sizes=criterion.sizes,
                                        progress=stage_callback(progress, "validation"))
                valid_loss, error_rate, extra_errors = classification_metrics(probs, labels, criterion.sizes)
                if metric is not None:
                    truth = labels if labels.ndim == 1 else labels[:, 0]  # the submission's target
                    score = metric.score(truth.numpy(), probs[:, : criterion.sizes[0]].numpy())
            metrics = EpochMetrics(phase.name, epoch_number, train_loss, valid_loss, error_rate, seen, seconds,
                                   lr=parts.optimizer.param_groups[-1]["lr"],
                                   extra_error_rates=dict(zip(criterion.extra_names, extra_errors)), metric=score,
                                   metric_name=None if metric is None else metric.name)
            progress.end(metrics)
            history.append(metrics)
            if checkpoint is not None:
                checkpoint.save(parts, history)
    return FitResult(history, parts.inference_net, resumed)
