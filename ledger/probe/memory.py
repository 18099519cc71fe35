"""Device facts and the peak-memory meter the probe trusts (sizes in text: ledger.units)."""

import ctypes
import gc
import os
import platform
import resource
import sys

import torch


def device_name(device: torch.device) -> str:
    """'cpu: AMD EPYC x2' or 'cuda: NVIDIA H100 80GB HBM3': what a measured peak was measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        # The affinity mask, not os.cpu_count(): containers often see all host cores but may use few.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"cpu: {processor_model()} x{cores}"
    return str(device)


def processor_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure, recognised by type, never by message text.

    torch.OutOfMemoryError is CUDA's (and other accelerators') typed error. On CPU, numpy and Python
    raise MemoryError. torch's own CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator:
    can't allocate memory"), which has no type to recognise, so it counts as an error: the trial still
    does not fit, it is only labelled differently. In practice a CPU process that overruns memory is
    SIGKILLed by the kernel's OOM killer instead, which the probe's child runner reports as out of memory.
    """
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError))


class PeakMemory:
    """Peak memory of this process since reset(), in bytes.

    CPU: peak resident memory above the resident memory at reset(), so that what the interpreter and
    its imports already hold is not charged to the trial. CUDA: the caching allocator's peak reserved
    memory plus the CUDA context, i.e. what the card loses to this process.
    """

    def __init__(self, device: torch.device | str = "cpu", baseline_bytes: int | None = None):
        """`baseline_bytes` (CPU): count from this resident size instead of the one at reset(), e.g.
        the size before the first of several runs that share one process and their images."""
        self.device = torch.device(device)
        self._given_baseline = baseline_bytes
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"no peak-memory meter for device type {self.device.type!r}")
        self._baseline_bytes = 0
        self._uses_clear_refs = False
        self._context_bytes_at_init = 0
        if self.device.type == "cuda":
            # mem_get_info creates the context if nothing has yet; what the card has lost beyond the
            # allocator's reservations is then the context (driver state, loaded kernels, cuBLAS/cuDNN
            # handles). It is device-wide: another process on the same card is counted too, and so is
            # a probing parent that itself touched CUDA; ledger's parent must not.
            torch.cuda.init()
            if self.device.index is None:  # pin "cuda" to a card, so reset() and read() see the same one
                self.device = torch.device("cuda", torch.cuda.current_device())
            self._context_bytes_at_init = _cuda_non_allocator_bytes(self.device)
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        # Freed but still resident heap pages (left by decoding, spec checks, an earlier run) would be
        # reused by the measured work without raising the resident size: hand them back first.
        release_memory()
        try:
            # Writing "5" resets this process's VmHWM (peak RSS) to its current RSS (Linux >= 4.0).
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self._uses_clear_refs = True
            self._baseline_bytes = _proc_status_bytes("VmRSS")
            if self._given_baseline is not None:
                self._baseline_bytes = min(self._baseline_bytes, self._given_baseline)
        except OSError:
            # Fallback (no /proc, or a sandbox forbids the write): ru_maxrss cannot be reset, it is the
            # peak over the whole process lifetime. We report how far it grows beyond its value now,
            # which undercounts whenever the process had already peaked higher. The probe runs each trial
            # in a fresh child process, where that lifetime is just the trial plus imports.
            self._uses_clear_refs = False
            self._baseline_bytes = _max_rss_bytes()

    @property
    def baseline_bytes(self) -> int:
        """The resident size (CPU) this meter counts from."""
        return self._baseline_bytes

    def read(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            # The context grows after init: lazily loaded kernel modules (CUDA_MODULE_LOADING=LAZY, the
            # default) and cuBLAS/cuDNN handles arrive with the first matmul and convolution. Measuring
            # it again now, after the work, counts them. The context does not shrink, so the larger
            # reading is the better one.
            context_bytes = max(self._context_bytes_at_init, _cuda_non_allocator_bytes(self.device))
            return torch.cuda.max_memory_reserved(self.device) + context_bytes
        peak_bytes = _proc_status_bytes("VmHWM") if self._uses_clear_refs else _max_rss_bytes()
        return max(0, peak_bytes - self._baseline_bytes)


def release_memory() -> None:
    """Hand freed memory back between runs in one process, so the next run's peak is its own.

    Without this a CPU run reuses the pages glibc kept from the last run without its RSS growing, and
    its peak reads too low; on CUDA the cached blocks would look like the next run's reservations.
    """
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed small blocks in its arenas
        except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
            pass


def _cuda_non_allocator_bytes(device: torch.device) -> int:
    """Device memory in use that PyTorch's caching allocator did not reserve: the context and handles."""
    free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    return max(0, total_bytes - free_bytes - torch.cuda.memory_reserved(device))


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel writes "VmHWM:   123456 kB"
    raise OSError(f"/proc/self/status has no {field}")


def _max_rss_bytes() -> int:
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss if sys.platform == "darwin" else max_rss * 1024  # macOS counts bytes, Linux KiB

