"""What the training loop reports, and to whom: `EpochMetrics` (one epoch's figures) and `Progress`,
the base class of every listener (the command line's display, Ray's relay to the driver).

Every hook is declared here as a no-op, as Lightning's `Callback` declares its hooks, so a listener
overrides only what it draws and the loop calls each hook by name without asking first. Torch-free:
the command line imports this without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class EpochMetrics:
    phase: str  # "frozen" (fine-tune's head-only epochs) or "train"
    epoch: int  # counted from 1 over the whole run, as the console shows it
    train_loss: float
    valid_loss: float | None
    error_rate: float | None
    train_images: int
    train_seconds: float
    lr: float = 0.0  # the head's learning rate at the epoch's last step
    extra_error_rates: dict = field(default_factory=dict)  # extra target name -> its error rate
    metric: float | None = None  # the competition's metric (spec `metric:`) on the held-out images
    metric_name: str | None = None  # which metric that is

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def accuracy(self) -> float | None:
        return None if self.error_rate is None else 1.0 - self.error_rate


class Progress:
    """The loop's listener. Library code never prints: it calls these, and the command line draws."""

    def resumed(self, epochs: int) -> None:
        """The run goes on after `epochs` epochs restored from its checkpoint."""

    def start(self, phase: str, epoch: int, epochs: int, steps: int) -> None:
        """Epoch `epoch` (counted from 0) of `epochs` starts; it has `steps` optimizer steps."""

    def step(self, step: int, loss: float, images_per_s: float) -> None:
        """At most once a second: the steps done in this epoch, the last loss and the speed."""

    def end(self, metrics: EpochMetrics) -> None:
        """An epoch ended, validated."""

    def stage(self, name: str, done: int, total: int) -> None:
        """Any other long step of a run ("decoding train images", "validation", "tta test"): `done`
        of `total` units (images or batches)."""


SilentProgress = Progress  # the base class draws nothing


def stage_callback(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    """`progress.stage` bound to one stage name, as the (done, total) callback that load_images,
    predict and tta take."""
    if progress is None:
        return None
    return lambda done, total: progress.stage(name, done, total)
