"""One training step, the only one: `fit`, the learning-rate range test and the memory probe all
call `train_step`, so accumulation, the grad scaler, clipping and weight averaging live here once.

`accumulate_gradients` is exact for unequal micro-batches; `LoopParts` is what a step changes and a
checkpoint must hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ledger.data.batches import Batches
from ledger.training.device import Precision, Runtime
from ledger.training.loss import Criterion
from ledger.training.models import parameter_groups


@dataclass(frozen=True)
class StepSettings:
    """How each optimizer step updates the weights, besides the schedule's learning rate: values,
    not a spec entry."""

    weight_decay: float = 0.01
    clip_grad: float | None = None  # the largest global gradient norm; None: no clipping
    ema: float | None = None  # the decay of an average of the weights (timm's ModelEmaV3); None: off

    @classmethod
    def of(cls, train) -> "StepSettings":
        """The step settings of a spec's train settings (a TrainSpec or a model entry)."""
        return cls(weight_decay=train.weight_decay, clip_grad=train.clip_grad, ema=train.ema)


def fastai_adam(groups: list[dict], lr: float = 1e-3) -> torch.optim.AdamW:
    """fastai's Adam (betas 0.9/0.99, eps 1e-5, decoupled weight decay) as torch's fused AdamW: one
    kernel over all tensors instead of a dozen ops per tensor (the same update; GradScaler unscales it
    as any other). docs/benchmarks.md has the time it saves."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-5, fused=True)


@dataclass
class LoopParts:
    """Everything a training step changes, which a checkpoint must hold to resume exactly."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: Batches
    generator: torch.Generator
    ema: nn.Module | None = None  # timm's ModelEmaV3: the averaged copy lives in `ema.module`
    steps: int = 0  # optimizer steps taken, which the average's warm-up counts

    @property
    def inference_net(self) -> nn.Module:
        """What validation, TTA and saved weights use: the averaged weights when averaging is on."""
        return self.net if self.ema is None else self.ema.module


def loop_parts(net: nn.Module, batches: Batches, runtime: Runtime, settings: StepSettings) -> LoopParts:
    """The optimizer (fastai's Adam: no weight decay on norm layers and biases), the grad scaler
    (a no-op unless fp16) and, with `settings.ema`, the averaged copy of `net`."""
    optimizer = fastai_adam(parameter_groups(net, settings.weight_decay))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision.scaled)
    ema = None
    if settings.ema:
        from timm.utils import ModelEmaV3

        # timm's warm-up: after optimizer step t the decay is min(ema, 1 - t^(-2/3)), 0 at step 1 (a
        # copy), so the random start fades fast; it reaches 0.99 only after 1,000 steps.
        # No device: the copy stays where `net` is (naming `cuda` for a net on `cuda:0` would turn off
        # timm's one-kernel update as if the devices differed).
        ema = ModelEmaV3(net, decay=settings.ema, use_warmup=True)
    return LoopParts(net, optimizer, scaler, batches, runtime.generator, ema)


def accumulate_gradients(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, accum: int,
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
            logits = net(x)
        # Loss in float32: under fp16 autocast a low-precision reduction loses small losses.
        logits = logits.float()
        loss = (criterion(logits, micro_targets) if criterion is not None else F.cross_entropy(logits, micro_targets))
        loss = loss * (len(micro_images) / total)
        scaler.scale(loss).backward()
        batch_loss += loss.detach()
    return batch_loss


def train_step(parts: LoopParts, images: torch.Tensor, targets: torch.Tensor, runtime: Runtime,
               criterion: Criterion, settings: StepSettings) -> torch.Tensor:
    """One optimizer step over one effective batch (already on the device, learning rate already
    set): accumulate, clip, step, update the scaler and the average. Returns the batch's loss,
    detached, without waiting for the device."""
    parts.optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(parts.net, images, targets, runtime.accum, runtime.training_batch, runtime.precision,
                                parts.scaler, criterion)
    if settings.clip_grad:
        parts.scaler.unscale_(parts.optimizer)  # clip the true gradients, not fp16's scaled ones
        nn.utils.clip_grad_norm_(parts.net.parameters(), settings.clip_grad)
    parts.scaler.step(parts.optimizer)  # skipped by the scaler when fp16 gradients overflowed
    parts.scaler.update()
    parts.steps += 1
    if parts.ema is not None:
        # Counted after the step, as timm's train.py passes `num_updates`: step 1 copies the weights.
        parts.ema.update(parts.net, step=parts.steps)
    return loss
