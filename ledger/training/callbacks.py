"""What a fit tells its listeners, and the side concerns that listen.

`EpochMetrics` (one epoch's figures) and `Progress`, the base class of every display (the command
line's, a worker's relay to the driver), every hook a no-op. Then the callbacks on the `Learner`:
the `Callback` base class with every hook a no-op, `StopFit` to end a fit early, and the two
callbacks every run has besides its checkpoint (`checkpoint.Checkpoint`): the progress display's
adapter and the weight average.

A learner calls each hook of each callback in the order of its list, with itself as the argument:
the order is that list, read in the code that builds it, never a number. The lr-find's callback
lives in `lr_find.py`, the probe's step timer in `probe/trial.py`. Torch-free: the command line
imports this without loading torch, and the average imports timm only when a fit starts.
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


class StopFit(Exception):
    """Raised by a callback to end the fit after the current step: the learner stops cleanly, calls
    `after_fit` and returns what was done (lr-find at divergence, the probe after its steps)."""


class Callback:
    """A side concern of the loop. Every hook is a no-op here, so a callback overrides only the
    moments it cares about, and the learner calls each hook by name without asking first.

    Each hook gets the `learner.Learner` (not imported here: it imports this module) and may read
    its state at that moment: `net`, `parts` (optimizer, scaler, steps taken), `average`,
    `history`, `phase`, `epoch` (from 1, over the whole fit), `epochs`, `step` (from 0, in the
    epoch), `loss` (the step's, on the device), `losses`, `seen`, `started`, `sync_due` and, after
    an epoch, `metrics`."""

    def before_fit(self, learner) -> None:
        """The fit starts: its optimizer exists, nothing is trained yet (a checkpoint restores here)."""

    def before_epoch(self, learner) -> None:
        """An epoch to train starts (epochs restored from a checkpoint are not started again)."""

    def before_step(self, learner) -> None:
        """The schedule has set this step's learning rate; the step has not run."""

    def after_step(self, learner) -> None:
        """The optimizer stepped; `learner.loss` is the batch's loss, still on the device."""

    def after_valid_batch(self, learner, done: int, total: int) -> None:
        """During the validation after an epoch: `done` of `total` batches of held-out images predicted."""

    def after_epoch(self, learner) -> None:
        """An epoch ended, validated: `learner.metrics` is its figures, already in `learner.history`."""

    def after_fit(self, learner) -> None:
        """The fit ended, every epoch done or a callback's StopFit."""


# The device is waited for at most this often: the display's figures need .item().
SYNC_INTERVAL_S = 1.0


class ProgressCallback(Callback):
    """The `Progress` listener of the command line (or a worker's relay) as a callback: `resumed`
    after the checkpoint restored, `start` and `end` of every epoch, `step` at most once a second
    (when the learner waits for the device anyway, `learner.sync_due`), and validation as a `stage`.
    List it after the checkpoint, whose restored epochs it reports."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def before_fit(self, learner) -> None:
        if learner.history:
            self.progress.resumed(len(learner.history))

    def before_epoch(self, learner) -> None:
        self.progress.start(learner.phase, learner.epoch - 1, learner.epochs, len(learner.batches))

    def after_step(self, learner) -> None:
        if learner.sync_due:
            elapsed = time.perf_counter() - learner.started
            self.progress.step(learner.step + 1, learner.loss.item(), learner.seen / elapsed if elapsed > 0 else 0.0)

    def after_valid_batch(self, learner, done: int, total: int) -> None:
        self.progress.stage("validation", done, total)

    def after_epoch(self, learner) -> None:
        self.progress.end(learner.metrics)


class WeightAverage(Callback):
    """timm's ModelEmaV3: an average of the weights, updated after every optimizer step, which
    validation, TTA, saved weights and the checkpoint use (`learner.average`).

    timm's warm-up: after optimizer step t the decay is min(decay, 1 - t^(-2/3)), 0 at step 1 (a
    copy), so the random start fades fast; it reaches 0.99 only after 1,000 steps. The learner puts
    it first in its list, so that every later callback (the checkpoint above all) sees it."""

    def __init__(self, decay: float):
        self.decay = decay

    def before_fit(self, learner) -> None:
        from timm.utils import ModelEmaV3

        # No device: the copy stays where the net is (naming `cuda` for a net on `cuda:0` would turn
        # off timm's one-kernel update as if the devices differed).
        learner.average = ModelEmaV3(learner.net, decay=self.decay, use_warmup=True)

    def after_step(self, learner) -> None:
        # Counted after the step, as timm's train.py passes `num_updates`: step 1 copies the weights.
        learner.average.update(learner.net, step=learner.parts.steps)
