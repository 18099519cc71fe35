"""Trial targets that tests run in spawn children.

They live in their own module because spawn re-imports a target by module path: pytest puts tests/
on sys.path (its default rootdir-less 'prepend' import mode), and the spawned child inherits the
parent's sys.path, so `probe_targets` imports there as it does here, without pulling in pytest
fixtures or the test module.
"""

import os
import signal
import time

import numpy
import torch

from ledger.probe.memory import PeakMemory
from ledger.probe.accumulation import Trial


def allocate(megabytes: int, *, k: int, micro_batch: int) -> Trial:
    meter = PeakMemory("cpu")
    meter.reset()
    array = numpy.ones(megabytes * 1_000_000, dtype=numpy.uint8)  # ones, not empty: touch every page
    peak_bytes = meter.read()
    del array
    return Trial(k=k, micro_batch=micro_batch, peak_bytes=peak_bytes, out_of_memory=False, seconds=0.0)


def raise_out_of_memory(*, k: int, micro_batch: int) -> Trial:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore detail")


def raise_value_error(*, k: int, micro_batch: int) -> Trial:
    raise ValueError("Expected more than 1 value per channel when training")


def kill_self(*, k: int, micro_batch: int) -> Trial:
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    raise AssertionError("unreachable")


def sleep(seconds: float, *, k: int, micro_batch: int) -> Trial:
    time.sleep(seconds)
    return Trial(k=k, micro_batch=micro_batch, peak_bytes=0, out_of_memory=False, seconds=0.0)


def write_pid_and_sleep(path: str, *, k: int, micro_batch: int) -> Trial:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
    return Trial(k=k, micro_batch=micro_batch, peak_bytes=0, out_of_memory=False, seconds=0.0)
