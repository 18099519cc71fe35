"""Prediction and fastai's test-time augmentation, for validation, TTA, `ledger predict` and the
exported bundle alike."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ledger.bag.metrics import MULTI_LABEL, REGRESSION
from ledger.data.batches import Batches
from ledger.spec.objects import RunTta
from ledger.training.device import Runtime
from ledger.training.loss import Head, head_softmax  # noqa: F401  (head_softmax re-exported)

HeadLike = Head | tuple[int, ...] | None  # a Head, or a single-label head's class counts (None: one softmax)


def as_head(head: HeadLike, outputs: int) -> Head:
    if isinstance(head, Head):
        return head
    return Head(tuple(head) if head else (outputs,))


@torch.no_grad()
def predict(net: nn.Module, batches: Batches, runtime: Runtime,
            augment: Callable[[torch.Tensor, Sequence[str]], torch.Tensor] | None = None,
            head: HeadLike = None,
            progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Predictions (float32, CPU) in batch order, as `head` makes them: softmax probabilities per
    target, a sigmoid per tag, or numbers in the target's units;
    `augment(images, keys)` replaces the plain transform. `progress(done, total)` after each batch:
    the copy to the CPU has waited for the device already, so it costs no extra sync."""
    net.eval()
    prepare = augment or (lambda images, keys: runtime.transform.plain(images))
    probs, labels = [], []
    for done, (images, targets, keys) in enumerate(batches.keyed(), 1):
        x = prepare(images.to(runtime.device, non_blocking=True), keys)  # in the net's memory layout
        with runtime.precision.autocast(runtime.device):
            logits = net(x)
        probs.append(as_head(head, logits.shape[1]).activate(logits.float()).cpu())
        if targets is not None:
            labels.append(targets)
        if progress is not None:
            progress(done, len(batches))
    return torch.cat(probs), (torch.cat(labels) if labels else None)


Augment = Callable[[torch.Tensor, Sequence[str], int], torch.Tensor]  # (images, keys, pass) -> net input


def tta(net: nn.Module, batches: Batches, runtime: Runtime, n: int, beta: float, seed: int = 0,
        augment: Augment | None = None, head: HeadLike = None,
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

    plain, _ = predict(net, batches, runtime, head=head, progress=pass_progress(0))
    if n == 0:
        return plain
    augment = augment or (lambda images, keys, index: runtime.transform.keyed(images, keys, seed, index))
    augmented = torch.stack([predict(net, batches, runtime, lambda images, keys, i=i: augment(images, keys, i),
                                     head, progress=pass_progress(i + 1))[0] for i in range(n)])
    return torch.lerp(augmented.mean(0), plain, beta)


def tta_at_sizes(net: nn.Module, batches: Batches, runtime: Runtime, settings: RunTta,
                 head: HeadLike = None,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """A run's TTA (`settings`: n, beta, seed) at each of its sizes (the transform's own size when
    none), averaged: the stored pixels are resampled to each size by the same transform, so a net
    trained at 224 can predict at 288 (timm's test_input_size) from the same image cache."""
    n, beta, seed, sizes = settings.n, settings.beta, settings.seed, settings.sizes
    if not sizes:
        return tta(net, batches, runtime, n, beta, seed, head=head, progress=progress)
    total = []
    for index, size in enumerate(sizes):
        at_size = dataclasses.replace(runtime, transform=runtime.transform.resized(size))
        step = None if progress is None else (
            lambda done, count, i=index: progress(i * count + done, len(sizes) * count))
        total.append(tta(net, batches, at_size, n, beta, seed, head=head, progress=step))
    return torch.stack(total).mean(0)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, head: HeadLike = None
                           ) -> tuple[float, float | None, list[float]]:
    """The held-out loss and error rate. single_label: cross-entropy (summed over targets), the
    submission target's error rate, and each extra target's error rate. multi_label: binary
    cross-entropy per tag, and the share of tag decisions at 0.5 that are wrong. regression: the
    mean squared error in standardised units (the training loss's scale), and no error rate."""
    head = as_head(head, probs.shape[1])
    if head.task == MULTI_LABEL:
        truth = labels.float()
        loss = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), truth).item()
        return loss, ((probs >= 0.5).float() != truth).float().mean().item(), []
    if head.task == REGRESSION:
        return F.mse_loss(head.standardise(probs), head.standardise(labels.float())).item(), None, []
    sizes = head.sizes
    parts, columns = probs.split(sizes, dim=1), (labels.unsqueeze(1) if labels.ndim == 1 else labels)
    losses = [F.nll_loss(p.clamp_min(1e-12).log(), columns[:, i]).item() for i, p in enumerate(parts)]
    errors = [(p.argmax(1) != columns[:, i]).float().mean().item() for i, p in enumerate(parts)]
    return sum(losses), errors[0], errors[1:]
