"""The fit object, in the shape of fastai's Learner: a net, its batches and how to train them,
and a list of callbacks. `fit` is fastai's recipe (phases -> epochs -> steps, validation after each
epoch) and reads top to bottom; `fit_epochs` runs the same steps at the learning rate a callback
sets (lr-find, the probe's trial), so every training step of ledger goes through `_train_epoch`.

Side concerns (progress, checkpoint, weight average, lr-find's schedule, the probe's timer) are
callbacks (`callbacks.Callback`); the learner knows nothing of ledger rows or artifact files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ledger.bag.metrics import Metric
from ledger.data.batches import Batches
from ledger.training.callbacks import Callback, EpochMetrics, StopFit, SYNC_INTERVAL_S, WeightAverage
from ledger.training.device import Runtime
from ledger.training.inference import classification_metrics, predict
from ledger.training.loss import Criterion
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


class Learner:
    """One AdamW (fastai's Adam), grad scaler and step counter for `net` on `batches`, kept across
    every fit of this learner as fastai keeps its optimizer. With `settings.ema` the weight average
    is the first callback; the others follow in the order given."""

    def __init__(self, net: nn.Module, batches: Batches, runtime: Runtime, criterion: Criterion,
                 settings: StepSettings = StepSettings(), valid: Batches | None = None, metric: Metric | None = None,
                 callbacks: Sequence[Callback] = ()):
        self.net, self.batches, self.runtime, self.criterion, self.settings = net, batches, runtime, criterion, settings
        self.valid, self.metric = valid, metric
        self.parts = loop_parts(net, batches, runtime, settings)
        self.callbacks = ([WeightAverage(settings.ema)] if settings.ema else []) + list(callbacks)
        self.average = None  # timm's ModelEmaV3, set by the WeightAverage callback
        self.history: list[EpochMetrics] = []
        self.phase, self.epoch, self.epochs, self.step = "train", 0, 0, 0
        self.loss, self.losses, self.seen, self.started, self.sync_due = None, [], 0, 0.0, False
        self.metrics: EpochMetrics | None = None
        self.resumed_epochs = 0  # epochs a checkpoint restored in the last fit

    @property
    def inference_net(self) -> nn.Module:
        """What validation, TTA and saved weights use: the averaged weights when averaging is on."""
        return self.net if self.average is None else self.average.module

    def fit(self, phases: list[Phase]) -> FitResult:
        """fastai's recipe over `phases` (see schedule.fit_phases): each phase freezes or unfreezes
        the body and runs its own one-cycle schedule of learning rate and momentum, stepped once per
        effective batch. Epochs a checkpoint restored (in `before_fit`) are not trained again. A NaN
        or infinite loss fails the fit (NonFiniteLoss): a run must not bag garbage."""
        self._before_fit(epochs=sum(phase.epochs for phase in phases))
        try:
            steps, epoch = len(self.batches), 0  # epoch: over all phases
            for phase in phases:
                freeze_body(self.net, phase.frozen)
                schedule = OneCycle(self.parts.optimizer, phase, total_steps=max(1, phase.epochs * steps))
                for phase_epoch in range(phase.epochs):
                    epoch += 1
                    if epoch <= len(self.history):
                        continue  # done before the checkpoint
                    self._train_epoch(phase.name, epoch, schedule, first_step=phase_epoch * steps)
                    self._end_epoch()
        except StopFit:
            pass  # a callback ended the fit: the epochs done stand
        return self._after_fit()

    def fit_epochs(self, epochs: int, name: str = "train") -> FitResult:
        """Up to `epochs` epochs at the learning rate and freezing the net already has, for a
        callback that sets the rate itself and stops the fit (lr-find), or that stops it after a
        number of steps (the probe). No loss fails the fit for being NaN: lr-find records divergence
        as its result, and the probe measures memory and time whatever the loss."""
        self._before_fit(epochs)
        try:
            for epoch in range(1, epochs + 1):
                self._train_epoch(name, epoch, schedule=None, check_finite=False)
                self._end_epoch()
        except StopFit:
            pass
        return self._after_fit()

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _before_fit(self, epochs: int) -> None:
        self.history, self.epochs = [], epochs
        self._call("before_fit")
        self.resumed_epochs = len(self.history)

    def _after_fit(self) -> FitResult:
        self._call("after_fit")
        return FitResult(self.history, self.inference_net, self.resumed_epochs)

    def _train_epoch(self, phase: str, epoch: int, schedule: OneCycle | None, first_step: int = 0,
                     check_finite: bool = True) -> None:
        """One pass over the batches: per step the schedule's rate, the callbacks around the one
        training step, and at most once a second the wait for the device (with `check_finite`, a
        NaN or infinite loss since the last wait fails the fit, naming its step)."""
        self.phase, self.epoch = phase, epoch
        self.net.train()
        self.losses, self.seen, self.started = [], 0, time.perf_counter()
        self._call("before_epoch")
        device, last = self.runtime.device, len(self.batches) - 1
        synced, checked = 0.0, 0
        for step, (images, targets) in enumerate(self.batches):
            self.step = step
            if schedule is not None:
                schedule.apply(first_step + step)
            self._call("before_step")
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            self.loss = train_step(self.parts, images, targets, self.runtime, self.criterion, self.settings)
            self.losses.append(self.loss)
            self.seen += len(images)
            now = time.perf_counter()
            # .item() and the finiteness check wait for the device: once a second at most, and at the
            # epoch's end; callbacks read values then too (`sync_due`).
            self.sync_due = now - synced >= SYNC_INTERVAL_S or step == last
            if self.sync_due:
                bad = _first_non_finite(self.losses, checked) if check_finite else None
                if bad is not None:
                    raise NonFiniteLoss(f"non-finite training loss ({self.losses[bad].item()}) at epoch "
                                        f"{epoch}, step {bad + 1}")
                checked, synced = len(self.losses), now
            self._call("after_step")

    def _end_epoch(self) -> None:
        """The epoch's figures: its training loss and, with `valid`, the held-out images predicted (by
        the averaged weights when averaging is on) and scored: loss, error rate and the metric."""
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize()  # so the epoch's time is the device's time
        seconds = time.perf_counter() - self.started
        train_loss = torch.stack(self.losses).mean().item() if self.losses else float("nan")
        valid_loss = error_rate = score = None
        extra_errors: list[float] = []
        head = self.criterion.head
        if self.valid is not None:
            probs, labels = predict(self.inference_net, self.valid, self.runtime, head=head,
                                    progress=lambda done, total: self._call("after_valid_batch", done, total))
            valid_loss, error_rate, extra_errors = classification_metrics(probs, labels, head)
            if self.metric is not None:
                # The submission's target: the first of a single-label head's targets, or every column.
                truth = labels[:, 0] if head.task == "single_label" and labels.ndim > 1 else labels
                score = self.metric.score(truth.numpy(), probs[:, : head.sizes[0]].numpy())
        self.metrics = EpochMetrics(
            self.phase, self.epoch, train_loss, valid_loss, error_rate, self.seen, seconds,
            lr=self.parts.optimizer.param_groups[-1]["lr"],
            extra_error_rates=dict(zip(self.criterion.extra_names, extra_errors)), metric=score,
            metric_name=None if self.metric is None else self.metric.name)
        self.history.append(self.metrics)
        self._call("after_epoch")
