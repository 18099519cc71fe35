"""A real memory probe on CPU: a tiny model trained in child processes, peaks read from the kernel."""

import numpy as np
import pytest
from conftest import TINY_CONVNEXT

from ledger.data.competition import load_competition
from ledger.data.images import load_images
from ledger.data.splits import smallest_class_indices
from ledger.probe.accumulation import micro_batch_size, run_in_child, search_accum
from ledger.probe.trial import TIMING_STEPS, training_trial
from ledger.spec.loader import DataSpec, ModelSpec

pytestmark = pytest.mark.slow  # trains or builds end to end: `make test-quick` leaves it out

BATCH = 32


@pytest.fixture(scope="module")
def measured(tiny_competition, tmp_path_factory):
    """Peak of the real training step at k = 1, 4 and 32 (micro-batches of 32, 8 and 1 images)."""
    competition = load_competition(DataSpec(root=tiny_competition, labels="train.csv"))
    paths = tuple(competition.train_paths[i] for i in smallest_class_indices(competition.train_labels))
    # Large images for a tiny model, so activations (which scale with the micro-batch) dominate.
    model = ModelSpec(name="m", arch="convnext_atto", size=(96, 96), model_kwargs=TINY_CONVNEXT, batch_size=BATCH)
    cache = tmp_path_factory.mktemp("cache")
    load_images(paths, model.item_size, model.resize, cache)
    trials = {}
    for k in (1, 4, BATCH):
        trials[k] = run_in_child(training_trial, model, paths, len(competition.vocab), 1, "cpu", str(cache),
                                 k=k, micro_batch=micro_batch_size(BATCH, k))
        assert trials[k].error is None, trials[k].error
    return trials


def test_peak_grows_with_the_micro_batch(measured):
    peaks = [measured[k].peak_bytes for k in (BATCH, 4, 1)]  # micro-batches 1, 8, 32
    assert peaks[0] < peaks[1] < peaks[2]
    # Not noise: 31 more images hold at least their float32 input tensors (a ratio of peaks would also
    # count the process's own memory, which varies with the machine and its load).
    assert peaks[2] - peaks[0] > (BATCH - 1) * 3 * 96 * 96 * 4
    assert all(measured[k].startup_seconds > 0 and measured[k].seconds > 0 for k in measured)


def test_a_smaller_budget_never_gives_a_smaller_k(measured):
    peaks = sorted(t.peak_bytes for t in measured.values())
    budgets = np.linspace(peaks[0] * 0.9, peaks[-1] * 1.1, 25).astype(int)
    chosen = []
    # Factors not measured borrow the nearest smaller measured k: its larger micro-batch over-states them.
    nearest = lambda k: measured[max(m for m in measured if m <= k)]  # noqa: E731
    for budget in budgets:  # growing budgets; the measured trials stand in for the child runs
        result = search_accum(BATCH, nearest, int(budget))
        chosen.append(result.chosen_k or BATCH + 1)  # nothing fits: worse than any k
    assert chosen == sorted(chosen, reverse=True)
    assert chosen[0] == BATCH + 1 and chosen[-1] == 1


def test_fit_the_range_test_and_the_probe_take_the_same_training_step(monkeypatch, tiny_competition, tmp_path):
    """One `train_step`, called by the `Learner` alone: counted there (not in step.py, which a loop of
    its own would call) in fit, in lr-find's range test and in the probe's trial (run here in-process),
    each step one effective batch of the run's size."""
    import torch

    from ledger.training import learner, lr_find, step
    from ledger.data.batches import Batches
    from ledger.training.device import Runtime, model_on_device, resolve_precision
    from ledger.training.loss import Criterion
    from ledger.training.lr_find import range_test
    from ledger.training.schedule import Phase
    from ledger.probe import trial as probe_trial

    calls = []
    original = step.train_step

    def counted(parts, images, *args):
        calls.append(len(images))
        return original(parts, images, *args)

    monkeypatch.setattr(learner, "train_step", counted)
    # Neither lr-find nor the probe holds a step of its own to call.
    assert not hasattr(lr_find, "train_step") and not hasattr(probe_trial, "train_step")
    model = ModelSpec(name="m", arch="convnext_atto", size=(32, 32), model_kwargs=TINY_CONVNEXT, batch_size=8)
    cpu = torch.device("cpu")
    net, transform = model_on_device(model, 3, cpu)
    runtime = Runtime(cpu, resolve_precision("fp32", cpu), 2, transform, torch.Generator().manual_seed(0))
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(16, dtype=np.int64) % 3
    batches = Batches(images, labels, np.arange(16), 8)
    learner.Learner(net, batches, runtime, Criterion(3)).fit([Phase("train", 1, 1e-3, 0.25, 25.0)])
    assert calls == [8, 8]
    range_test(net, batches, runtime, Criterion(3), step.StepSettings(), num_it=3, stop_div=False)
    assert calls == [8] * 5

    competition = load_competition(DataSpec(root=tiny_competition, labels="train.csv"))
    paths = tuple(competition.train_paths[i] for i in smallest_class_indices(competition.train_labels))
    load_images(paths, model.item_size, model.resize, tmp_path)
    trial = training_trial(model, paths, len(competition.vocab), 2, "cpu", str(tmp_path), k=4, micro_batch=2)
    # The trial takes at least TIMING_STEPS steps, so that its step time is a median, not one sample.
    assert trial.peak_bytes > 0 and calls == [8] * (5 + max(2, TIMING_STEPS))
