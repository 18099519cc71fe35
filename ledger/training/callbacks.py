"""The side concerns of a fit, as callbacks on the `Learner`: the `Callback` base class with every
hook a no-op, `StopFit` to end a fit early, and the two callbacks every run has besides its
checkpoint (`checkpoint.Checkpoint`): the progress display's adapter and the weight average.

A learner calls each hook of each callback in the order of its list, with itself as the argument:
the order is that list, read in the code that builds it, never a number. The lr-find's callback
lives in `lr_find.py`, the probe's step timer in `probe/trial.py`. Torch-free: the hooks name no
tensor type, and the average imports timm only when a fit starts.
"""

from __future__ import annotations

import time

from ledger.training.hooks import Progress


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
