"""What the training loop reports, and to whom: `EpochMetrics` (one epoch's figures) and `Progress`,
the base class of every listener (the command line's display, a worker's relay to the driver).

Every hook is declared here as a no-op, so a listener overrides only what it draws. The learner
reaches a listener through `callbacks.ProgressCallback`. Torch-free: the command line imports this
without loading torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol


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


class ExperimentEvents(Protocol):
    """An executor's listener: a run handed out (its `Progress` back) and a run ended (`progress.ConsoleEvents`)."""

    def run_started(self, index: int, total: int, plan: RunPlan) -> Progress: ...
    def run_finished(self, index: int, total: int, plan: RunPlan, result: RunResult) -> None: ...


SilentProgress = Progress  # the base class draws nothing


def stage_callback(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    """`progress.stage` bound to one stage name, as the (done, total) callback that load_images,
    predict and tta take."""
    if progress is None:
        return None
    return lambda done, total: progress.stage(name, done, total)


# Stage updates (decoding, validation, TTA) can come per batch: a few a second reach the driver.
_STAGE_INTERVAL_S = 0.25


class RelayProgress(Progress):
    """The `Progress` of a run in a worker process (a Ray task, or a `--jobs` process): each event goes
    to the driver's queue as (run id, method name, arguments), and the driver calls that method of
    the run's own progress (`dispatch.draw_events`).

    The loop itself reports steps once a second at most; stages are thinned here. Progress is
    never worth a run: if the queue is gone (its driver ended), the run goes on without it."""

    def __init__(self, queue, run_id: str):
        self.queue, self.run_id = queue, run_id
        self.stage_sent = 0.0

    def _send(self, name: str, *args) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait((self.run_id, name, args))
        except Exception:  # noqa: BLE001 - the queue died with the driver: train on, unseen
            self.queue = None

    def placed(self, host: str, pid: int, node: str) -> None:
        self._send("placed", host, pid, node)

    def resumed(self, epochs: int) -> None:
        self._send("resumed", epochs)

    def start(self, phase: str, epoch: int, epochs: int, steps: int) -> None:
        self._send("start", phase, epoch, epochs, steps)

    def step(self, step: int, loss: float, images_per_s: float) -> None:
        self._send("step", step, loss, images_per_s)

    def stage(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self.stage_sent >= _STAGE_INTERVAL_S:
            self.stage_sent = now
            self._send("stage", name, done, total)

    def end(self, metrics) -> None:
        self._send("end", metrics)
