"""One training step, the only one: the `Learner` calls `train_step` for every fit, lr-find and
probe trial, so accumulation, the grad scaler and clipping live here once.

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
    ema: float | None = None  # the decay of an average of the weights (callbacks.WeightAverage); None: off

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
    steps: int = 0  # optimizer steps taken, which the weight average's warm-up counts


def loop_parts(net: nn.Module, batches: Batches, runtime: Runtime, settings: StepSettings) -> LoopParts:
    """The optimizer (fastai's Adam: no weight decay on norm layers and biases) and the grad scaler
    (a no-op unless fp16)."""
    optimizer = fastai_adam(parameter_groups(net, settings.weight_decay))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision.scaled)
    return LoopParts(net, optimizer, scaler, batches, runtime.generator)


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
    set): accumulate, clip, step, update the scaler. Returns the batch's loss, detached, without
    waiting for the device."""
    parts.optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(parts.net, images, targets, runtime.accum, runtime.training_batch, runtime.precision,
                                parts.scaler, criterion)
    if settings.clip_grad:
        parts.scaler.unscale_(parts.optimizer)  # clip the true gradients, not fp16's scaled ones
        nn.utils.clip_grad_norm_(parts.net.parameters(), settings.clip_grad)
    parts.scaler.step(parts.optimizer)  # skipped by the scaler when fp16 gradients overflowed
    parts.scaler.update()
    parts.steps += 1
    return loss
