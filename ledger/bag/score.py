"""Score a submission CSV against the held-back solution, as Kaggle's leaderboard would, on the
competition's metric (ledger.bag.metrics).

The solution has the id column first and the true class names second. The submission has the same
id column first, then either the solution's label column (class names; or, for a two-class
competition, the probability of one class), or one probability column per class, named as the
classes. Rows are matched by id, so row order does not affect the score (the ensemble's tests check
order against the sample submission separately).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ledger.errors import LedgerError
from ledger.bag.metrics import metric_by_name
from ledger.bag.submission_shape import LABEL, PER_CLASS, POSITIVE

_EXAMPLES = 5  # ids named in an error message: enough to spot the pattern, short enough for one line
_ROW_SUM = 1e-5  # probability rows must sum to 1 this closely (scikit-learn's multiclass AUC asks as much)


@dataclass(frozen=True, eq=False)  # eq=False: comparing DataFrames with == is not a yes/no
class ScoreReport:
    accuracy: float  # fraction of solution ids whose submitted (argmax) label is right
    n: int  # rows scored
    per_class: pd.DataFrame  # label, n, correct, accuracy; one row per true label, sorted by label
    metric: str = "accuracy"
    score: float = float("nan")  # the metric's figure
    shape: str = LABEL  # what the submission holds: labels, per_class or positive probabilities


def _examples(ids) -> str:
    return ", ".join(str(i) for i in list(ids)[:_EXAMPLES])


def _read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a CSV file" if path.is_dir() else \
            "is not a regular file (a device or a pipe), not a CSV file" if path.exists() else "file not found"
        raise LedgerError(f"{path}: {what}")
    try:
        # All text, no NA guessing: ids like "007" or a class called "None" must survive as written.
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LedgerError(f"{path}: cannot read as CSV ({reason})") from None
    if table.shape[1] < 2:
        raise LedgerError(f"{path}: needs an id column and a label column, found {list(table.columns)}")
    duplicated = table.iloc[:, 0][table.iloc[:, 0].duplicated()].unique()
    if len(duplicated):
        raise LedgerError(
            f"{path}: {len(duplicated)} duplicate ids in column {table.columns[0]!r} (e.g. {_examples(duplicated)})"
        )
    return table


def _probabilities(path: Path, table: pd.DataFrame, columns: Sequence[str], id_column: str) -> np.ndarray:
    """The named columns as floats in [0, 1]; one line naming the first bad id otherwise."""
    values = table[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise LedgerError(f"{path}: id {table[id_column].iloc[row]}: {columns[column]} is "
                          f"{table[columns[column]].iloc[row]!r}, not a probability in [0, 1]")
    return values


def _read_shape(submission: Path, guesses: pd.DataFrame, classes: list[str], label_column: str,
                metric_name: str | None) -> tuple[str, list[str]]:
    """What the submission holds, and the columns that hold it."""
    named = [c for c in guesses.columns[1:] if c in set(classes)]
    if len(named) >= 2:
        # Columns named as the solution's classes: every column after the id is a class then (the
        # solution may lack some classes), each holding its probability.
        return PER_CLASS, list(guesses.columns[1:])
    if label_column not in guesses.columns:
        return (POSITIVE, named) if named else (LABEL, [label_column])
    values = guesses[label_column]
    numbers = pd.to_numeric(values, errors="coerce")
    wants_probabilities = metric_name is not None and metric_by_name(metric_name).needs_probabilities
    # Numbers that are not all class names are probabilities; so are numbers a probability metric asks for.
    if numbers.notna().all() and (wants_probabilities or not values.isin(classes).all()):
        return POSITIVE, [label_column]
    return LABEL, [label_column]


def score_submission(submission: Path, solution: Path, metric: str | None = None,
                     class_order: Sequence[str] | None = None) -> ScoreReport:
    """`metric` (default: accuracy for labels, log_loss for probabilities) of `submission` against
    `solution`, with accuracy overall and per true class. `class_order`: the classes in order
    (kappa; the positive class of a two-class probability column is the last)."""
    truth = _read_table(solution)
    id_column, label_column = truth.columns[0], truth.columns[1]
    guesses = _read_table(submission)
    if guesses.columns[0] != id_column:
        # Duplicates were checked on the first column; the matching below uses the named one.
        raise LedgerError(f"{submission}: the first column must be {id_column!r}, not {guesses.columns[0]!r}")
    if truth.empty:
        raise LedgerError(f"{solution}: has no rows to score")
    classes = sorted(set(truth[label_column]) | set(class_order or ()))
    shape, columns = _read_shape(submission, guesses, classes, label_column, metric)
    for column in columns if shape != LABEL else [label_column]:
        if column not in guesses.columns:
            raise LedgerError(
                f"{submission}: no column {column!r} (the solution {solution} has columns {id_column}, {label_column})"
            )
    _check_ids(submission, solution, truth, guesses, id_column)
    merged = truth[[id_column, label_column]].rename(columns={label_column: "_truth"}).merge(
        guesses, on=id_column, validate="one_to_one")

    if shape == LABEL:
        vocab = sorted(set(classes) | set(merged[label_column]))
        probs = np.eye(len(vocab))[pd.Index(vocab).get_indexer(merged[label_column])]
    elif shape == PER_CLASS:
        vocab = sorted(columns)
        unknown = sorted(set(merged["_truth"]) - set(vocab))
        if unknown:
            raise LedgerError(f"{submission}: no probability column for class(es) {_examples(unknown)} of {solution}")
        probs = _probabilities(submission, merged, vocab, id_column)
        sums = probs.sum(axis=1)
        off = np.abs(sums - 1) > _ROW_SUM
        if off.any():
            row = int(np.argmax(off))
            raise LedgerError(f"{submission}: the probabilities of id {merged[id_column].iloc[row]} sum to "
                              f"{sums[row]:.6g}, not 1 ({np.count_nonzero(off)} such rows)")
    else:
        vocab = classes
        if len(vocab) != 2:
            raise LedgerError(f"{submission}: one probability column {columns[0]!r}, but {solution} has "
                              f"{len(vocab)} classes ({_examples(vocab)}): it needs one column per class")
        ranks = metric_by_name("roc_auc", vocab, class_order).class_ranks(2)
        positive = vocab.index(columns[0]) if columns[0] in vocab else int(np.argmax(ranks))
        p = _probabilities(submission, merged, columns, id_column)[:, 0]
        probs = np.stack([1 - p, p] if positive == 1 else [p, 1 - p], axis=1)

    name = metric or ("accuracy" if shape == LABEL else "log_loss")
    scorer = metric_by_name(name, vocab, class_order)
    if scorer.needs_probabilities and shape == LABEL:
        raise LedgerError(f"{submission}: holds labels in {label_column!r}; metric {name} scores probabilities "
                          f"(one column per class, or one for the positive class)")
    if not scorer.needs_probabilities and shape != LABEL:
        raise LedgerError(f"{submission}: holds probabilities; metric {name} scores labels (use --metric log_loss "
                          f"or roc_auc)")
    labels = pd.Index(vocab).get_indexer(merged["_truth"])
    predicted = np.asarray(vocab)[probs.argmax(axis=1)]  # ties: the first class, as the bag's labels
    merged["correct"] = merged["_truth"].to_numpy() == predicted
    per_class = (
        merged.groupby("_truth", sort=True)["correct"]
        .agg(n="size", correct="sum")
        .rename_axis("label")
        .reset_index()
    )
    per_class["correct"] = per_class["correct"].astype(int)
    per_class["accuracy"] = per_class["correct"] / per_class["n"]
    return ScoreReport(accuracy=float(merged["correct"].mean()), n=len(merged), per_class=per_class,
                       metric=name, score=scorer.score(labels, probs), shape=shape)


def _check_ids(submission: Path, solution: Path, truth: pd.DataFrame, guesses: pd.DataFrame, id_column: str) -> None:
    truth_ids, guess_ids = set(truth[id_column]), set(guesses[id_column])
    problems = []
    extra = [i for i in guesses[id_column] if i not in truth_ids]
    if extra:
        problems.append(f"{len(extra)} ids in {submission} are not in {solution} (e.g. {_examples(extra)})")
    missing = [i for i in truth[id_column] if i not in guess_ids]
    if missing:
        problems.append(f"{len(missing)} ids in {solution} are not in {submission} (e.g. {_examples(missing)})")
    if problems:
        raise LedgerError("; ".join(problems))


# ---------------------------------------------------------------- tags and numbers


def score_vectors(submission: Path, solution: Path, metric: str, task: str) -> ScoreReport:
    """A multi_label or regression submission against its solution, as scikit-learn scores them
    (ledger.bag.task_metrics). Tags: one column of space-separated tags (an empty cell: none), or
    one column per tag holding 0/1 or, for roc_auc and log_loss, probabilities. Numbers: the
    solution's columns after the id, each in the submission's column of the same name (one target
    may sit in any one column). `per_class` holds each tag's or target's figures."""
    from ledger.bag.task_metrics import task_metric

    scorer = task_metric(metric, task)
    truth_table, guesses = _read_table(solution), _read_table(submission)
    id_column = truth_table.columns[0]
    if guesses.columns[0] != id_column:
        raise LedgerError(f"{submission}: the first column must be {id_column!r}, not {guesses.columns[0]!r}")
    if truth_table.empty:
        raise LedgerError(f"{solution}: has no rows to score")
    _check_ids(submission, solution, truth_table, guesses, id_column)
    guesses = guesses.set_index(id_column).loc[truth_table[id_column]].reset_index()
    if task == "regression":
        names = list(truth_table.columns[1:])
        columns = names if set(names) <= set(guesses.columns) else list(guesses.columns[1:2]) * (len(names) == 1)
        if len(columns) != len(names):
            raise LedgerError(f"{submission}: no column for targets {_examples(set(names) - set(guesses.columns))} "
                              f"of {solution}")
        truth = _numbers(solution, truth_table, names, id_column)
        preds = _numbers(submission, guesses, columns, id_column)
    else:
        names, truth = _tags(solution, truth_table, id_column, None)
        names, truth, preds = _tag_predictions(submission, guesses, id_column, names, truth, scorer)
    per_target = pd.DataFrame({"label": names, "n": len(truth), "correct": 0, "accuracy": float("nan")})
    if task == "regression":
        per_target["rmse"] = np.sqrt(((truth - preds) ** 2).mean(axis=0))
    else:
        per_target["n"] = truth.sum(axis=0).astype(int)  # the tag's true positives in the solution
        per_target["correct"] = ((preds >= 0.5) & (truth == 1)).sum(axis=0).astype(int)
        per_target["accuracy"] = per_target["correct"] / per_target["n"].clip(lower=1)
    return ScoreReport(accuracy=float("nan"), n=len(truth), per_class=per_target, metric=metric,
                       score=scorer.score(truth, preds), shape=task)


def _numbers(path: Path, table: pd.DataFrame, columns: Sequence[str], id_column: str) -> np.ndarray:
    values = table[list(columns)].apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce")).to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise LedgerError(f"{path}: id {table[id_column].iloc[row]}: {columns[column]} is "
                          f"{table[columns[column]].iloc[row]!r}, not a number ({int(bad.sum())} such cells)")
    return values


def _tags(path: Path, table: pd.DataFrame, id_column: str, names: list[str] | None) -> tuple[list[str], np.ndarray]:
    """(tag names, 0/1 (N, T)) of a table of one tags column, or of 0/1 columns named as tags."""
    if table.shape[1] == 2 and (names is None or table.columns[1] not in names):
        words = [cell.split() for cell in table.iloc[:, 1]]
        found = sorted({w for row in words for w in row} | set(names or ()))
        index = {name: i for i, name in enumerate(found)}
        matrix = np.zeros((len(table), len(found)))
        for row, tags in enumerate(words):
            matrix[row, [index[t] for t in tags]] = 1
        return found, matrix
    columns = list(table.columns[1:])
    values = _numbers(path, table, columns, id_column)
    return columns, values


def _tag_predictions(submission: Path, guesses: pd.DataFrame, id_column: str, names: list[str], truth: np.ndarray,
                     scorer) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The submission's tags or tag columns over the union of the solution's and its own tags."""
    guess_names, preds = _tags(submission, guesses, id_column, names)
    if guesses.shape[1] > 2 or guesses.columns[1] in names:
        unknown = sorted(set(guess_names) - set(names))
        missing = sorted(set(names) - set(guess_names))
        if unknown or missing:
            raise LedgerError(f"{submission}: tag columns differ from the solution's"
                              + (f"; no column for {_examples(missing)}" if missing else "")
                              + (f"; not a tag of the solution: {_examples(unknown)}" if unknown else ""))
    elif scorer.needs_probabilities:
        raise LedgerError(f"{submission}: holds tags in {guesses.columns[1]!r}; metric {scorer.name} scores "
                          f"probabilities (one column per tag)")
    union = sorted(set(names) | set(guess_names))
    return union, _over(truth, names, union), _over(preds, guess_names, union)


def _over(matrix: np.ndarray, names: list[str], union: list[str]) -> np.ndarray:
    out = np.zeros((len(matrix), len(union)))
    for j, name in enumerate(names):
        out[:, union.index(name)] = matrix[:, j]
    return out
