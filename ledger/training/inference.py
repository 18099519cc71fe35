"""Prediction and fastai's test-time augmentation, for validation, TTA, `ledger predict` and the
exported bundle alike."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ledger.data.batches import Batches
from ledger.spec.objects import RunTta
from ledger.training.device import Runtime


def head_softmax(logits: torch.Tensor, sizes: tuple[int, ...] | None) -> torch.Tensor:
    """Softmax over each target's slice of the head (the whole head with one target)."""
    if not sizes or len(sizes) == 1:
        return logits.softmax(dim=1)
    return torch.cat([part.softmax(dim=1) for part in logits.split(sizes, dim=1)], dim=1)


@torch.no_grad()
def predict(net: nn.Module, batches: Batches, runtime: Runtime,
            augment: Callable[[torch.Tensor, Sequence[str]], torch.Tensor] | None = None,
            head_sizes: tuple[int, ...] | None = None,
            progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities (float32, CPU) in batch order, per target with `head_sizes`;
    `augment(images, keys)` replaces the plain transform. `progress(done, total)` after each batch:
    the copy to the CPU has waited for the device already, so it costs no extra sync."""
    net.eval()
    prepare = augment or (lambda images, keys: runtime.transform.plain(images))
    probs, labels = [], []
    for done, (images, targets, keys) in enumerate(batches.keyed(), 1):
        x = prepare(images.to(runtime.device, non_blocking=True), keys)  # in the net's memory layout
        with runtime.precision.autocast(runtime.device):
            logits = net(x)
        probs.append(head_softmax(logits.float(), head_sizes).cpu())
        if targets is not None:
            labels.append(targets)
        if progress is not None:
            progress(done, len(batches))
    return torch.cat(probs), (torch.cat(labels) if labels else None)


Augment = Callable[[torch.Tensor, Sequence[str], int], torch.Tensor]  # (images, keys, pass) -> net input


def tta(net: nn.Module, batches: Batches, runtime: Runtime, n: int, beta: float, seed: int = 0,
        augment: Augment | None = None, head_sizes: tuple[int, ...] | None = None,
        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """fastai's TTA: the mean of `n` passes with the training augmentation, blended with one plain
    pass as lerp(mean_augmented, plain, beta). Pass i augments each image as `keyed_draws(seed,
    its key, i)` says (unless `augment` is given), so an image's answer does not depend on the other
    images of the call. With n = 0 it is the plain pass. `progress(done, total)` counts batches over
    all n + 1 passes."""

    def pass_progress(index: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(index * total + done, (n + 1) * total)

    plain, _ = predict(net, batches, runtime, head_sizes=head_sizes, progress=pass_progress(0))
    if n == 0:
        return plain
    augment = augment or (lambda images, keys, index: runtime.transform.keyed(images, keys, seed, index))
    augmented = torch.stack([predict(net, batches, runtime, lambda images, keys, i=i: augment(images, keys, i),
                                     head_sizes, progress=pass_progress(i + 1))[0] for i in range(n)])
    return torch.lerp(augmented.mean(0), plain, beta)


def tta_at_sizes(net: nn.Module, batches: Batches, runtime: Runtime, settings: RunTta,
                 head_sizes: tuple[int, ...] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """A run's TTA (`settings`: n, beta, seed) at each of its sizes (the transform's own size when
    none), averaged: the stored pixels are resampled to each size by the same transform, so a net
    trained at 224 can predict at 288 (timm's test_input_size) from the same image cache."""
    n, beta, seed, sizes = settings.n, settings.beta, settings.seed, settings.sizes
    if not sizes:
        return tta(net, batches, runtime, n, beta, seed, head_sizes=head_sizes, progress=progress)
    total = []
    for index, size in enumerate(sizes):
        at_size = dataclasses.replace(runtime, transform=runtime.transform.resized(size))
        step = None if progress is None else (
            lambda done, count, i=index: progress(i * count + done, len(sizes) * count))
        total.append(tta(net, batches, at_size, n, beta, seed, head_sizes=head_sizes, progress=step))
    return torch.stack(total).mean(0)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, head_sizes: tuple[int, ...] | None = None
                           ) -> tuple[float, float, list[float]]:
    """Cross-entropy (summed over targets), the submission target's error rate, and each extra
    target's error rate."""
    sizes = head_sizes or (probs.shape[1],)
    parts, columns = probs.split(sizes, dim=1), (labels.unsqueeze(1) if labels.ndim == 1 else labels)
    losses = [F.nll_loss(p.clamp_min(1e-12).log(), columns[:, i]).item() for i, p in enumerate(parts)]
    errors = [(p.argmax(1) != columns[:, i]).float().mean().item() for i, p in enumerate(parts)]
    return sum(losses), errors[0], errors[1:]
