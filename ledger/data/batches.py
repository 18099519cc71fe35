"""Training and evaluation batches from decoded images held in memory (or memory-mapped)."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch


class Batches:
    """uint8 image batches from an in-memory (or memory-mapped) (N, 3, H, W) array.

    Shuffled anew each epoch from a seeded generator, so a run is reproducible from its seed. `keys`
    name the images (one per row of `images`: their file names); TTA keys each image's random draws
    to its name, so one image gets one answer whatever else is in the call. Without keys an image is
    named by its row."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, batch_size: int,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0, keys: Sequence[str] | None = None):
        self.images, self.labels, self.indices = images, labels, np.asarray(indices)
        if keys is not None and len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        self.keys = keys
        self.batch_size, self.shuffle, self.rng = batch_size, shuffle, np.random.default_rng(seed)
        # Dropping a short last batch only makes sense when there is more than one batch.
        self.drop_last = drop_last and len(self.indices) > batch_size

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for images, labels, _ in self.keyed():
            yield images, labels

    def keyed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[str]]]:
        """Batches as `iter` gives them, each with its images' keys."""
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
            keys = [str(row) for row in chunk] if self.keys is None else [str(self.keys[row]) for row in chunk]
            yield torch.from_numpy(np.ascontiguousarray(images)), labels, keys

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state
