"""fastai's learning-rate range test (`Learner.lr_find`) and its four suggestion methods.

The test trains a fresh model for up to `num_it` effective batches while the learning rate grows
exponentially from `start_lr` to `end_lr`, records fastai's smoothed loss after every batch, and
stops once that loss passes 4x its minimum. As fastai's, it is a callback (`LrFinder`) on a fit of
the `Learner`, so it trains with the run's own step. The model is thrown away afterwards: only the curve, the
suggestions, a plot and a ledger row remain (`runs/lr_find_run.py` draws and records them).

Suggestions follow fastai's `SuggestionMethod` (valley, slide, minimum, steep), computed as fastai
does on the curve without its first `num_it // 10` and last 5 points (the warm-up noise and the
divergence), cut at the first non-finite loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import nn

from ledger.errors import LedgerError
from ledger.training.callbacks import Callback, StopFit
from ledger.training.learner import Learner

START_LR, END_LR, NUM_IT = 1e-7, 10.0, 100
SMOOTH_BETA = 0.98  # fastai's AvgSmoothLoss
DIVERGENCE = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum (fastai's stop_div)

# progress(batch, total, lr, smoothed_loss): called after every batch; the CLI draws it.
LrFindProgress = Callable[[int, int, float, float], None]


# ---------------------------------------------------------------- the range test


class SmoothLoss:
    """fastai's AvgSmoothLoss: an exponential moving average started at zero, debiased by
    1 - beta**count so that the first values are not pulled towards zero."""

    def __init__(self, beta: float = SMOOTH_BETA):
        self.beta, self.average, self.count = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        return self.average / (1 - self.beta**self.count)


@dataclass(frozen=True)
class RangeTest:
    lrs: list[float]  # the learning rate each batch was trained at
    losses: list[float]  # smoothed loss after each batch (what fastai records and plots)
    raw_losses: list[float]  # each batch's own loss
    stopped: str  # "num_it", "diverged" (smoothed loss > 4x its minimum) or "non-finite"


def exponential_lr(step: int, num_it: int, start_lr: float = START_LR, end_lr: float = END_LR) -> float:
    """fastai's SchedExp at position step / num_it: batch 0 trains at start_lr."""
    return start_lr * (end_lr / start_lr) ** (step / num_it)


class LrFinder(Callback):
    """fastai's LRFinder callback: sets each step's learning rate on the exponential schedule,
    records the loss after it, and stops the fit at `num_it` steps or when the loss diverges."""

    def __init__(self, start_lr: float = START_LR, end_lr: float = END_LR, num_it: int = NUM_IT,
                 stop_div: bool = True, progress: LrFindProgress | None = None):
        self.start_lr, self.end_lr, self.num_it = start_lr, end_lr, num_it
        self.stop_div, self.progress = stop_div, progress
        self.smoother, self.best = SmoothLoss(), math.inf
        self.lrs, self.losses, self.raw = [], [], []
        self.lr, self.stopped = start_lr, "num_it"

    def before_step(self, learner) -> None:
        self.lr = exponential_lr(len(self.lrs), self.num_it, self.start_lr, self.end_lr)
        for group in learner.parts.optimizer.param_groups:
            group["lr"] = self.lr

    def after_step(self, learner) -> None:
        # .item() waits for the device every batch: the stop test needs the value anyway.
        loss = learner.loss.item()
        smooth = self.smoother.add(loss)
        self.lrs.append(self.lr), self.losses.append(smooth), self.raw.append(loss)
        if self.progress is not None:
            self.progress(len(self.lrs), self.num_it, self.lr, smooth)
        # The diverging batch is recorded before stopping, as fastai's Recorder does.
        if not math.isfinite(smooth):
            self._stop("non-finite")
        self.best = min(self.best, smooth)
        if self.stop_div and smooth > DIVERGENCE * self.best:
            self._stop("diverged")
        if len(self.lrs) >= self.num_it:
            self._stop("num_it")

    def _stop(self, reason: str) -> None:
        self.stopped = reason
        raise StopFit(reason)

    def result(self) -> RangeTest:
        return RangeTest(self.lrs, self.losses, self.raw, self.stopped)


def range_test(net: nn.Module, batches, runtime, criterion, settings, start_lr: float = START_LR,
               end_lr: float = END_LR, num_it: int = NUM_IT, stop_div: bool = True,
               progress: LrFindProgress | None = None) -> RangeTest:
    """Train `net` (in place: pass a model you will throw away) with the run's own training step
    (the `Learner`'s: its optimizer, loss, accumulation, clipping) on up to `num_it` effective
    batches, going round `batches` again when it runs out, as fastai fits as many epochs as it needs.
    A frozen body stays frozen: its weights get no gradient, so AdamW leaves them (and their decay) alone."""
    if len(batches) == 0:
        raise LedgerError("lr-find: no training batches (the training split is empty)")
    finder = LrFinder(start_lr, end_lr, num_it, stop_div, progress)
    Learner(net, batches, runtime, criterion, settings, callbacks=[finder]).fit_epochs(math.ceil(num_it / len(batches)),
                                                                                      name="lr_find")
    return finder.result()


# ---------------------------------------------------------------- suggestions


@dataclass(frozen=True)
class Suggestion:
    lr: float  # the suggested learning rate
    point: tuple[float, float]  # (lr, loss) where fastai marks it on the plot


def valley(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """The longest valley: the longest strictly decreasing subsequence of the losses, and a point
    part of the way down it. fastai documents it as 'roughly 2/3 through the valley'; its code
    starts one point before the valley and steps a third plus a sixth of the valley's span, and
    that is what is matched here, so suggestions agree with fastai's."""
    n = len(losses)
    longest = np.ones(n, dtype=int)  # longest[i]: length of the longest decreasing run ending at i
    for i in range(1, n):
        higher = longest[:i][losses[:i] > losses[i]]
        if len(higher):
            longest[i] = higher.max() + 1
    end = int(np.argmax(longest))  # the first index that reaches the longest length
    start = end - int(longest[end])
    span = (end - start) / 3
    index = max(0, start + int(span) + int(span / 2))
    return Suggestion(float(lrs[index]), (float(lrs[index]), float(losses[index])))


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005,
          adjust_value: float = 1.0) -> Suggestion | None:
    """The interval slide rule: walk a window of `lr_diff` points back from the end of the curve
    until the loss gradients (per point) at its two ends differ by at most `thresh`; suggest the
    learning rate at the window's left end. None when the curve is shorter than the window."""
    n = len(losses)
    if n <= lr_diff:
        return None
    gradient = np.gradient(losses)
    right, left = n - 1, n - 1 - lr_diff
    found = lrs[left]
    while left >= 0 and abs(gradient[right] - gradient[left]) > thresh:
        found = lrs[left]
        right, left = right - 1, left - 1
    lr = float(found) * adjust_value
    return Suggestion(lr, (lr, float(np.interp(np.log10(lr), np.log10(lrs), losses))))


def minimum(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """A tenth of the learning rate at the lowest loss (marked at the lowest loss itself)."""
    index = int(np.argmin(losses))
    return Suggestion(float(lrs[index]) / 10, (float(lrs[index]), float(losses[index])))


def steep(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """The learning rate where the loss falls fastest per unit of log learning rate (the left end
    of the steepest segment)."""
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    index = int(np.argmin(slopes))
    return Suggestion(float(lrs[index]), (float(lrs[index]), float(losses[index])))


METHODS = {"valley": valley, "slide": slide, "minimum": minimum, "steep": steep}


def suggestion_window(lrs, losses, num_it: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of the curve fastai suggests from: without the first num_it // 10 and last 5
    points, cut at the first non-finite loss."""
    lrs, losses = np.asarray(lrs, dtype=float)[num_it // 10 : -5], np.asarray(losses, dtype=float)[num_it // 10 : -5]
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        lrs, losses = lrs[: bad[0]], losses[: bad[0]]
    return lrs, losses


def suggest(lrs, losses, num_it: int) -> dict[str, Suggestion | None]:
    """Every method's suggestion; None for all of them when the window has under two points (the
    loss diverged almost at once)."""
    window_lrs, window_losses = suggestion_window(lrs, losses, num_it)
    if len(window_losses) < 2:
        return {name: None for name in METHODS}
    return {name: method(window_lrs, window_losses) for name, method in METHODS.items()}
