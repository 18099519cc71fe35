"""Where a run computes: the device (checked from the command line's name), the precision it runs
at, and the network set up on it with the batch transform that feeds it."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ledger.data.augment import BatchTransform
from ledger.errors import LedgerError, SpecError
from ledger.training.models import create_model
from ledger.probe.targets import precision_for


@dataclass(frozen=True)
class Precision:
    name: str  # what actually runs: fp32, bf16 or fp16
    dtype: torch.dtype | None  # autocast dtype, None for float32
    scaled: bool  # fp16 needs a gradient scaler; bf16 does not

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """auto: as `targets.precision_for` decides it from the card's compute capability (bf16 from
    Ampere on, else fp16 with a scaler), the one rule the probe's target and training share; float32
    on CPU."""
    if device.type == "cuda":
        precision = precision_for(precision, torch.cuda.get_device_capability(device))
    elif precision == "auto":
        precision = "fp32"
    elif precision == "fp16":
        raise SpecError("train.precision: fp16 needs a CUDA device (use auto, fp32 or bf16 on CPU)")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Precision(precision, dtype, scaled=precision == "fp16")


def parse_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:1`: checked here, so a typo or a missing GPU is one clear line."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LedgerError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise LedgerError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if device.type == "cpu" and device.index not in (None, 0):  # torch accepts it, then fails deep in a run
        raise LedgerError(f"--device {name}: the CPU has no numbered devices; use cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LedgerError(f"--device {name}: no CUDA device on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LedgerError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def threads_per_job(jobs: int) -> int:
    """The CPU threads each of `jobs` runs side by side gets (`train --jobs`): torch's own default
    (the cores it may use) shared out."""
    return max(1, torch.get_num_threads() // jobs)


def model_on_device(model, num_classes: int, device: torch.device) -> tuple[nn.Module, BatchTransform]:
    """The spec entry's network on the training device, channels_last, and its batch transform
    (normalised as the network's pretrained config says, and giving batches in the same layout):
    one set-up for runs, probe trials, lr_find and predict alike.

    channels_last on every device: CUDA's tensor cores want NHWC, and on a CPU oneDNN's NHWC
    convolutions are faster for convolutional networks and no slower for the others (measured by
    bench/bench_layout.py; docs/benchmarks.md)."""
    import timm

    net = create_model(model, num_classes).to(device).to(memory_format=torch.channels_last)
    config = timm.data.resolve_model_data_config(net)
    return net, BatchTransform(model.size, config["mean"], config["std"], augment=model.augment,
                               memory_format=torch.channels_last)


@dataclass(frozen=True)
class Runtime:
    """Where and how a run's networks compute, the same for training, validation and TTA."""

    device: torch.device
    precision: Precision
    accum: int  # micro-batches per optimizer step
    transform: BatchTransform
    generator: torch.Generator  # augmentation's random numbers (drawn on the CPU)

    def augmented(self, images: torch.Tensor) -> torch.Tensor:
        """A batch through the training augmentation, in the network's layout (TTA's passes)."""
        return self.transform.random(images, self.generator)

    def training_batch(self, images: torch.Tensor) -> torch.Tensor:
        """`augmented`, then random erasing, which only training does."""
        return self.transform.erase(self.augmented(images), self.generator)


def library_versions() -> dict[str, str]:
    """The versions of torch and timm here: a run records those that trained it, a bundle compares."""
    import timm
    import torch

    return {"torch": str(torch.__version__), "timm": str(timm.__version__)}  # TorchVersion is a str subclass
