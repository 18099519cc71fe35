import numpy
import pytest
import torch

from ledger.probe.memory import PeakMemory, device_name, is_out_of_memory, release_memory
from ledger.units import format_size, parse_size

MB = 1_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GiB", 16 * 1024**3),
        ("15.9GB", 15_900_000_000),
        ("800MiB", 800 * 1024**2),
        ("512 MB", 512 * MB),
        ("1.5TiB", 1536 * 1024**3),
        ("1000", 1000),
        ("1000B", 1000),
        ("2kb", 2000),
        ("2KIB", 2048),
        (" 16 gib ", 16 * 1024**3),
        (".5GiB", 512 * 1024**2),
        (1000, 1000),  # YAML `budget: 1000` arrives as an int
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "16 GiBs", "16G", "-1GiB", "16 Gi B", "1e9", "sixteen", True, None, 1.5])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a memory size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (2048, "2.0 KiB"),
        (812 * 1024**2, "812.0 MiB"),
        (int(17.2 * 1024**3), "17.2 GiB"),
        (16 * 1024**3, "16.0 GiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_format_size(size, expected):
    assert format_size(size) == expected


def test_device_name_cpu():
    assert device_name(torch.device("cpu")).startswith("cpu: ")


def test_is_out_of_memory_by_type():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    # A message that merely looks like an OOM is not one: types, never text.
    assert not is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not is_out_of_memory(ValueError("x"))


def test_peak_memory_sees_allocation_after_reset_and_not_before():
    meter = PeakMemory("cpu")
    before = numpy.ones(100 * MB, dtype=numpy.uint8)  # ones, not empty: untouched pages are not resident
    del before  # large arrays are mmap'd, so freeing them returns the pages to the kernel
    meter.reset()
    assert meter.read() < 20 * MB  # the 100 MB peak came before reset()

    meter.reset()
    array = numpy.ones(100 * MB, dtype=numpy.uint8)
    peak = meter.read()
    del array
    assert 95 * MB <= peak <= 130 * MB
    # A peak, not the current size: freeing does not lower it (beyond the kernel's RSS bookkeeping
    # slack, which lags by a few hundred KB).
    assert meter.read() >= peak - 2 * MB


def test_peak_memory_rejects_unknown_device():
    with pytest.raises(ValueError, match="meta"):
        PeakMemory("meta")


def test_release_memory_lets_the_next_peak_count_reused_memory():
    def small_arrays():  # 100 MB in blocks below glibc's mmap threshold: they come from its heap
        return [numpy.ones(1000, dtype=numpy.uint8) for _ in range(100_000)]

    arrays = small_arrays()
    del arrays  # freed to glibc, which keeps the pages: a second round would not grow RSS at all
    release_memory()
    meter = PeakMemory("cpu")
    arrays = small_arrays()
    assert meter.read() >= 90 * MB
    del arrays


def test_a_cpu_meter_counts_from_a_given_baseline():
    """Runs of one entry share a process: the second counts from the resident size before the first,
    so memory the first left resident is still the second's, as in the probe's fresh child."""
    first = PeakMemory("cpu")
    if not first._uses_clear_refs:
        pytest.skip("no /proc/self/clear_refs here: the peak cannot be reset")
    kept = numpy.ones(64 * 2**20, dtype=numpy.uint8)  # 64 MiB made resident, then kept
    assert PeakMemory("cpu").read() < 16 * 2**20  # a fresh meter does not see it
    assert PeakMemory("cpu", baseline_bytes=first.baseline_bytes).read() >= 60 * 2**20
    del kept
