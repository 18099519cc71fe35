"""The training loop (exact gradient accumulation, autocast, fastai's phases and one-cycle) and TTA.

`fit` is the whole loop, top to bottom. Side concerns (progress display) are objects it
calls by name; it knows nothing of ledger rows or artifact files.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ledger.augment import BatchTransform
from ledger.errors import LedgerError, SpecError
from ledger.models import create_model, freeze_body, parameter_groups
from ledger.schedule import OneCycle, Phase
from ledger.targets import precision_for


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
            if self.shuffle:
                # Sorted reads are sequential in a memory-mapped cache; putting the rows back in
                # their random order keeps micro-batches from being class-sorted (which would bias
                # BatchNorm statistics, since the cache is stored class by class).
                order_in_sorted = np.argsort(chunk, kind="stable")
                rows = chunk[order_in_sorted]
                images = np.empty((len(chunk), *self.images.shape[1:]), dtype=self.images.dtype)
                images[order_in_sorted] = self.images[rows]
            else:
                rows, images = chunk, self.images[chunk]
            labels = None if self.labels is None else torch.from_numpy(self.labels[chunk])
            yield torch.from_numpy(np.ascontiguousarray(images)), labels

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state


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
    """auto: bf16 on CUDA cards that run it natively (Ampere and later), else fp16 with a scaler;
    float32 on CPU. T4, P100 and V100 only emulate bf16 (slowly), and they are the 16 GB cards
    the probe budgets for, so emulation does not count."""
    if device.type == "cuda":
        precision = precision_for(precision, torch.cuda.get_device_capability(device))  # as the probe's target
    elif precision == "auto":
        precision = "fp32"
    elif precision == "fp16":
        raise SpecError("train.precision: fp16 needs a CUDA device (use auto, fp32 or bf16 on CPU)")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Precision(precision, dtype, scaled=precision == "fp16")


def native_bf16(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.cuda.is_bf16_supported(including_emulation=False)


def parse_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:1`: checked here, so a typo or a missing GPU is one clear line."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LedgerError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise LedgerError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LedgerError(f"--device {name}: no CUDA device on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LedgerError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_on_device(model, num_classes: int, device: torch.device) -> tuple[nn.Module, BatchTransform]:
    """The spec's model on the training device, channels_last, and its batch transform (normalised
    as the model's pretrained config says, and giving batches in the same layout): one set-up for
    runs, probe trials, lr_find and predict alike.

    channels_last on every device: CUDA's tensor cores want NHWC, and on a CPU oneDNN's NHWC
    convolutions train tf_efficientnet_lite0 1.8-1.9x and resnet18 1.1-1.2x faster, while ConvNeXt, ViT and
    Swin train and predict within 9% either way (bench/bench_layout.py, bench/results/layout.jsonl)."""
    import timm

    net = create_model(model, num_classes).to(device).to(memory_format=torch.channels_last)
    config = timm.data.resolve_model_data_config(net)
    return net, BatchTransform(model.size, config["mean"], config["std"], augment=model.augment,
                               memory_format=torch.channels_last)


# ---------------------------------------------------------------- progress


class Progress(Protocol):
    """What the loop reports; the command line draws it (library code never prints)."""

    def start(self, phase: str, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, loss: float, images_per_s: float) -> None: ...
    def end(self, metrics: "EpochMetrics") -> None: ...
    # Optional (see stage_callback): any other long step of a run, e.g. "decoding", "validation",
    # "tta test", as `done` of `total` units (images or batches).
    def stage(self, name: str, done: int, total: int) -> None: ...


class SilentProgress:
    def start(self, phase, epoch, epochs, steps): pass
    def step(self, step, loss, images_per_s): pass
    def end(self, metrics): pass
    def stage(self, name, done, total): pass


def stage_callback(progress, name: str) -> Callable[[int, int], None] | None:
    """`progress.stage` bound to one stage name, as the (done, total) callback that load_images,
    predict and tta take; None when the progress object predates stages (the method is optional)."""
    stage = getattr(progress, "stage", None)
    return None if stage is None else (lambda done, total: stage(name, done, total))


@dataclass(frozen=True)
class EpochMetrics:
    phase: str  # "frozen" (fine-tune's head-only epochs) or "train"
    epoch: int  # counted from 1 over the whole run, as the console shows it
    train_loss: float
    valid_loss: float | None
    error_rate: float | None
    train_images: int
    train_seconds: float
    lr: float = 0.0  # the head's learning rate at the epoch's last step
    extra_error_rates: dict = field(default_factory=dict)  # extra target name -> its error rate

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def accuracy(self) -> float | None:
        return None if self.error_rate is None else 1.0 - self.error_rate


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite training loss: the run fails instead of bagging garbage."""


@dataclass(frozen=True)
class Runtime:
    """Where and how a run's loop runs, the same for all its phases."""

    device: torch.device
    precision: "Precision"
    accum: int
    transform: BatchTransform
    generator: torch.Generator  # augmentation's random numbers (drawn on the CPU)
    max_steps: int | None = None  # the probe's few steps


# ---------------------------------------------------------------- loss


class Criterion:
    """Cross-entropy with label smoothing (fastai's LabelSmoothingCrossEntropy: (1-eps)*nll +
    eps*mean(-log p) over classes, which is torch's label_smoothing), and timm's Mixup / CutMix.

    Mixing happens within a micro-batch, so accumulated gradients still equal the full batch's
    for the same mixing. timm's Mixup pairs image i with image n-1-i and needs an even count; an
    odd micro-batch's last image stays unmixed, with the same smoothed one-hot target.

    With extra targets (`classes` a tuple of class counts, the submission's target first), one
    head holds every target's logits side by side and the loss is the sum of the targets'
    cross-entropies, as Road to the Top part 4 trains disease and variety together."""

    def __init__(self, classes: int | tuple[int, ...], label_smoothing: float = 0.0, mixup: float = 0.0,
                 cutmix: float = 0.0, extra_names: tuple[str, ...] = ()):
        self.sizes = (classes,) if isinstance(classes, int) else tuple(classes)
        self.extra_names = tuple(extra_names)
        self.num_classes, self.label_smoothing = sum(self.sizes), label_smoothing
        self.mixer = None
        if mixup > 0 or cutmix > 0:
            if len(self.sizes) > 1:
                raise ValueError("mixup and cutmix need a single target")
            from timm.data import Mixup

            self.mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                               num_classes=self.num_classes)

    def mix(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixer is None or len(images) < 2:
            return images, targets
        even = len(images) - len(images) % 2
        mixed, soft = self.mixer(images[:even], targets[:even])
        if even == len(images):
            return mixed, soft
        off = self.label_smoothing / self.num_classes
        rest = F.one_hot(targets[even:], self.num_classes).float() * (1 - self.label_smoothing) + off
        return torch.cat([mixed, images[even:]]), torch.cat([soft, rest.to(soft.device)])

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():  # soft targets from mixup
            return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        if targets.ndim == 1:
            return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return sum(F.cross_entropy(part, targets[:, i], label_smoothing=self.label_smoothing)
                   for i, part in enumerate(logits.split(self.sizes, dim=1)))


# ---------------------------------------------------------------- the loop


def accumulate_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, accum: int,
                         prepare: Callable[[torch.Tensor], torch.Tensor], precision: Precision,
                         scaler: torch.amp.GradScaler, criterion: Criterion | None = None) -> torch.Tensor:
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
        if criterion is not None:
            x, micro_targets = criterion.mix(x, micro_targets)
        with precision.autocast(x.device):
            logits = model(x)
        # Loss in float32: under fp16 autocast a low-precision reduction loses small losses.
        logits = logits.float()
        loss = (criterion(logits, micro_targets) if criterion is not None else F.cross_entropy(logits, micro_targets))
        loss = loss * (len(micro_images) / total)
        scaler.scale(loss).backward()
        batch_loss += loss.detach()
    return batch_loss


@dataclass
class LoopParts:
    """Everything a checkpoint must hold to resume the loop exactly."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: Batches
    generator: torch.Generator


def fastai_adam(groups: list[dict], lr: float = 1e-3) -> torch.optim.AdamW:
    """fastai's Adam (betas 0.9/0.99, eps 1e-5, decoupled weight decay) as torch's fused AdamW: one
    kernel over all tensors instead of a dozen ops per tensor, 2.5 ms against 9.3 ms a step for
    tf_efficientnet_lite0 on 2 CPU cores (the same update; GradScaler unscales it as any other)."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-5, fused=True)


def _first_non_finite(losses: list[torch.Tensor], since: int) -> int | None:
    if len(losses) <= since:
        return None
    finite = torch.isfinite(torch.stack(losses[since:]))
    if bool(finite.all()):  # one device sync per check, not per step
        return None
    return since + int((~finite).nonzero()[0, 0])


def fit(net: nn.Module, model, phases: list[Phase], batches: Batches, runtime: Runtime, criterion: Criterion,
        valid: Batches | None = None, progress: Progress | None = None, checkpoint=None) -> list[EpochMetrics]:
    """fastai's recipe as one loop over `phases` (see schedule.fit_phases): one AdamW (fastai's
    Adam: betas 0.9/0.99, eps 1e-5, decoupled weight decay, none on norm layers and biases) kept
    across phases as fastai keeps its optimizer; each phase freezes or unfreezes the body and runs
    its own one-cycle schedule of learning rate and momentum, stepped once per effective batch.

    `checkpoint` (optional) saves after every epoch and, when it holds a saved state, the loop
    resumes after the last epoch it saved, with every random generator where it was."""
    progress = progress or SilentProgress()
    device, precision = runtime.device, runtime.precision
    optimizer = fastai_adam(parameter_groups(net, model.weight_decay))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)  # a disabled scaler is a no-op
    parts = LoopParts(net, optimizer, scaler, batches, runtime.generator)
    history = checkpoint.restore(parts) if checkpoint is not None and checkpoint.exists() else []
    if history and hasattr(progress, "resumed"):  # an optional Progress method
        progress.resumed(len(history))
    prepare = lambda x: runtime.transform.random(x, runtime.generator)  # noqa: E731  (in the net's layout)
    steps_per_epoch = len(batches) if runtime.max_steps is None else min(len(batches), runtime.max_steps)
    epoch_number = 0  # over all phases
    for phase in phases:
        freeze_body(net, phase.frozen)
        schedule = OneCycle(optimizer, phase, total_steps=max(1, phase.epochs * steps_per_epoch))
        for phase_epoch in range(phase.epochs):
            epoch_number += 1
            if epoch_number <= len(history):
                continue  # done before the checkpoint
            net.train()
            progress.start(phase.name, epoch_number - 1, sum(p.epochs for p in phases), steps_per_epoch)
            losses, seen, started, shown, checked = [], 0, time.perf_counter(), 0.0, 0
            for step, (images, targets) in enumerate(batches):
                if step >= steps_per_epoch:
                    break
                schedule.apply(phase_epoch * steps_per_epoch + step)
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                losses.append(accumulate_gradients(net, images, targets, runtime.accum, prepare, precision, scaler,
                                                   criterion))
                scaler.step(optimizer)
                scaler.update()
                seen += len(images)
                now = time.perf_counter()
                if now - shown >= 1.0 or step == steps_per_epoch - 1:
                    # .item() and the finiteness check wait for the device: once a second at most.
                    bad = _first_non_finite(losses, checked)
                    if bad is not None:
                        raise NonFiniteLoss(f"non-finite training loss ({losses[bad].item()}) at epoch "
                                            f"{epoch_number}, step {bad + 1}")
                    checked, shown = len(losses), now
                    progress.step(step + 1, losses[-1].item(), seen / (now - started))
            if device.type == "cuda":
                torch.cuda.synchronize()  # so the epoch's time is the device's time
            seconds = time.perf_counter() - started
            train_loss = torch.stack(losses).mean().item() if losses else float("nan")
            valid_loss = error_rate = None
            extra_errors: list[float] = []
            if valid is not None:
                probs, labels = predict(net, valid, runtime.transform, device, precision, head_sizes=criterion.sizes,
                                        progress=stage_callback(progress, "validation"))
                valid_loss, error_rate, extra_errors = classification_metrics(probs, labels, criterion.sizes)
            metrics = EpochMetrics(phase.name, epoch_number, train_loss, valid_loss, error_rate, seen, seconds,
                                   lr=optimizer.param_groups[-1]["lr"],
                                   extra_error_rates=dict(zip(criterion.extra_names, extra_errors)))
            progress.end(metrics)
            history.append(metrics)
            if checkpoint is not None:
                checkpoint.save(parts, history)
    return history


# ---------------------------------------------------------------- prediction and TTA


def head_softmax(logits: torch.Tensor, sizes: tuple[int, ...] | None) -> torch.Tensor:
    """Softmax over each target's slice of the head (the whole head with one target)."""
    if not sizes or len(sizes) == 1:
        return logits.softmax(dim=1)
    return torch.cat([part.softmax(dim=1) for part in logits.split(sizes, dim=1)], dim=1)


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, transform: BatchTransform, device: torch.device,
            precision: Precision, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
            head_sizes: tuple[int, ...] | None = None, progress: Callable[[int, int], None] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities (float32, CPU) in batch order, per target with `head_sizes`;
    `augment` replaces the plain transform. `progress(done, total)` after each batch: the copy to
    the CPU has waited for the device already, so it costs no extra sync."""
    model.eval()
    prepare = augment or transform.plain
    probs, labels = [], []
    for done, (images, targets) in enumerate(batches, 1):
        x = prepare(images.to(device, non_blocking=True))  # in the net's memory layout
        with precision.autocast(device):
            logits = model(x)
        probs.append(head_softmax(logits.float(), head_sizes).cpu())
        if targets is not None:
            labels.append(targets)
        if progress is not None:
            progress(done, len(batches))
    return torch.cat(probs), (torch.cat(labels) if labels else None)


def tta(model: nn.Module, batches: Batches, transform: BatchTransform, device: torch.device, precision: Precision,
        n: int, beta: float, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None, head_sizes: tuple[int, ...] | None = None,
        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """fastai's TTA: the mean of `n` passes with the training augmentation, blended with one plain
    pass as lerp(mean_augmented, plain, beta). With n = 0 it is the plain pass. `progress(done,
    total)` counts batches over all n + 1 passes."""

    def pass_progress(index: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(index * total + done, (n + 1) * total)

    plain, _ = predict(model, batches, transform, device, precision, head_sizes=head_sizes, progress=pass_progress(0))
    if n == 0:
        return plain
    augment = augment or (lambda x: transform.random(x, generator))
    augmented = torch.stack([predict(model, batches, transform, device, precision, augment, head_sizes,
                                     progress=pass_progress(i + 1))[0] for i in range(n)])
    return torch.lerp(augmented.mean(0), plain, beta)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, head_sizes: tuple[int, ...] | None = None
                           ) -> tuple[float, float, list[float]]:
    """Cross-entropy (summed over targets), the submission target's error rate, and each extra
    target's error rate."""
    sizes = head_sizes or (probs.shape[1],)
    parts, columns = probs.split(sizes, dim=1), (labels.unsqueeze(1) if labels.ndim == 1 else labels)
    losses = [F.nll_loss(p.clamp_min(1e-12).log(), columns[:, i]).item() for i, p in enumerate(parts)]
    errors = [(p.argmax(1) != columns[:, i]).float().mean().item() for i, p in enumerate(parts)]
    return sum(losses), errors[0], errors[1:]
