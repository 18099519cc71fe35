"""The shape of the CSV a competition wants, read from its sample submission's columns, and the
metric it is scored by over the competition's classes.

Three shapes, after the id column:
  label      one column of class names: the argmax (accuracy, F1, kappa);
  per_class  one probability column per class, named as the classes (the common Kaggle shape
             for log loss and multiclass AUC);
  positive   one probability column for a two-class competition: the probability of the column's
             class when it is named as one, else of the positive class, the second in order.
A metric that scores probabilities cannot be given labels, nor a label metric probabilities: such a
mismatch is one error at `ledger check` and before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ledger.errors import LedgerError, SpecError
from ledger.bag.matching import few
from ledger.bag.metrics import Metric, metric_by_name

LABEL = "label"
PER_CLASS = "per_class"
POSITIVE = "positive"
DIGITS = "%.9g"  # enough to give back every float32 probability exactly


@dataclass(frozen=True)
class Shape:
    kind: str  # LABEL, PER_CLASS or POSITIVE
    columns: tuple[str, ...]  # the columns ledger fills, in the sample's order
    positive: str | None = None  # POSITIVE: the class whose probability the column holds
    clip: bool = False  # probabilities clipped to [eps, 1 - eps] (float64), as log_loss clips them

    def describe(self) -> str:
        if self.kind == LABEL:
            return f"one label column ({self.columns[0]})"
        if self.kind == PER_CLASS:
            return f"one probability column per class ({len(self.columns)})"
        return f"the probability of class {self.positive} in column {self.columns[0]}"


def spec_metric(spec, vocab: Sequence[str]) -> Metric:
    """The spec's metric over `vocab`, ranked by its class_order; a bad class_order names the key."""
    try:
        return metric_by_name(spec.metric, vocab, spec.class_order)
    except LedgerError as error:
        raise SpecError(f"{spec.path}: {error}", keypath="class_order", detail=str(error)) from None


def submission_shape(sample: Path, columns: Sequence[str], vocab: Sequence[str], metric: Metric) -> Shape:
    """The shape of the sample submission `sample` with `columns` (the id column first) for a
    competition with classes `vocab` scored by `metric` (ordered, for the positive class)."""
    vocab = [str(v) for v in vocab]
    values = [str(c) for c in columns[1:]]
    named = [c for c in values if c in set(vocab)]
    clip = metric.name == "log_loss"
    if len(named) >= 2:
        strangers = [c for c in values if c not in set(vocab)]
        if strangers:  # left unfilled, they would keep the sample's placeholder values in every submission
            raise LedgerError(f"{sample}: columns {few(strangers, limit=5, quote=False)} name no class of the "
                              f"training labels (classes: {few(vocab, limit=8, quote=False)})")
        missing = [c for c in vocab if c not in named]
        if missing:
            raise LedgerError(f"{sample}: columns for classes {few(named, limit=5, quote=False)}, but none for "
                              f"{few(missing, limit=5, quote=False)}")
        if not metric.needs_probabilities:
            raise LedgerError(f"{sample}: one probability column per class, but metric {metric.name} scores labels "
                              f"(set metric: log_loss or roc_auc in the spec)")
        return Shape(PER_CLASS, tuple(named), clip=clip)
    if not values:
        raise LedgerError(f"{sample}: no column after the id column {columns[0]!r}")
    if not metric.needs_probabilities:
        return Shape(LABEL, (values[0],))
    if len(vocab) != 2:
        raise LedgerError(f"{sample}: metric {metric.name} scores probabilities, but the sample submission has one "
                          f"column {values[0]!r} for {len(vocab)} classes; it needs one column per class, named "
                          f"as the classes ({few(vocab, limit=5, quote=False)})")
    column = named[0] if named else values[0]
    ranks = metric.class_ranks(2)
    positive = column if named else vocab[int(np.argmax(ranks))]
    return Shape(POSITIVE, (column,), positive, clip)


def fill(frame: pd.DataFrame, shape: Shape, vocab: Sequence[str], probs: np.ndarray) -> None:
    """Write the bag's probabilities (N, C over `vocab`, rows in the frame's order) into `frame`'s
    columns as the shape says: class names, or probabilities as text with DIGITS."""
    vocab = [str(v) for v in vocab]
    if shape.kind == LABEL:
        frame[shape.columns[0]] = np.asarray(vocab)[probs.argmax(axis=1)]  # ties: the first class
        return
    values = np.asarray(probs, dtype=np.float64)
    if shape.clip:
        eps = np.finfo(np.float64).eps
        values = np.clip(values, eps, 1 - eps)
    classes = shape.columns if shape.kind == PER_CLASS else (shape.positive,)
    for column, name in zip(shape.columns, classes):
        frame[column] = np.char.mod(DIGITS, values[:, vocab.index(name)])
