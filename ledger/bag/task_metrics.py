"""Metrics of the multi-label and regression tasks, scored as scikit-learn scores them.

Both arrays are (N, T) floats. For `multi_label`, truth is 0/1 per tag and the predictions are
sigmoid probabilities; for `regression`, both hold numbers, one column per target. The same call
serves an epoch, the out-of-bag estimate, the weight search and `ledger score`, as in `metrics`.

Decided metrics score decisions made from the predictions, not the predictions themselves: the
F-scores score tags at thresholds and `qwk` scores grades at cut-offs. The decision is passed in
(chosen on out-of-bag predictions by `ledger.bag.decisions`). Without one, a tag is on from 0.5
(`>=`; thresholds lie in (0, 1], so predictions that are already 0/1 stay as they are whatever the
decision), and a value takes the nearest grade seen in the truth, half-way going up: what the
midpoint cut-offs decide. Predictions that are all whole numbers, with whole grades in the truth,
are grades already (a submission's) and are scored as they are, with or without a decision.

Choices, each the argument `ledger score` passes to scikit-learn, so that a test can call it alike:
- F-scores use `zero_division=1.0`: an image with no true and no predicted tag is perfect (1), and
  a tag neither true nor predicted anywhere scores 1 in `f1_macro`. scikit-learn's default ("warn")
  scores both 0, punishing the right answer "no tag".
- `roc_auc` averages the columns that have both classes in the truth (a tag never or always present
  has no AUC); nan when no column has. `log_loss` is the mean over columns of the binary log loss.
- `rmse` and `mae` average the columns uniformly; `qwk` takes one column and scikit-learn's labels
  (the sorted grades present in truth or guess), nan with a single grade in both.
A figure that is not defined (no image, AUC of a one-class tag) is nan, never an exception.
scikit-learn is imported inside the scorers (see `metrics`: ~0.9 s that `ledger --help` should not pay).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ledger.errors import LedgerError
from ledger.bag.metrics import NAMES as METRIC_NAMES, TOLERANCE, beats

TASKS = ("multi_label", "regression")
# zero_division for every F-score: see the module docstring.
ZERO_DIVISION = 1.0


@dataclass(frozen=True)
class TaskMetric:
    name: str
    task: str  # "multi_label" or "regression"
    higher_is_better: bool
    needs_probabilities: bool  # scores the probabilities or values as they are (roc_auc, log_loss, rmse, mae)
    decided: bool  # scores decisions made from the predictions: tags at thresholds, grades at cut-offs
    _scorer: Callable[[np.ndarray, np.ndarray], float] = field(repr=False, compare=False)
    # The F-score's beta and average ("samples" or "macro"), so that the threshold search in
    # `decisions` can compute the same figure from counts instead of calling scikit-learn 99 times.
    beta: float | None = None
    average: str | None = None

    @property
    def decision_kind(self) -> str | None:
        """The kind of decision this metric scores: "thresholds", "cutoffs", or None."""
        if not self.decided:
            return None
        return "cutoffs" if self.task == "regression" else "thresholds"

    # `Decision` is named as a string only: `decisions` imports this module, not the other way round.
    def score(self, truth, preds, decision: Decision | None = None) -> float:  # noqa: F821
        """The metric of `preds` against `truth`, both (N, T); a decided metric scores
        `decision.apply(preds)`, a metric of probabilities or values ignores `decision`."""
        truth, preds = checked_arrays(self, truth, preds)
        if len(truth) == 0:
            return float("nan")
        if self.decided:
            preds = self._decide(truth, preds, decision)
        with warnings.catch_warnings():
            # Undefined figures come back as nan (see the module docstring), not as warnings.
            warnings.simplefilter("ignore")
            return float(self._scorer(truth, preds))

    def better(self, a: float, b: float, tolerance: float = TOLERANCE) -> bool:
        return beats(a, b, self.higher_is_better, tolerance)

    def _decide(self, truth: np.ndarray, preds: np.ndarray, decision) -> np.ndarray:
        if decision is not None and decision.kind != self.decision_kind:
            raise LedgerError(f"{self.name}: needs {self.decision_kind}, got {decision.kind}")
        if self.task == "regression" and _whole(preds) and _whole(truth):
            # Already grades (a submission's): scored as they are, as scikit-learn scores the file.
            return preds
        if decision is not None:
            return np.asarray(decision.apply(preds), dtype=np.float64)
        if self.task == "multi_label":
            return (preds >= 0.5).astype(np.float64)  # 0/1 predictions stay as they are
        return nearest_grade(preds, np.unique(truth))


def checked_arrays(metric: TaskMetric, truth, preds) -> tuple[np.ndarray, np.ndarray]:
    """`truth` and `preds` as float64 (N, T) arrays, or a one-line LedgerError saying what is wrong."""
    name = metric.name
    try:
        truth, preds = np.asarray(truth, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    except (TypeError, ValueError):
        raise LedgerError(f"{name}: truth and predictions must be arrays of numbers") from None
    if truth.ndim != 2 or truth.shape != preds.shape or truth.shape[1] < 1:
        raise LedgerError(f"{name}: expected truth and predictions of one shape (N, T) with T >= 1, "
                          f"got {truth.shape} and {preds.shape}")
    if metric.decision_kind == "cutoffs" and truth.shape[1] != 1:
        raise LedgerError(f"{name}: scores one column of grades, got {truth.shape[1]} columns")
    if not np.isfinite(truth).all():
        raise LedgerError(f"{name}: the truth holds {_count_bad(truth)} non-finite values (nan or inf)")
    if not np.isfinite(preds).all():
        raise LedgerError(f"{name}: the predictions hold {_count_bad(preds)} non-finite values (nan or inf)")
    if metric.task == "multi_label":
        if not np.isin(truth, (0.0, 1.0)).all():
            raise LedgerError(f"{name}: the truth of a multi-label task must be 0 or 1 per tag")
        if preds.size and (preds.min() < 0.0 or preds.max() > 1.0):
            raise LedgerError(f"{name}: predictions of a multi-label task are probabilities in 0..1, "
                              f"got values from {preds.min():g} to {preds.max():g}")
    return truth, preds


def _whole(values: np.ndarray) -> bool:
    return bool((values == np.round(values)).all())


def _count_bad(values: np.ndarray) -> int:
    return int((~np.isfinite(values)).sum())


def nearest_grade(preds: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """Each prediction as the nearest of the ascending `grades`; half-way goes to the higher one.

    The same as cutting at the midpoints between consecutive grades with `>=`, the starting point
    of the cut-off search, so that scoring without a decision equals scoring with the midpoints."""
    midpoints = (grades[:-1] + grades[1:]) / 2
    return grades[np.searchsorted(midpoints, preds, side="right")]


# ---------------------------------------------------------------- scorers (truth, preds)


def _fbeta(beta: float, average: str):
    def scorer(truth, tags) -> float:
        from sklearn.metrics import fbeta_score

        if truth.shape[1] == 1:
            # scikit-learn reads one column as a binary task: it refuses sample averages and would
            # macro-average over the classes 0 and 1. With one tag, the macro mean is that tag's F
            # (binary). A tag neither true nor predicted anywhere changes no image's counts, so the
            # sample mean is the same with one added, which scikit-learn then computes.
            if average == "macro":
                return fbeta_score(truth[:, 0], tags[:, 0], beta=beta, zero_division=ZERO_DIVISION)
            truth, tags = (np.hstack([a, np.zeros_like(a)]) for a in (truth, tags))
        return fbeta_score(truth.astype(np.int64), tags.astype(np.int64), beta=beta, average=average,
                           zero_division=ZERO_DIVISION)

    return scorer


def _roc_auc(truth, probs) -> float:
    from sklearn.metrics import roc_auc_score

    positives = truth.sum(axis=0)
    defined = (positives > 0) & (positives < len(truth))  # both classes present in the column
    if not defined.any():
        return float("nan")
    return roc_auc_score(truth[:, defined], probs[:, defined], average="macro")


def _log_loss(truth, probs) -> float:
    from sklearn.metrics import log_loss

    # Positional: scikit-learn 1.9 renamed the keyword y_pred to y_proba. labels=[0, 1] because a
    # column may hold one class only.
    return float(np.mean([log_loss(truth[:, t], probs[:, t], labels=[0, 1])
                          for t in range(truth.shape[1])]))


def _rmse(truth, preds) -> float:
    # root_mean_squared_error exists from scikit-learn 1.4 on; the project requires 1.5.
    from sklearn.metrics import root_mean_squared_error

    return root_mean_squared_error(truth, preds, multioutput="uniform_average")


def _mae(truth, preds) -> float:
    from sklearn.metrics import mean_absolute_error

    return mean_absolute_error(truth, preds, multioutput="uniform_average")


def _qwk(truth, grades) -> float:
    from sklearn.metrics import cohen_kappa_score

    truth, grades = truth[:, 0], grades[:, 0]
    if len(np.unique(np.concatenate([truth, grades]))) < 2:
        return float("nan")  # one grade in truth and guess alike: chance agreement is total, kappa 0/0
    return cohen_kappa_score(truth, grades, weights="quadratic")


_ALL = (
    TaskMetric("f1_samples", "multi_label", True, False, True, _fbeta(1.0, "samples"), 1.0, "samples"),
    TaskMetric("f2_samples", "multi_label", True, False, True, _fbeta(2.0, "samples"), 2.0, "samples"),
    TaskMetric("f1_macro", "multi_label", True, False, True, _fbeta(1.0, "macro"), 1.0, "macro"),
    TaskMetric("roc_auc", "multi_label", True, True, False, _roc_auc),
    TaskMetric("log_loss", "multi_label", False, True, False, _log_loss),
    TaskMetric("rmse", "regression", False, True, False, _rmse),
    TaskMetric("mae", "regression", False, True, False, _mae),
    TaskMetric("qwk", "regression", True, False, True, _qwk),
)
TASK_METRICS: dict[str, dict[str, TaskMetric]] = {
    task: {m.name: m for m in _ALL if m.task == task} for task in TASKS}


# Every metric name a spec may give, single-label ones first; which of them a task takes is checked by
# the spec's loader.
METRIC_CHOICES = tuple(dict.fromkeys([*METRIC_NAMES, *(name for task in TASK_METRICS.values() for name in task)]))


def task_metric(name: str, task: str) -> TaskMetric:
    """The metric called `name` of `task`; a one-line LedgerError naming the choices otherwise."""
    if task not in TASK_METRICS:
        raise LedgerError(f"unknown task {task!r} for a task metric; choices: {', '.join(TASKS)}")
    metrics = TASK_METRICS[task]
    if name not in metrics:
        raise LedgerError(f"unknown metric {name!r} for task {task}; choices: {', '.join(metrics)}")
    return metrics[name]


# ---------------------------------------------------------------- out of bag


def tie_breaker(metric, task: str):
    """What settles a tie on a metric of decisions: the probabilities' log loss (classes, tags), the
    numbers' RMSE (grades); None for a metric that scores the predictions themselves."""
    if metric.needs_probabilities:
        return None
    if task in TASK_METRICS:
        return task_metric("log_loss" if task == "multi_label" else "rmse", task)
    from ledger.bag.metrics import LOG_LOSS

    return LOG_LOSS
