"""The training loss: cross-entropy with fastai's label smoothing, timm's Mixup / CutMix, and one
head trained on several targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
