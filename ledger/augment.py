"""Batch transforms on the training device, as fastai's GPU augmentations.

One affine grid per batch gives every image its own random crop, scale, aspect ratio and flip at
the cost of a single `grid_sample`, so augmentation never waits on per-image CPU work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BatchTransform:
    """uint8 (B, 3, h, w) batches -> normalised float batches of the model's size."""

    def __init__(
        self,
        size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        min_scale: float = 0.75,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
    ):
        self.size, self.min_scale, self.flip = tuple(size), min_scale, flip
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() - mean) / std

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        """No randomness: validation, test, and TTA's plain pass."""
        x = self._normalise(images)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def random(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random resized crop (area in [min_scale, 1], aspect ratio jitter) and horizontal flip."""
        x = self._normalise(images)
        batch = x.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            # Drawn on the CPU (a few numbers a batch), so one seeded CPU generator serves any device.
            return torch.rand(batch, generator=generator) * (high - low) + low

        area, log_ratio = uniform(self.min_scale, 1.0), uniform(*self.log_ratio)
        # Crop extent as a fraction of the image side; clamped so the crop stays inside the image.
        width = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
        height = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        shift_x = (uniform(-1.0, 1.0)) * (1 - width)
        shift_y = (uniform(-1.0, 1.0)) * (1 - height)
        sign = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else torch.ones(batch)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = width * sign, shift_x
        theta[:, 1, 1], theta[:, 1, 2] = height, shift_y
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [batch, x.shape[1], *self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
