"""The accumulation-factor search, tested as accelerate tests its batch-size finder: with fake trials
and an assertion on the exact sequence tried. run_in_child is tested with real spawn children."""

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import probe_targets  # importable here and in spawn children: see its docstring
from ledger.probe.accumulation import (
    _child_main,
    Trial,
    accum_factors,
    micro_batch_size,
    nothing_fits_message,
    run_in_child,
    search_accum,
    usable_bytes,
)

GiB = 1024**3
MB = 1_000_000


@pytest.mark.parametrize(
    ("batch_size", "expected"),
    [(64, [1, 2, 4, 8, 16, 32, 64]), (48, [1, 2, 4, 8, 16, 32, 48]), (1, [1]), (2, [1, 2]), (3, [1, 2, 3])],
)
def test_accum_factors(batch_size, expected):
    assert accum_factors(batch_size) == expected


@pytest.mark.parametrize(("batch_size", "k", "expected"), [(64, 1, 64), (64, 8, 8), (48, 32, 2), (10, 4, 3), (1, 1, 1)])
def test_micro_batch_size_is_the_largest_chunk(batch_size, k, expected):
    assert micro_batch_size(batch_size, k) == expected


def test_bad_factors_and_margins_are_rejected():
    with pytest.raises(ValueError):
        accum_factors(0)
    with pytest.raises(ValueError):
        micro_batch_size(8, 16)
    with pytest.raises(ValueError):
        usable_bytes(1000, 1.0)
    assert usable_bytes(1000, 0.1) == 900
    assert usable_bytes(1000, 0.0) == 1000


class FakeTrials:
    """A fake memory model, peak = base + per_image * micro_batch, that records every k it is asked for."""

    def __init__(self, batch_size, base=100, per_image=10, out_of_memory_above=None):
        self.batch_size = batch_size
        self.base = base
        self.per_image = per_image
        self.out_of_memory_above = out_of_memory_above  # micro-batches larger than this raise OOM
        self.tried = []

    def __call__(self, k):
        self.tried.append(k)
        micro_batch = micro_batch_size(self.batch_size, k)
        if self.out_of_memory_above is not None and micro_batch > self.out_of_memory_above:
            return Trial(k=k, micro_batch=micro_batch, peak_bytes=None, out_of_memory=True, seconds=0.1, error="OOM")
        peak = self.base + self.per_image * micro_batch
        return Trial(k=k, micro_batch=micro_batch, peak_bytes=peak, out_of_memory=False, seconds=0.1)


def test_search_stops_at_the_first_k_that_fits():
    # peaks for k = 1, 2, 4, 8: 740, 420, 260, 180
    fake = FakeTrials(64)
    result = search_accum(64, fake, limit_bytes=200)
    assert fake.tried == [1, 2, 4, 8]
    assert [trial.k for trial in result.trials] == [1, 2, 4, 8]
    assert result.chosen_k == 8
    assert result.limit_bytes == 200


def test_search_keeps_the_safety_margin():
    fake = FakeTrials(64)
    budget = 260  # k = 4 peaks at exactly 260: fits the raw budget ...
    limit = usable_bytes(budget, margin=0.1)  # ... but not the 234 bytes left after a 10% margin
    result = search_accum(64, fake, limit_bytes=limit)
    assert fake.tried == [1, 2, 4, 8]
    assert result.trials[2].fits(budget) and not result.trials[2].fits(limit)
    assert result.chosen_k == 8


def test_out_of_memory_does_not_fit_and_the_search_goes_on():
    fake = FakeTrials(64, out_of_memory_above=32)  # k = 1 (micro-batch 64) runs out of memory
    result = search_accum(64, fake, limit_bytes=10_000)
    assert fake.tried == [1, 2]
    assert result.trials[0].out_of_memory and not result.trials[0].fits(10_000)
    assert result.chosen_k == 2


def test_a_failed_trial_does_not_fit_even_under_the_limit():
    trial = Trial(k=1, micro_batch=8, peak_bytes=10, out_of_memory=False, seconds=0.1, error="ValueError: x")
    assert not trial.fits(1000)
    assert not Trial(k=1, micro_batch=8, peak_bytes=None, out_of_memory=False, seconds=0.1).fits(1000)


def test_nothing_fits():
    # 17 GiB for the model and optimizer, 0.2 GiB per image: 17.2 GiB even at micro-batch 1
    fake = FakeTrials(64, base=17 * GiB, per_image=GiB // 5)
    result = search_accum(64, fake, limit_bytes=16 * GiB)
    assert fake.tried == [1, 2, 4, 8, 16, 32, 64]
    assert result.chosen_k is None
    assert (
        nothing_fits_message("convnext_large at 224", result.trials, 16 * GiB)
        == "convnext_large at 224: needs 17.2 GiB at k = 64, budget 16.0 GiB"
    )
    assert nothing_fits_message("convnext_large at 224", result.trials, 16 * GiB, usable_bytes(16 * GiB, 0.1)) == (
        "convnext_large at 224: needs 17.2 GiB at k = 64, budget 16.0 GiB (14.4 GiB usable after the safety margin)"
    )


def test_nothing_fits_because_even_the_largest_k_runs_out_of_memory():
    fake = FakeTrials(64, out_of_memory_above=0)
    result = search_accum(64, fake, limit_bytes=16 * GiB)
    assert result.chosen_k is None
    assert nothing_fits_message("vit_large at 384", result.trials, 16 * GiB) == (
        "vit_large at 384: out of memory even at k = 64 (micro-batch 1), budget 16.0 GiB"
    )


def test_nothing_fits_message_names_a_failure_at_the_largest_k():
    trials = [
        Trial(k=1, micro_batch=2, peak_bytes=20 * GiB, out_of_memory=False, seconds=1.0),
        Trial(k=2, micro_batch=1, peak_bytes=None, out_of_memory=False, seconds=1.0, error="ValueError: one image"),
    ]
    assert nothing_fits_message("resnet at 64", trials, 16 * GiB) == (
        "resnet at 64: needs 20.0 GiB at k = 1, budget 16.0 GiB; k = 2 (micro-batch 1) failed: ValueError: one image"
    )
    assert nothing_fits_message("resnet at 64", trials[1:], 16 * GiB) == (
        "resnet at 64: k = 2 (micro-batch 1) failed: ValueError: one image"
    )


# --- run_in_child: real spawn children. Each imports torch (3 to 4 s here on 2 CPU cores), so they
# run two at a time, once for the whole module, and the tests below read their results.

CHILD_CALLS = {
    "timeout": (probe_targets.sleep, (60,), {"timeout": 1.0}),
    "allocate_50": (probe_targets.allocate, (50,), {}),
    "allocate_200": (probe_targets.allocate, (200,), {}),
    "out_of_memory": (probe_targets.raise_out_of_memory, (), {}),
    "sigkill": (probe_targets.kill_self, (), {}),
}


@pytest.fixture(scope="module")
def child_trials():
    def run(name):
        target, args, kwargs = CHILD_CALLS[name]
        started = time.perf_counter()
        trial = run_in_child(target, *args, k=4, micro_batch=16, **kwargs)
        return trial, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=2) as pool:  # more than the cores only slows each import
        return dict(zip(CHILD_CALLS, pool.map(run, CHILD_CALLS)))


@pytest.mark.slow
def test_child_reports_a_peak_that_grows_with_the_allocation(child_trials):
    small, _ = child_trials["allocate_50"]
    large, _ = child_trials["allocate_200"]
    assert small.error is None and large.error is None
    assert (small.k, small.micro_batch) == (4, 16)
    assert small.peak_bytes >= 50 * MB
    assert large.peak_bytes - small.peak_bytes == pytest.approx(150 * MB, rel=0.2)
    # process start and `import torch` are reported apart from the trial itself
    assert small.startup_seconds > small.seconds > 0


def test_child_out_of_memory_error_comes_back_typed(child_trials):
    trial, _ = child_trials["out_of_memory"]
    assert trial.out_of_memory and not trial.fits(10**15)
    assert (trial.k, trial.micro_batch, trial.peak_bytes) == (4, 16, None)
    assert trial.error.startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert "\n" not in trial.error and "probe_targets.py:" in trial.error


def test_child_killed_by_sigkill_is_out_of_memory(child_trials):
    trial, _ = child_trials["sigkill"]
    assert trial.out_of_memory and trial.peak_bytes is None
    assert (trial.k, trial.micro_batch) == (4, 16)


def test_child_past_its_timeout_is_killed(child_trials):
    trial, elapsed = child_trials["timeout"]
    assert trial.error == "timed out after 1 s" and not trial.out_of_memory
    assert elapsed < 10


def test_child_side_turns_other_errors_into_one_line():
    # The child's half of run_in_child, run in this process: a real child costs an `import torch`.
    receiver, sender = multiprocessing.Pipe(duplex=False)
    _child_main(sender, time.time(), probe_targets.raise_value_error, (), {"k": 2, "micro_batch": 32})
    trial = receiver.recv()
    assert (trial.k, trial.micro_batch, trial.out_of_memory, trial.peak_bytes) == (2, 32, False, None)
    assert trial.error.startswith("ValueError: Expected more than 1 value per channel when training (")


@pytest.mark.slow
def test_a_trial_child_dies_with_its_killed_parent(tmp_path):
    # kill -9 of `ledger probe-memory` runs no cleanup in the parent; the trial child must not live on.
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    pid_file = tmp_path / "child.pid"
    tests = Path(__file__).parent
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys; sys.path.insert(0, sys.argv[1]); import probe_targets; "
                               "from ledger.probe.accumulation import run_in_child; "
                               "run_in_child(probe_targets.write_pid_and_sleep, sys.argv[2], k=1, micro_batch=1)",
                               str(tests), str(pid_file)])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split()[2] == "Z":  # a zombie waiting for init to reap it: dead already
                break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the trial child outlived its parent")


def test_the_step_timer_gives_the_median_step_after_the_first():
    from ledger.probe.trial import StepTimer
    from ledger.training.callbacks import StopFit

    timed = StepTimer(3)
    loss = type("Loss", (), {"item": lambda self: 0.5})()
    learner = type("Learner", (), {"loss": loss})()
    for step in range(3):  # a time at each step's start, and one when the device finished the last
        timed.before_step(learner)
        if step < 2:
            timed.after_step(learner)
    with pytest.raises(StopFit):
        timed.after_step(learner)  # its third step: the fit stops there
    assert len(timed.times) == 4 and timed.times == sorted(timed.times)
    timed.times = [10.0, 12.0, 12.5, 13.5]  # steps of 2.0 (warm-up), 0.5 and 1.0 seconds
    assert timed.step_seconds() == pytest.approx(0.75)
    timed.times = [10.0, 12.0, 12.5, 13.5, 13.9]  # then 0.5, 1.0 and 0.4: the median, 0.5, not the mean
    assert timed.step_seconds() == pytest.approx(0.5)
    timed.times = [10.0, 12.0]  # a single step: its own time, warm-up and all
    assert timed.step_seconds() == pytest.approx(2.0)
    timed.times = []
    assert timed.step_seconds() is None
