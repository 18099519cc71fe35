"""fastai's ClassificationInterpretation over a run's held-out predictions: confusion matrix,
`most_confused`, per-class accuracy and top losses, plus the bag of several runs.

Pure numbers from `valid_preds.npz` artifacts; pictures are drawn in `report/plots.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ledger.runs.artifacts import Predictions
from ledger.errors import LedgerError


@dataclass(frozen=True)
class Interpretation:
    name: str  # a run id, or "bag"
    ids: np.ndarray  # image ids, shape (N,)
    vocab: np.ndarray  # class names, shape (C,)
    actual: np.ndarray  # int index into vocab, shape (N,)
    probs: np.ndarray  # float, shape (N, C)

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def losses(self) -> np.ndarray:
        """Each image's cross-entropy: minus the log probability of its actual class."""
        return -np.log(np.clip(self.probs[np.arange(len(self.actual)), self.actual], 1e-12, None))

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.actual).mean()) if len(self.actual) else float("nan")

    def confusion_matrix(self) -> np.ndarray:
        """counts[i, j]: images of actual class i predicted as class j."""
        n = len(self.vocab)
        return np.bincount(self.actual * n + self.predicted, minlength=n * n).reshape(n, n)

    def top_losses(self, k: int) -> np.ndarray:
        """Indices of the k largest losses, largest first (ties in id order)."""
        return np.argsort(-self.losses, kind="stable")[:k]


def interpretation(name: str, preds: Predictions, source: str) -> Interpretation:
    """Held-out predictions -> an Interpretation; `source` names the file for errors."""
    if preds.labels is None:
        raise LedgerError(f"{source}: no true labels in the held-out predictions")
    index = {label: i for i, label in enumerate(preds.vocab)}
    unknown = sorted({label for label in preds.labels if label not in index})
    if unknown:
        raise LedgerError(f"{source}: labels not in the run's vocab ({', '.join(unknown[:5])})")
    actual = np.array([index[label] for label in preds.labels], dtype=np.int64)
    return Interpretation(name, np.asarray(preds.ids), np.asarray(preds.vocab), actual,
                          np.asarray(preds.probs, dtype=np.float64))


def most_confused(matrix: np.ndarray, vocab, min_val: int = 1) -> pd.DataFrame:
    """fastai's most_confused: every off-diagonal (actual, predicted, count) with count >= min_val,
    largest first; equal counts keep row-major order (fastai's sort is stable too)."""
    rows = [(vocab[i], vocab[j], int(matrix[i, j])) for i, j in zip(*np.nonzero(matrix >= min_val)) if i != j]
    rows.sort(key=lambda row: row[2], reverse=True)  # Python's sort is stable, reverse included
    return pd.DataFrame(rows, columns=["actual", "predicted", "count"])


def per_class_accuracy(matrix: np.ndarray, vocab) -> pd.DataFrame:
    images = matrix.sum(axis=1)
    correct = np.diag(matrix)
    accuracy = np.divide(correct, images, out=np.full(len(vocab), np.nan), where=images > 0)
    return pd.DataFrame({"class": list(vocab), "images": images, "correct": correct, "accuracy": accuracy})


def bag(named: list[tuple[str, Predictions]]) -> Predictions:
    """The mean of the runs' held-out probabilities (or numbers) per image, over every image held
    out by at least one run (each run held out a different split, so coverage grows with the runs),
    with each image's truth: its class, or its tags or numbers."""
    first_name, first = named[0]
    sums, counts, truth = {}, {}, {}
    for name, preds in named:
        if list(preds.vocab) != list(first.vocab):
            raise LedgerError(f"run {name}: its classes differ from run {first_name}'s; cannot bag them")
        for image_id, probs, true in zip(preds.ids, preds.probs, preds.truth):
            sums[image_id] = sums.get(image_id, 0.0) + probs.astype(np.float64)
            counts[image_id] = counts.get(image_id, 0) + 1
            truth.setdefault(image_id, true)
    ids = sorted(sums)
    known = np.array([truth[i] for i in ids])
    return Predictions(
        ids=np.array(ids), vocab=np.asarray(first.vocab),
        probs=np.stack([sums[i] / counts[i] for i in ids]).astype(np.float32), task=first.task,
        **(dict(labels=known) if first.task == "single_label" else dict(targets=known)),
    )
