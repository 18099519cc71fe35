"""fastai's training recipe as pure functions: `fine_tune`'s phases, `Learner.lr_range`, and the
one-cycle schedule of learning rate and momentum.

Every value is a function of the step index alone, so a checkpoint needs only the step count to
resume the schedule exactly. Formulas follow fastai (callback/schedule.py, learner.py,
torch_core.py); the tests check them against numbers worked out by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from ledger.spec.loader import ModelSpec

# A learning rate as fastai takes it: one float for every layer group, or slice(start, stop) as a
# (start, stop) pair (a `slice` object works too); start None means "stop/10 for all but the head".
LearningRate = Union[float, tuple, slice]

MOMENTUMS = (0.95, 0.85, 0.95)  # fastai's Learner default `moms`: beta1 dips while the lr peaks


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """n numbers from start to stop, evenly spaced on a log scale (n=1: just stop)."""
    if n == 1:
        return [float(stop)]
    step = (stop / start) ** (1 / (n - 1))
    return [start * step**i for i in range(n)]


def lr_range(lr: LearningRate, n_groups: int) -> list[float]:
    """One learning rate per layer group, as fastai's `Learner.lr_range`."""
    if isinstance(lr, (int, float)):
        return [float(lr)] * n_groups
    start, stop = (lr.start, lr.stop) if isinstance(lr, slice) else lr
    # fastai tests `if lr.start:`, so a start of 0 means the same as None.
    if start:
        return even_mults(start, stop, n_groups)
    return [stop / 10] * (n_groups - 1) + [float(stop)]


@dataclass(frozen=True)
class Phase:
    """One `fit_one_cycle` call: `frozen` trains the head (and the body's norm layers) only."""

    name: str  # 'frozen' | 'train'
    epochs: int
    lr: LearningRate
    pct_start: float
    div: float
    div_final: float = 1e5
    frozen: bool = False


def fit_phases(model: ModelSpec) -> list[Phase]:
    """fastai's `fine_tune(epochs, base_lr=lr, freeze_epochs, lr_mult=100, pct_start=0.3, div=5)`
    when fine-tuning, else one `fit_one_cycle(epochs, lr)` with its defaults (right for random
    weights). Phases of zero epochs are left out: fastai's fit of 0 epochs does nothing."""
    if not model.finetune:
        phases = [Phase("train", model.epochs, model.lr, pct_start=0.25, div=25.0)]
    else:
        base_lr = model.lr / 2  # fine_tune halves base_lr after the frozen phase
        phases = [
            Phase("frozen", model.freeze_epochs, (None, model.lr), pct_start=0.99, div=25.0, frozen=True),
            Phase("train", model.epochs, (base_lr / 100, base_lr), pct_start=0.3, div=5.0),
        ]
    return [phase for phase in phases if phase.epochs > 0]


def _cos(start: float, end: float, pos: float) -> float:
    """fastai's SchedCos: half a cosine from start (pos 0) to end (pos 1)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def _two_cosines(pos: float, pct_start: float, start: float, middle: float, end: float) -> float:
    """fastai's combined_cos: start -> middle over pct_start, then middle -> end."""
    if pos >= 1:
        return end  # combine_scheds returns the last schedule at 1.0 once pos reaches 1
    if pos < pct_start:
        return _cos(start, middle, pos / pct_start)
    return _cos(middle, end, (pos - pct_start) / (1 - pct_start))


def one_cycle(pos: float, lr_max: float, pct_start: float, div: float, div_final: float = 1e5) -> float:
    """The learning rate at `pos` (fraction of the phase's steps done): lr_max/div up to lr_max,
    then down to lr_max/div_final."""
    return _two_cosines(pos, pct_start, lr_max / div, lr_max, lr_max / div_final)


def cycle_momentum(pos: float, pct_start: float, moms: tuple[float, float, float] = MOMENTUMS) -> float:
    return _two_cosines(pos, pct_start, *moms)


class OneCycle:
    """Sets every param group's lr and momentum for a step of one phase.

    Each torch param group may carry "layer_group" (the fastai layer group it belongs to, as
    `models.parameter_groups` tags them); the phase's lr is spread over the layer groups with
    `lr_range`. A group without the tag counts as the last layer group (the head). Momentum is
    Adam's beta1, or SGD's `momentum`.
    """

    def __init__(self, optimizer, phase: Phase, total_steps: int, n_groups: int | None = None):
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        self.optimizer, self.phase, self.total_steps = optimizer, phase, total_steps
        if n_groups is None:
            # fastai keeps the frozen body's group in the optimizer, so a head-only optimizer
            # still spreads the lr over both groups: take the count from the highest tag seen.
            n_groups = 1 + max((g.get("layer_group", 0) for g in optimizer.param_groups), default=0)
        self.lr_max = lr_range(phase.lr, n_groups)

    def _layer_group(self, group: dict) -> int:
        return group.get("layer_group", len(self.lr_max) - 1)

    def lrs(self, step: int) -> list[float]:
        """The lr of each layer group at `step`, without touching the optimizer."""
        pos = step / self.total_steps  # fastai: train_iter / n_iter, read before the step
        phase = self.phase
        return [one_cycle(pos, lr, phase.pct_start, phase.div, phase.div_final) for lr in self.lr_max]

    def apply(self, step: int) -> None:
        lrs = self.lrs(step)
        momentum = cycle_momentum(step / self.total_steps, self.phase.pct_start)
        for group in self.optimizer.param_groups:
            group["lr"] = lrs[self._layer_group(group)]
            if "betas" in group:
                group["betas"] = (momentum, *group["betas"][1:])
            elif "momentum" in group:
                group["momentum"] = momentum
