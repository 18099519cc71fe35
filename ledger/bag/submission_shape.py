"""The shape of the CSV a competition wants, read from its sample submission's columns, and the
metric it is scored by over the competition's classes.

Three shapes, after the id column:
  label      one column of class names: the argmax (accuracy, F1, kappa);
  per_class  one probability column per class, named as the classes (the common Kaggle shape
             for log loss and multiclass AUC);
  positive   one probability column for a two-class competition: the probability of the column's
             class when it is named as one, else of the positive class, the second in order.
multi_label has two: `tags` (one column of the tags decided on, joined by spaces: Planet) and
per_class (a column per tag, named as the tags: the tags' probabilities for a probability metric,
else 0/1 decisions: CheXpert). regression has one, `values`: the target columns, named as the
label CSV's (one target may sit in any one column), holding numbers, or grades for qwk.
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
TAGS = "tags"
VALUES = "values"
DIGITS = "%.9g"  # enough to give back every float32 probability exactly


@dataclass(frozen=True)
class Shape:
    kind: str  # LABEL, PER_CLASS or POSITIVE
    columns: tuple[str, ...]  # the columns ledger fills, in the sample's order
    positive: str | None = None  # POSITIVE: the class whose probability the column holds
    clip: bool = False  # probabilities clipped to [eps, 1 - eps] (float64), as log_loss clips them
    names: tuple[str, ...] = ()  # VALUES: the target each column holds
    decided: bool = False  # the columns hold decisions (0/1 tags, grades), not probabilities or numbers

    def describe(self) -> str:
        if self.kind == LABEL:
            return f"one label column ({self.columns[0]})"
        if self.kind == TAGS:
            return f"the tags, joined by spaces, in column {self.columns[0]}"
        if self.kind == VALUES:
            held = "grades" if self.decided else "numbers"
            return f"{held} in {'column' if len(self.columns) == 1 else 'columns'} {', '.join(self.columns)}"
        if self.kind == PER_CLASS:
            held = "0/1 column" if self.decided else "probability column"
            return f"one {held} per {'tag' if self.names else 'class'} ({len(self.columns)})"
        return f"the probability of class {self.positive} in column {self.columns[0]}"


def spec_metric(spec, vocab: Sequence[str]) -> Metric:
    """The spec's metric over `vocab`, ranked by its class_order; a bad class_order names the key.
    A multi-label or regression metric scores every column as it is."""
    if spec.task != "single_label":
        from ledger.bag.task_metrics import task_metric

        return task_metric(spec.metric, spec.task)
    try:
        return metric_by_name(spec.metric, vocab, spec.class_order)
    except LedgerError as error:
        raise SpecError(f"{spec.path}: {error}", keypath="class_order", detail=str(error)) from None


def submission_shape(sample: Path, columns: Sequence[str], vocab: Sequence[str], metric: Metric,
                     task: str = "single_label") -> Shape:
    """The shape of the sample submission `sample` with `columns` (the id column first) for a
    competition with classes `vocab` scored by `metric` (ordered, for the positive class)."""
    if task != "single_label":
        return _vector_shape(sample, [str(c) for c in columns], [str(v) for v in vocab], metric, task)
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


def _vector_shape(sample: Path, columns: list[str], vocab: list[str], metric, task: str) -> Shape:
    """multi_label's and regression's shapes (see the module's docstring)."""
    values = columns[1:]
    if not values:
        raise LedgerError(f"{sample}: no column after the id column {columns[0]!r}")
    named = [c for c in values if c in set(vocab)]
    strangers = [c for c in values if c not in set(vocab)]
    if task == "regression":
        if len(vocab) == 1 and len(values) == 1:
            return Shape(VALUES, tuple(values), names=tuple(vocab), decided=metric.decided)
        missing = [v for v in vocab if v not in named]
        if strangers or missing:
            raise LedgerError(f"{sample}: columns {few(values, limit=5, quote=False)}; a submission of "
                              f"{len(vocab)} targets needs one column named as each ({few(vocab, limit=5, quote=False)})")
        return Shape(VALUES, tuple(named), names=tuple(named), decided=metric.decided)
    if named:
        missing = [v for v in vocab if v not in named]
        if strangers or missing:
            raise LedgerError(f"{sample}: columns named as tags, but "
                              + (f"{few(strangers, limit=5, quote=False)} name no tag of the training labels"
                                 if strangers else f"none for tags {few(missing, limit=5, quote=False)}"))
        return Shape(PER_CLASS, tuple(named), clip=metric.name == "log_loss", names=tuple(named),
                     decided=metric.decided)
    if len(values) > 1:
        raise LedgerError(f"{sample}: {len(values)} columns after the id, none named as a tag; expected one "
                          f"column of space-separated tags, or one column per tag")
    if metric.needs_probabilities:
        raise LedgerError(f"{sample}: one column of tags, but metric {metric.name} scores probabilities (it needs "
                          f"one column per tag, named as the tags; or use f1_samples, f2_samples, f1_macro)")
    return Shape(TAGS, tuple(values), decided=True)


def decided_tags(probs: np.ndarray, decision=None) -> np.ndarray:
    """(N, T) 0/1: each tag where its probability reaches the decision's threshold (0.5 without)."""
    return decision.apply(probs) if decision is not None else (np.asarray(probs) >= 0.5).astype(int)


def tag_cells(vocab: Sequence[str], probs: np.ndarray, decision=None) -> list[str]:
    """Each image's decided tags joined by spaces (Planet's cell; empty for none)."""
    words = np.asarray([str(v) for v in vocab], dtype=object)
    return [" ".join(words[row.astype(bool)]) for row in decided_tags(probs, decision)]


def fill_vectors(frame: pd.DataFrame, shape: Shape, vocab: Sequence[str], probs: np.ndarray, decision=None) -> None:
    """multi_label's and regression's columns: tags decided by `decision` (thresholds; 0.5 without),
    0/1 or probability columns, numbers, or grades (cut-offs; the nearest grade without)."""
    vocab = [str(v) for v in vocab]
    if shape.kind == TAGS:
        frame[shape.columns[0]] = tag_cells(vocab, probs, decision)
        return
    values = np.asarray(probs, dtype=np.float64)
    if shape.kind == PER_CLASS and shape.decided:
        values = decided_tags(probs, decision)
    elif shape.kind == VALUES and shape.decided:
        # qwk: one column of grades; without cut-offs, the nearest of the grades numbered 0, 1, ...
        values = decision.apply(probs) if decision is not None else np.rint(values)
    elif shape.clip:
        eps = np.finfo(np.float64).eps
        values = np.clip(values, eps, 1 - eps)
    for column, name in zip(shape.columns, shape.names):
        column_values = values[:, vocab.index(name)] if values.shape[1] > 1 else values[:, 0]
        frame[column] = np.char.mod("%g" if shape.decided else DIGITS, column_values)


def fill(frame: pd.DataFrame, shape: Shape, vocab: Sequence[str], probs: np.ndarray, decision=None) -> None:
    """Write the bag's probabilities (N, C over `vocab`, rows in the frame's order) into `frame`'s
    columns as the shape says: class names, or probabilities as text with DIGITS."""
    if shape.names or shape.kind == TAGS:
        return fill_vectors(frame, shape, vocab, probs, decision)
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
