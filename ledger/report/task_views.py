"""The report's view of tags and numbers (task multi_label or regression): each tag's precision and
recall, predicted against true numbers (a scatter) and the residuals by the target's range, and the
images the run got most wrong. Numbers here; `report/plots.py` draws them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ledger.errors import LedgerError
from ledger.runs.artifacts import Predictions

RANGES = 5  # residuals are shown by quintile of the true value


@dataclass(frozen=True)
class VectorInterpretation:
    name: str  # a run id, or "bag"
    ids: np.ndarray  # image ids, shape (N,)
    vocab: np.ndarray  # tags or target columns, shape (C,)
    truth: np.ndarray  # float (N, C): true tags (0/1) or numbers
    probs: np.ndarray  # float (N, C): the tags' probabilities, or the predicted numbers
    task: str

    @property
    def accuracy(self) -> float:
        return float("nan")  # tags and numbers have none: the spec's metric says how good they are

    @property
    def losses(self) -> np.ndarray:
        """Each image's loss: its tags' binary cross-entropy (summed), or its squared error."""
        if self.task == "regression":
            return ((self.probs - self.truth) ** 2).sum(axis=1)
        p = np.clip(self.probs, 1e-7, 1 - 1e-7)
        return -(self.truth * np.log(p) + (1 - self.truth) * np.log(1 - p)).sum(axis=1)

    def top_losses(self, k: int) -> np.ndarray:
        """Indices of the k largest losses, largest first (ties in id order)."""
        return np.argsort(-self.losses, kind="stable")[:k]

    def title(self, i: int) -> str:
        """A top-loss image's caption: predicted / actual, then the loss."""
        if self.task == "regression":
            shown = lambda row: ", ".join(f"{v:.3g}" for v in row)  # noqa: E731
            return f"{shown(self.probs[i])} / {shown(self.truth[i])}\n{self.losses[i]:.3g}"
        tags = lambda row: " ".join(self.vocab[row]) or "(none)"  # noqa: E731
        return f"{tags(self.probs[i] >= 0.5)} / {tags(self.truth[i] >= 0.5)}\n{self.losses[i]:.2f}"


def vector_interpretation(name: str, preds: Predictions, source: str) -> VectorInterpretation:
    if preds.targets is None:
        raise LedgerError(f"{source}: no true targets in the held-out predictions")
    return VectorInterpretation(name, np.asarray(preds.ids), np.asarray(preds.vocab),
                                np.asarray(preds.targets, dtype=np.float64), np.asarray(preds.probs, dtype=np.float64),
                                preds.task)


def per_tag(interp: VectorInterpretation) -> pd.DataFrame:
    """Each tag at 0.5: images that carry it, images predicted with it, precision, recall, F1."""
    truth, chosen = interp.truth >= 0.5, interp.probs >= 0.5
    hits = (truth & chosen).sum(axis=0)
    positives, predicted = truth.sum(axis=0), chosen.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.full(len(hits), np.nan), where=predicted > 0)
    recall = np.divide(hits, positives, out=np.full(len(hits), np.nan), where=positives > 0)
    f1 = np.divide(2 * hits, positives + predicted, out=np.full(len(hits), np.nan), where=positives + predicted > 0)
    return pd.DataFrame({"tag": list(interp.vocab), "images": positives, "predicted": predicted,
                         "precision": precision, "recall": recall, "f1": f1})


def residuals_by_range(interp: VectorInterpretation, column: int = 0) -> pd.DataFrame:
    """The residuals (predicted - true) of one target by quintile of its true value: where the
    model is biased (shrinking the extremes toward the mean is the usual pattern)."""
    truth, preds = interp.truth[:, column], interp.probs[:, column]
    edges = np.quantile(truth, np.linspace(0, 1, RANGES + 1)) if len(truth) else np.zeros(RANGES + 1)
    rows = []
    for i in range(RANGES):
        inside = (truth >= edges[i]) & ((truth <= edges[i + 1]) if i == RANGES - 1 else (truth < edges[i + 1]))
        residual = preds[inside] - truth[inside]
        rows.append((f"{edges[i]:.3g} to {edges[i + 1]:.3g}", int(inside.sum()),
                     float(residual.mean()) if inside.any() else float("nan"),
                     float(np.sqrt((residual ** 2).mean())) if inside.any() else float("nan")))
    return pd.DataFrame(rows, columns=["true range", "images", "mean residual", "rmse"])
