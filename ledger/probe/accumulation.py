"""Memory probe: the smallest gradient-accumulation factor whose training step fits a memory budget.

Measure instead of retry-until-it-fits: each factor k runs a few real steps in a fresh child process
that reports its peak memory, and a factor is chosen only if that peak fits under the budget less a
safety margin. The training step itself is injected (`run_trial`), so the search is tested without one.
"""

import dataclasses
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from ledger.errors import describe
from ledger.probe.memory import is_out_of_memory
from ledger.processes import die_with_parent, exit_reason
from ledger.units import format_size


@dataclass(frozen=True)
class Trial:
    """One measured attempt at accumulation factor k, i.e. micro-batches of `micro_batch` images."""

    k: int
    micro_batch: int
    peak_bytes: int | None  # None when the trial failed before it could measure
    out_of_memory: bool
    seconds: float  # the trial itself, in the child: model, data and steps
    error: str | None = None  # one line; also set for out-of-memory failures, to say which
    startup_seconds: float = 0.0  # starting the child process and importing, before the trial
    # CUDA only: the caching allocator's peaks and how often it freed its cache and retried
    allocated_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None
    alloc_retries: int | None = None
    # timings on the probing device, for ledger.probe.time_estimate
    step_seconds: float | None = None
    predict_seconds_per_image: float | None = None
    augmented_seconds_per_image: float | None = None

    def fits(self, limit_bytes: int) -> bool:
        return (
            not self.out_of_memory
            and self.error is None
            and self.peak_bytes is not None
            and self.peak_bytes <= limit_bytes
        )


@dataclass(frozen=True)
class SearchResult:
    trials: list[Trial]  # in the order they ran
    chosen_k: int | None  # None when nothing fits
    limit_bytes: int


def accum_factors(batch_size: int) -> list[int]:
    """1, 2, 4, ... below batch_size, then batch_size itself (micro-batches of one image): 48 -> [1, ..., 32, 48]."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    factors = []
    k = 1
    while k < batch_size:
        factors.append(k)
        k *= 2
    return factors + [batch_size]


def micro_batch_size(batch_size: int, k: int) -> int:
    """The largest micro-batch when batch_size images are split into k nearly equal chunks.

    Memory follows the largest chunk, so training must split the same way (e.g. torch.tensor_split
    into k chunks), not into chunks of batch_size // k plus a remainder.
    """
    if not 1 <= k <= batch_size:
        raise ValueError(f"accumulation factor must be between 1 and the batch size {batch_size}, got {k}")
    return -(-batch_size // k)


def usable_bytes(budget_bytes: int, margin: float) -> int:
    """The part of the budget a trial may use: the margin absorbs what a few probe steps do not show
    (fragmentation later in training, evaluation and TTA batches, other processes on the card)."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"safety margin must be in [0, 1), got {margin}")
    return int(budget_bytes * (1.0 - margin))


def search_accum(batch_size: int, run_trial: Callable[[int], Trial], limit_bytes: int) -> SearchResult:
    """Try k in accum_factors order and stop at the first that fits: the smallest k is the fastest.

    A trial that runs out of memory or fails does not fit, and the search goes on to the next k: a
    failure can be specific to one micro-batch size (BatchNorm cannot train on one image, for one).
    """
    trials = []
    for k in accum_factors(batch_size):
        trial = run_trial(k)
        trials.append(trial)
        if trial.fits(limit_bytes):
            return SearchResult(trials=trials, chosen_k=k, limit_bytes=limit_bytes)
    return SearchResult(trials=trials, chosen_k=None, limit_bytes=limit_bytes)


def nothing_fits_message(
    label: str, trials: list[Trial], budget_bytes: int, limit_bytes: int | None = None
) -> str:
    """One line a user can act on: 'convnext_large at 224: needs 17.2 GiB at k = 64, budget 16.0 GiB'.

    Pass limit_bytes (the budget less the margin) to have the message say so when it differs.
    """
    budget = f"budget {format_size(budget_bytes)}"
    if limit_bytes is not None and limit_bytes != budget_bytes:
        budget += f" ({format_size(limit_bytes)} usable after the safety margin)"
    if not trials:
        return f"{label}: no trials ran, {budget}"
    largest = max(trials, key=lambda trial: trial.k)
    if largest.out_of_memory:
        return f"{label}: out of memory even at k = {largest.k} (micro-batch {largest.micro_batch}), {budget}"
    failure = f"k = {largest.k} (micro-batch {largest.micro_batch}) failed: {largest.error}"
    measured = [trial for trial in trials if trial.error is None and trial.peak_bytes is not None]
    if not measured:
        return f"{label}: {failure}"
    smallest = min(measured, key=lambda trial: (trial.peak_bytes, -trial.k))
    message = f"{label}: needs {format_size(smallest.peak_bytes)} at k = {smallest.k}, {budget}"
    # A failure at the largest k can be specific to it (BatchNorm cannot train on one image): say both.
    return f"{message}; {failure}" if largest.error is not None else message


def run_in_child(
    target: Callable[..., Trial],
    /,
    *args,
    k: int,
    micro_batch: int,
    timeout: float | None = None,
    **kwargs,
) -> Trial:
    """Run target(*args, k=k, micro_batch=micro_batch, **kwargs) in a fresh child process.

    'spawn', not fork: the child starts from a clean interpreter, so CUDA state, allocator fragmentation
    and an out-of-memory in one trial cannot poison the next trial or the parent, and the peak it
    measures is its own. target must be a module-level function (spawn pickles it by module path; the
    child gets the parent's sys.path, so any module the parent could import works). k and micro_batch
    are named here because the parent must describe a child that dies without saying anything.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    kwargs = {**kwargs, "k": k, "micro_batch": micro_batch}
    # Not daemonic: a daemonic child may not start its own children (DataLoader workers).
    process = context.Process(target=_child_main, args=(sender, time.time(), target, args, kwargs, os.getpid()))
    started = time.perf_counter()
    process.start()
    sender.close()  # keep only the child's end open, so that its death reads as end-of-file here
    trial = None
    try:
        if not receiver.poll(timeout):  # True on a result and on the child's death (EOF)
            return _failed(k, micro_batch, started, error=f"timed out after {timeout:g} s")
        try:
            trial = receiver.recv()
        except EOFError:
            pass
        # Wait for the exit, not just the result: a CUDA child's memory is back on the card only then,
        # and the next trial must not start before. One that hangs while exiting is killed below.
        process.join(timeout=60)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
    if trial is not None:
        return trial
    # On Linux the OOM killer is what SIGKILLs a trial that nobody else would stop.
    return _failed(k, micro_batch, started, out_of_memory=process.exitcode == -signal.SIGKILL,
                   error=exit_reason("child", process.exitcode))


def _child_main(sender, parent_start_time: float, target: Callable[..., Trial], args: tuple, kwargs: dict,
                parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    # Unpickling target imported its module before this line ran, so the imports count as startup.
    # time.time() because perf_counter is not guaranteed to be comparable across processes.
    startup_seconds = time.time() - parent_start_time
    started = time.perf_counter()
    try:
        trial = target(*args, **kwargs)
        if not isinstance(trial, Trial):
            raise TypeError(f"{target.__name__} returned {type(trial).__name__}, not a Trial")
    except Exception as exc:  # the trial failed; the exception itself may not pickle, so send a line
        trial = Trial(
            k=kwargs["k"],
            micro_batch=kwargs["micro_batch"],
            peak_bytes=None,
            out_of_memory=is_out_of_memory(exc),
            seconds=0.0,
            error=describe(exc, where=True),
        )
    trial = dataclasses.replace(trial, seconds=time.perf_counter() - started, startup_seconds=startup_seconds)
    sender.send(trial)
    sender.close()


def _failed(k: int, micro_batch: int, started: float, out_of_memory: bool = False, error: str | None = None) -> Trial:
    return Trial(
        k=k, micro_batch=micro_batch, peak_bytes=None, out_of_memory=out_of_memory,
        seconds=time.perf_counter() - started, error=error,
    )
