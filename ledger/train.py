"""The training loop (exact gradient accumulation, autocast, one-cycle, fine-tune) and TTA.

`fit_one_cycle` is the whole loop, top to bottom. Side concerns (progress display) are objects it
calls by name; it knows nothing of ledger rows or artifact files.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ledger.augment import BatchTransform
from ledger.errors import SpecError
from ledger.models import create_model, freeze_body, parameter_groups


# ---------------------------------------------------------------- batches


class Batches:
    """uint8 image batches from an in-memory (or memory-mapped) (N, 3, H, W) array.

    Shuffled anew each epoch from a seeded generator, so a run is reproducible from its seed."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, batch_size: int,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0):
        self.images, self.labels, self.indices = images, labels, np.asarray(indices)
        self.batch_size, self.shuffle, self.rng = batch_size, shuffle, np.random.default_rng(seed)
        # Dropping a short last batch only makes sense when there is more than one batch.
        self.drop_last = drop_last and len(self.indices) > batch_size

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order = self.rng.permutation(self.indices) if self.shuffle else self.indices
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chunk = order[start : start + self.batch_size]
            # Sorted reads are sequential in a memory-mapped cache; the batch order stays random.
            rows = np.sort(chunk) if self.shuffle else chunk
            images = torch.from_numpy(np.ascontiguousarray(self.images[rows]))
            labels = None if self.labels is None else torch.from_numpy(self.labels[rows])
            yield images, labels


# ---------------------------------------------------------------- precision


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
    """auto: bf16 on CUDA cards that support it, else fp16 with a scaler; float32 on CPU."""
    if device.type == "cuda":
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif precision == "auto":
        precision = "fp32"
    elif precision == "fp16":
        raise SpecError("train.precision: fp16 needs a CUDA device (use auto, fp32 or bf16 on CPU)")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Precision(precision, dtype, scaled=precision == "fp16")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_on_device(model, num_classes: int, device: torch.device) -> tuple[nn.Module, BatchTransform]:
    """The spec's model on the training device (channels_last on CUDA) and its batch transform,
    normalised as the model's pretrained config says: one set-up for runs and probe trials alike."""
    import timm

    net = create_model(model, num_classes).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    config = timm.data.resolve_model_data_config(net)
    return net, BatchTransform(model.size, config["mean"], config["std"])


# ---------------------------------------------------------------- progress


class Progress(Protocol):
    def start(self, phase: str, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, loss: float, images_per_s: float) -> None: ...
    def end(self, metrics: "EpochMetrics") -> None: ...


class SilentProgress:
    def start(self, phase, epoch, epochs, steps): pass
    def step(self, step, loss, images_per_s): pass
    def end(self, metrics): pass


@dataclass(frozen=True)
class EpochMetrics:
    phase: str  # "frozen" (fine-tune's head-only epochs) or "train"
    epoch: int
    train_loss: float
    valid_loss: float | None
    error_rate: float | None
    train_images: int
    train_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0


# ---------------------------------------------------------------- the loop


def accumulate_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, accum: int,
                         prepare: Callable[[torch.Tensor], torch.Tensor], precision: Precision,
                         scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Forward and backward one effective batch as `accum` micro-batches.

    Each micro-batch's mean loss is weighted by its share of the batch, so the summed gradients are
    exactly the full batch's mean-loss gradients, even when the chunks differ in size. Returns the
    full-batch loss, detached and unscaled (never the per-chunk scaled value)."""
    total = len(images)
    batch_loss = torch.zeros((), device=images.device)
    for micro_images, micro_targets in zip(images.tensor_split(accum), targets.tensor_split(accum)):
        if len(micro_images) == 0:
            continue
        x = prepare(micro_images)
        with precision.autocast(x.device):
            logits = model(x)
        # Loss in float32: under fp16 autocast a low-precision reduction loses small losses.
        loss = F.cross_entropy(logits.float(), micro_targets) * (len(micro_images) / total)
        scaler.scale(loss).backward()
        batch_loss += loss.detach()
    return batch_loss


def fit_one_cycle(model: nn.Module, groups: list[dict], batches: Iterable, epochs: int, accum: int,
                  transform: BatchTransform, device: torch.device, precision: Precision,
                  weight_decay: float = 0.01, pct_start: float = 0.25, phase: str = "train",
                  valid: Batches | None = None, progress: Progress | None = None,
                  generator: torch.Generator | None = None, max_steps: int | None = None) -> list[EpochMetrics]:
    """AdamW with a one-cycle schedule; the optimizer and schedule step once per effective batch."""
    progress = progress or SilentProgress()
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    steps_per_epoch = len(batches) if max_steps is None else min(len(batches), max_steps)
    total_steps = max(1, epochs * steps_per_epoch)
    if abs(pct_start * total_steps - 1) < 1e-9:
        pct_start *= 1.001  # OneCycleLR divides by zero when the warm-up is exactly one step
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=pct_start
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)  # a disabled scaler is a no-op
    channels_last = device.type == "cuda"
    prepare = lambda x: transform.random(x, generator).contiguous(  # noqa: E731
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    history = []
    for epoch in range(epochs):
        model.train()
        progress.start(phase, epoch, epochs, steps_per_epoch)
        losses, seen, started = [], 0, time.perf_counter()
        for step, (images, targets) in enumerate(batches):
            if step >= steps_per_epoch:
                break
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            losses.append(accumulate_gradients(model, images, targets, accum, prepare, precision, scaler))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(images)
            if step % 10 == 0 or step == steps_per_epoch - 1:
                # .item() waits for the device: only every few steps, for the display.
                elapsed = time.perf_counter() - started
                progress.step(step + 1, losses[-1].item(), seen / elapsed if elapsed else 0.0)
        if device.type == "cuda":
            torch.cuda.synchronize()  # so the epoch's time is the device's time
        seconds = time.perf_counter() - started
        train_loss = torch.stack(losses).mean().item() if losses else float("nan")
        valid_loss = error_rate = None
        if valid is not None:
            probs, labels = predict(model, valid, transform, device, precision)
            valid_loss, error_rate = classification_metrics(probs, labels)
        metrics = EpochMetrics(phase, epoch, train_loss, valid_loss, error_rate, seen, seconds)
        progress.end(metrics)
        history.append(metrics)
    return history


def fine_tune(model: nn.Module, batches: Batches, epochs: int, lr: float, accum: int, transform: BatchTransform,
              device: torch.device, precision: Precision, weight_decay: float, finetune: bool, freeze_epochs: int,
              valid: Batches | None = None, progress: Progress | None = None,
              generator: torch.Generator | None = None) -> list[EpochMetrics]:
    """fastai's `fine_tune`: head only for `freeze_epochs`, then every layer with learning rates
    spread over the groups. Without `finetune`, every layer from the start at `lr` (right for
    random weights)."""
    common = dict(accum=accum, transform=transform, device=device, precision=precision,
                  weight_decay=weight_decay, valid=valid, progress=progress, generator=generator)
    history = []
    if finetune and freeze_epochs > 0:
        freeze_body(model, True)
        head = [p for p in model.parameters() if p.requires_grad]
        history += fit_one_cycle(model, [{"params": head, "lr": lr}], batches, freeze_epochs,
                                 pct_start=0.99, phase="frozen", **common)
        freeze_body(model, False)
    groups = parameter_groups(model, lr, discriminative=finetune)
    history += fit_one_cycle(model, groups, batches, epochs, **common)
    return history


# ---------------------------------------------------------------- prediction and TTA


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, transform: BatchTransform, device: torch.device,
            precision: Precision, augment: Callable[[torch.Tensor], torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities (float32, CPU) in batch order; `augment` replaces the plain transform."""
    model.eval()
    prepare = augment or transform.plain
    probs, labels = [], []
    for images, targets in batches:
        x = prepare(images.to(device, non_blocking=True))
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            logits = model(x)
        probs.append(logits.float().softmax(dim=1).cpu())
        if targets is not None:
            labels.append(targets)
    return torch.cat(probs), (torch.cat(labels) if labels else None)


def tta(model: nn.Module, batches: Batches, transform: BatchTransform, device: torch.device, precision: Precision,
        n: int, beta: float, augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """fastai's TTA: the mean of `n` augmented passes, blended with one plain pass as
    lerp(mean_augmented, plain, beta). With n = 0 it is the plain pass."""
    plain, _ = predict(model, batches, transform, device, precision)
    if n == 0:
        return plain
    augment = augment or transform.random
    augmented = torch.stack([predict(model, batches, transform, device, precision, augment)[0] for _ in range(n)])
    return torch.lerp(augmented.mean(0), plain, beta)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy of the probabilities and error rate."""
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    error = (probs.argmax(1) != labels).float().mean().item()
    return loss, error
