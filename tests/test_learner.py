"""The fit object's shape: callbacks with no-op hooks called in the order of their list, StopFit, and
the progress display and checkpoint as callbacks, on CPU with a tiny linear net."""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ledger.data.batches import Batches
from ledger.training.callbacks import Callback, ProgressCallback, StopFit
from ledger.training.checkpoint import Checkpoint
from ledger.training.device import Runtime, resolve_precision
from ledger.training.callbacks import Progress
from ledger.training.learner import Learner
from ledger.training.loss import Criterion
from ledger.training.schedule import Phase
from ledger.training.step import StepSettings

CPU = torch.device("cpu")
HOOKS = ("before_fit", "before_epoch", "before_step", "after_step", "after_valid_batch", "after_epoch", "after_fit")


def _learner(callbacks, valid=True, settings=StepSettings()):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 3, 4, 4), dtype=np.uint8), rng.integers(0, 3, 40).astype(np.int64)
    as_float = lambda x, generator=None: x.float() / 255  # noqa: E731
    transform = SimpleNamespace(random=as_float, plain=as_float, erase=lambda x, generator=None: x)
    runtime = Runtime(CPU, resolve_precision("fp32", CPU), 1, transform, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    batches = Batches(images, labels, np.arange(32), 8, shuffle=True, seed=0)  # 4 steps an epoch
    held_out = Batches(images, labels, np.arange(32, 40), 4) if valid else None
    return Learner(net, batches, runtime, Criterion(3), settings, valid=held_out, callbacks=callbacks)


PHASES = [Phase("train", 2, 1e-2, 0.25, 25.0)]


class Spy:
    """Not a Callback: answers every attribute, so it sees each hook the learner calls."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda learner, *args: self.calls.append(name)


def test_the_base_class_declares_every_hook_the_learner_calls_as_a_no_op():
    spy = Spy()
    _learner([spy]).fit(PHASES)
    assert set(spy.calls) == set(HOOKS)  # a fit with validation calls every hook
    declared = {name for name, value in vars(Callback).items() if inspect.isfunction(value)}
    assert declared == set(HOOKS)
    for name in HOOKS:  # each a no-op: a docstring and nothing else
        source = inspect.getsource(getattr(Callback, name))
        assert source.rstrip().endswith('"""') and "return" not in source.split('"""')[-1], name
    # A bare Callback in the list changes nothing: the same weights as a fit without it.
    plain, with_base = _learner([]).fit(PHASES).net, _learner([Callback()]).fit(PHASES).net
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), with_base.state_dict().values()))


def test_hooks_come_in_the_loops_order_and_callbacks_in_the_lists():
    order = []

    class Named(Callback):
        def __init__(self, name):
            self.name = name

        def __getattribute__(self, hook):
            if hook in HOOKS:
                return lambda learner, *args: order.append((hook, object.__getattribute__(self, "name")))
            return object.__getattribute__(self, hook)

    _learner([Named("a"), Named("b")], valid=False).fit([Phase("train", 1, 1e-2, 0.25, 25.0)])
    step = ["before_step", "after_step"]
    expected = ["before_fit", "before_epoch", *step * 4, "after_epoch", "after_fit"]
    assert order == [(hook, name) for hook in expected for name in "ab"]


def test_stop_fit_from_a_callback_ends_the_fit_cleanly_after_that_step():
    ended = []

    class StopAtStep(Callback):
        def after_step(self, learner):
            if learner.epoch == 2 and learner.step == 2:
                raise StopFit

        def after_fit(self, learner):
            ended.append(learner.parts.steps)

    fitted = _learner([StopAtStep()]).fit(PHASES)
    assert [m.epoch for m in fitted.history] == [1]  # the stopped epoch is neither validated nor kept
    assert ended == [4 + 3]  # after_fit still ran, after the step that stopped
    assert fitted.resumed_epochs == 0 and fitted.net is not None


class Events(Progress):
    def __init__(self):
        self.events = []

    def resumed(self, epochs):
        self.events.append(("resumed", epochs))

    def start(self, phase, epoch, epochs, steps):
        self.events.append(("start", epoch, epochs, steps))

    def step(self, step, loss, images_per_s):
        self.events.append(("step", step))

    def end(self, metrics):
        self.events.append(("end", metrics.epoch))

    def stage(self, name, done, total):
        self.events.append(("stage", name, done, total))


def test_the_progress_callback_reports_resumed_epochs_after_the_checkpoint_restored(tmp_path):
    class Kill(Callback):
        def after_epoch(self, learner):
            if learner.epoch == 2:
                raise KeyboardInterrupt

    phases = [Phase("train", 3, 1e-2, 0.25, 25.0)]
    first = Events()
    with pytest.raises(KeyboardInterrupt):
        _learner([Checkpoint(tmp_path), ProgressCallback(first), Kill()]).fit(phases)
    # A fast epoch: step events at its first and last steps only (at most once a second).
    assert first.events[:4] == [("start", 0, 3, 4), ("step", 1), ("step", 4), ("stage", "validation", 1, 2)]
    assert first.events[-1] == ("end", 2)
    resumed = Events()
    fitted = _learner([Checkpoint(tmp_path), ProgressCallback(resumed)]).fit(phases)
    assert fitted.resumed_epochs == 2 and [m.epoch for m in fitted.history] == [1, 2, 3]
    assert resumed.events[:2] == [("resumed", 2), ("start", 2, 3, 4)]
    assert resumed.events[-1] == ("end", 3)


def test_the_weight_average_is_the_first_callback_and_the_checkpoint_holds_it(tmp_path):
    learner = _learner([Checkpoint(tmp_path)], settings=StepSettings(ema=0.9))
    assert [type(c).__name__ for c in learner.callbacks] == ["WeightAverage", "Checkpoint"]
    fitted = learner.fit([Phase("train", 1, 1e-2, 0.25, 25.0)])
    assert fitted.net is learner.average.module
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["ema"]
    assert all(torch.equal(saved[k], v) for k, v in learner.average.state_dict().items())


def test_a_nan_loss_fails_fit_but_not_fit_epochs_whose_callbacks_judge_it():
    from ledger.training.learner import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match="epoch 1, step 2"):  # lr NaN: every loss after the first step
        _learner([]).fit([Phase("train", 1, float("nan"), 0.25, 25.0)])
    losses = []

    class Record(Callback):
        def after_step(self, learner):
            losses.append(learner.loss.item())

    learner = _learner([Record()], valid=False)
    for group in learner.parts.optimizer.param_groups:
        group["lr"] = float("nan")
    fitted = learner.fit_epochs(2)  # lr-find records divergence; the probe measures whatever the loss
    assert len(fitted.history) == 2 and len(losses) == 8 and np.isnan(losses[1:]).all()
