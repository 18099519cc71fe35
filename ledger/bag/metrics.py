"""The competition's metric: what a spec's `metric:` names, scored as scikit-learn scores it.

Every metric takes the true class of each image (an index into the vocab) and the predicted
probabilities (N, C), so one call serves an epoch, the out-of-bag estimate, the weight search and
`ledger score`. Label metrics score the argmax (ties go to the first class, as the bag's labels do).
Definitions are scikit-learn's: `log_loss` clips to float64's machine epsilon, F1 averages over the
classes present in the truth or the prediction, kappa weighs disagreements by the squared distance
of the classes' ranks, and `roc_auc` is binary (the positive class is the second class in order) or
macro one-vs-rest. A figure that is not defined (AUC with one class present, kappa with a single
class everywhere, no image at all) is nan, never an exception: an estimate on few images may be so.

scikit-learn is imported inside the scorers: importing its metrics takes ~0.9 s, which `ledger
--help` and the spec checks should not pay.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ledger.errors import LedgerError
from ledger.bag.matching import few

# What a label is: one class per image, any number of tags, or numbers. The first is the default.
SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
REGRESSION = "regression"
TASKS = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
DEFAULT_METRIC = {SINGLE_LABEL: "accuracy", MULTI_LABEL: "f2_samples", REGRESSION: "rmse"}

# Two scores closer than this (relative to their size, at least 1) are equal: a weight search or a
# tie must never be decided by floating-point rounding, which differs between CPUs and BLAS builds.
TOLERANCE = 1e-9


def beats(a: float, b: float, higher_is_better: bool, tolerance: float = TOLERANCE) -> bool:
    """Whether score `a` beats `b` by more than the tolerance (relative to their size, at least 1);
    nan beats nothing. Every metric's `better`, single-label or not."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    margin = tolerance * max(1.0, abs(a), abs(b))
    return a - b > margin if higher_is_better else b - a > margin


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    needs_probabilities: bool  # scores the probabilities (log_loss, roc_auc), not the argmax label
    _scorer: Callable[[np.ndarray, np.ndarray, np.ndarray], float] = field(repr=False, compare=False)
    ranks: tuple[int, ...] | None = None  # rank of each class index in the competition's order

    def score(self, labels: np.ndarray, probs: np.ndarray) -> float:
        """The metric of `probs` (N, C) against `labels` (N,): class indices into the C columns."""
        labels = np.asarray(labels)
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or labels.shape != probs.shape[:1]:
            raise LedgerError(f"{self.name}: expected labels (N,) and probabilities (N, C), "
                              f"got {labels.shape} and {probs.shape}")
        classes = probs.shape[1]
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise LedgerError(f"{self.name}: class indices must lie in 0..{classes - 1}")
        if len(labels) == 0:
            return float("nan")
        with warnings.catch_warnings():
            # Undefined figures come back as nan (documented above); rows of float32 softmax
            # outputs miss 1 by ~1e-7, which scikit-learn's float64 check would warn about.
            warnings.simplefilter("ignore")
            return float(self._scorer(labels.astype(np.int64), probs, self.class_ranks(classes)))

    def class_ranks(self, classes: int) -> np.ndarray:
        """Rank of each class index: the order `ordered` set, else the index order."""
        if self.ranks is None:
            return np.arange(classes)
        if len(self.ranks) != classes:
            raise LedgerError(f"{self.name}: the class order has {len(self.ranks)} classes, the "
                              f"probabilities {classes}")
        return np.asarray(self.ranks)

    def better(self, a: float, b: float, tolerance: float = TOLERANCE) -> bool:
        return beats(a, b, self.higher_is_better, tolerance)

    def ordered(self, vocab: Sequence[str], class_order: Sequence[str] | None = None) -> Metric:
        """This metric over `vocab` (the column order of the probabilities) ranked by
        `class_order` (default: sorted, numerically when every class name is a number)."""
        return dataclasses.replace(self, ranks=tuple(int(r) for r in class_ranks(vocab, class_order)))


def class_ranks(vocab: Sequence[str], class_order: Sequence[str] | None = None) -> np.ndarray:
    """Rank of each vocab class in `class_order`, which must name every class once."""
    vocab = [str(v) for v in vocab]
    if class_order is None:
        order = sorted(vocab, key=_natural) if all(_is_number(v) for v in vocab) else sorted(vocab)
    else:
        order = [str(c) for c in class_order]
        missing, extra = sorted(set(vocab) - set(order)), sorted(set(order) - set(vocab))
        if missing or extra or len(order) != len(vocab):
            raise LedgerError("class_order must name every class once"
                              + (f"; missing {few(missing, limit=5, quote=False)}" if missing else "")
                              + (f"; not a class: {few(extra, limit=5, quote=False)}" if extra else "")
                              + ("; a class named twice" if not (missing or extra) else ""))
    position = {name: i for i, name in enumerate(order)}
    return np.array([position[v] for v in vocab], dtype=np.int64)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _natural(text: str) -> float:
    return float(text)


# ---------------------------------------------------------------- scorers (labels, probs, ranks)


def _accuracy(labels, probs, ranks) -> float:
    from sklearn.metrics import accuracy_score

    return accuracy_score(labels, probs.argmax(axis=1))


def _error_rate(labels, probs, ranks) -> float:
    return 1.0 - _accuracy(labels, probs, ranks)


def _f1(average: str):
    def scorer(labels, probs, ranks) -> float:
        from sklearn.metrics import f1_score

        # zero_division=0 is scikit-learn's default value without its warning.
        return f1_score(labels, probs.argmax(axis=1), average=average, zero_division=0)

    return scorer


def _log_loss(labels, probs, ranks) -> float:
    from sklearn.metrics import log_loss

    # Positional: scikit-learn 1.9 renamed the keyword y_pred to y_proba.
    return log_loss(labels, probs, labels=np.arange(probs.shape[1]))


def _roc_auc(labels, probs, ranks) -> float:
    from sklearn.metrics import roc_auc_score

    classes = probs.shape[1]
    present = np.bincount(labels, minlength=classes) > 0
    if classes == 2:
        positive = int(np.argmax(ranks))  # the second class in order
        if not present.all():
            return float("nan")  # one class only: no pair to rank
        return roc_auc_score(labels == positive, probs[:, positive])
    if not present.all():
        return float("nan")  # a class without positives has no one-vs-rest AUC
    return roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(classes))


def _qwk(labels, probs, ranks) -> float:
    from sklearn.metrics import cohen_kappa_score

    truth, guess = ranks[labels], ranks[probs.argmax(axis=1)]
    if len(np.unique(np.concatenate([truth, guess]))) < 2:
        return float("nan")  # one class in truth and guess alike: chance agreement is total, kappa 0/0
    return cohen_kappa_score(truth, guess, weights="quadratic", labels=np.arange(len(ranks)))


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", True, False, _accuracy),
    Metric("error_rate", False, False, _error_rate),
    Metric("f1_macro", True, False, _f1("macro")),
    Metric("f1_micro", True, False, _f1("micro")),
    Metric("f1_weighted", True, False, _f1("weighted")),
    Metric("log_loss", False, True, _log_loss),
    Metric("roc_auc", True, True, _roc_auc),
    Metric("qwk", True, False, _qwk),
)}
NAMES = tuple(METRICS)
ACCURACY = METRICS["accuracy"]
LOG_LOSS = METRICS["log_loss"]


def metric_by_name(name: str, vocab: Sequence[str] | None = None,
                   class_order: Sequence[str] | None = None) -> Metric:
    """The metric called `name`; with `vocab`, ranked by `class_order` (see `Metric.ordered`)."""
    if name not in METRICS:
        raise LedgerError(f"unknown metric {name!r}; choices: {', '.join(NAMES)}")
    metric = METRICS[name]
    return metric if vocab is None else metric.ordered(vocab, class_order)


def format_score(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"  # value != value: nan
