"""A task's head and its training loss: what the net's outputs mean (`Head`: softmax over classes,
a sigmoid per tag, or standardised numbers) and the loss that trains them (`Criterion`: cross-
entropy with fastai's label smoothing and timm's Mixup / CutMix; binary cross-entropy per tag;
MSE or Huber on standardised targets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ledger.bag.metrics import MULTI_LABEL, REGRESSION, SINGLE_LABEL


def head_softmax(logits: torch.Tensor, sizes: tuple[int, ...] | None) -> torch.Tensor:
    """Softmax over each target's slice of the head (the whole head with one target)."""
    if not sizes or len(sizes) == 1:
        return logits.softmax(dim=1)
    return torch.cat([part.softmax(dim=1) for part in logits.split(sizes, dim=1)], dim=1)


@dataclass(frozen=True)
class Head:
    """What the net's outputs are. single_label: each target's class logits side by side (`sizes`);
    multi_label: one logit per tag; regression: each target standardised by the training images'
    `mean` and `std`, so one learning rate suits a size in pixels and a grade alike, and the
    predictions come back in the target's own units."""

    sizes: tuple[int, ...]
    task: str = SINGLE_LABEL
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def of(cls, competition, train_rows: np.ndarray | None = None) -> "Head":
        """The competition's head; regression's scale from the rows a run trains on (all without)."""
        if competition.task != REGRESSION:
            return cls(tuple(competition.head_sizes), competition.task)
        values = competition.train_labels if train_rows is None else competition.train_labels[train_rows]
        values = np.asarray(values, dtype=np.float64)
        # A constant column would divide by 0; the competition loader refuses one, a tiny split may not.
        std = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.0)
        return cls(tuple(competition.head_sizes), REGRESSION, tuple(map(float, values.mean(axis=0))),
                   tuple(map(float, std)))

    @property
    def outputs(self) -> int:
        return sum(self.sizes)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Outputs -> predictions: probabilities, or numbers in the target's units."""
        if self.task == MULTI_LABEL:
            return logits.sigmoid()
        if self.task == REGRESSION:
            return logits * logits.new_tensor(self.std) + logits.new_tensor(self.mean)
        return head_softmax(logits, self.sizes)

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        """Regression targets in the units the net learns them in."""
        return (values - values.new_tensor(self.mean)) / values.new_tensor(self.std)

    def to_dict(self) -> dict:
        """The resolved spec's `head:` (what predict and a bundle rebuild the predictions with)."""
        return dict(task=self.task, sizes=list(self.sizes), mean=list(self.mean), std=list(self.std))

    @classmethod
    def from_dict(cls, values: dict | None, sizes: tuple[int, ...] = ()) -> "Head":
        """From a resolved spec's `head:`; runs recorded before it had one are single-label with `sizes`."""
        if not values:
            return cls(tuple(sizes))
        return cls(tuple(int(s) for s in values["sizes"]), str(values["task"]),
                   tuple(float(m) for m in values.get("mean") or ()), tuple(float(s) for s in values.get("std") or ()))


class Criterion:
    """The training loss of a `Head` (or of a number of classes, single-label).

    single_label: cross-entropy with label smoothing (fastai's LabelSmoothingCrossEntropy: (1-eps)*nll
    + eps*mean(-log p) over classes, which is torch's label_smoothing), and timm's Mixup / CutMix.
    With extra targets (`classes` a tuple of class counts, the submission's target first), one head
    holds every target's logits side by side and the loss is the sum of the targets'
    cross-entropies, as Road to the Top part 4 trains disease and variety together.

    multi_label: binary cross-entropy per tag (fastai's BCEWithLogitsLossFlat), each tag's target
    smoothed as a two-class label is: y(1-eps) + eps/2. regression: MSE or Huber (delta 1) on the
    standardised targets. Mixup and CutMix mix these target vectors by the images' shares.

    Mixing happens within a micro-batch, so accumulated gradients still equal the full batch's
    for the same mixing. timm's Mixup pairs image i with image n-1-i and needs an even count; an
    odd micro-batch's last image stays unmixed, with its own (smoothed) target."""

    def __init__(self, classes: int | tuple[int, ...] | Head, label_smoothing: float = 0.0, mixup: float = 0.0,
                 cutmix: float = 0.0, extra_names: tuple[str, ...] = (), loss: str = "auto"):
        self.head = classes if isinstance(classes, Head) else Head((classes,) if isinstance(classes, int)
                                                                   else tuple(classes))
        self.task, self.sizes = self.head.task, self.head.sizes
        self.extra_names = tuple(extra_names)
        self.num_classes, self.label_smoothing = sum(self.sizes), label_smoothing
        self.regression_loss = "mse" if loss == "auto" else loss
        self.mixer = None
        if mixup > 0 or cutmix > 0:
            if len(self.sizes) > 1:
                raise ValueError("mixup and cutmix need a single target")
            from timm.data import Mixup

            # Vector targets (tags, numbers) are mixed here with the images' shares; timm mixes the
            # images, and one-hot class targets with its own smoothing.
            self.mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                               num_classes=self.num_classes)

    def targets(self, targets: torch.Tensor) -> torch.Tensor:
        """A batch's targets as the loss reads them: smoothed tags, standardised numbers."""
        if self.task == MULTI_LABEL:
            return targets.float() * (1 - self.label_smoothing) + self.label_smoothing / 2
        if self.task == REGRESSION:
            return self.head.standardise(targets.float())
        return targets

    def mix(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.targets(targets)
        if self.mixer is None or len(images) < 2:
            return images, targets
        even = len(images) - len(images) % 2
        if self.task == SINGLE_LABEL:
            mixed, soft = self.mixer(images[:even], targets[:even])
            if even == len(images):
                return mixed, soft
            off = self.label_smoothing / self.num_classes
            rest = F.one_hot(targets[even:], self.num_classes).float() * (1 - self.label_smoothing) + off
            return torch.cat([mixed, images[even:]]), torch.cat([soft, rest.to(soft.device)])
        pair = images[:even].clone()
        lam = float(self.mixer._mix_batch(pair))  # mixes the images in place (image i with n-1-i) and gives the share
        soft = lam * targets[:even] + (1 - lam) * targets[:even].flip(0)
        return torch.cat([pair, images[even:]]), torch.cat([soft, targets[even:]])

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of targets already through `mix` (in training) or as stored (validation)."""
        if self.task == MULTI_LABEL:
            return F.binary_cross_entropy_with_logits(logits, targets.float())
        if self.task == REGRESSION:
            if self.regression_loss == "huber":
                return F.huber_loss(logits, targets.float())
            return F.mse_loss(logits, targets.float())
        if targets.is_floating_point():  # soft targets from mixup
            return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        if targets.ndim == 1:
            return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return sum(F.cross_entropy(part, targets[:, i], label_smoothing=self.label_smoothing)
                   for i, part in enumerate(logits.split(self.sizes, dim=1)))
