"""Score a submission CSV against the held-back solution, as Kaggle's leaderboard would.

Both files have the id column first and the label column second; the submission must use the
solution's column names. Rows are matched by id, so row order does not affect the score (the
ensemble's tests check order against the sample submission separately).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ledger.errors import LedgerError

_EXAMPLES = 5  # ids named in an error message: enough to spot the pattern, short enough for one line


@dataclass(frozen=True, eq=False)  # eq=False: comparing DataFrames with == is not a yes/no
class ScoreReport:
    accuracy: float  # fraction of solution ids whose submitted label is right
    n: int  # rows scored
    per_class: pd.DataFrame  # label, n, correct, accuracy; one row per true label, sorted by label


def _examples(ids) -> str:
    return ", ".join(str(i) for i in list(ids)[:_EXAMPLES])


def _read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"{path}: file not found")
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


def score_submission(submission: Path, solution: Path) -> ScoreReport:
    """Accuracy of `submission` against `solution`, overall and per true class."""
    truth = _read_table(solution)
    id_column, label_column = truth.columns[0], truth.columns[1]
    guesses = _read_table(submission)
    for column in (id_column, label_column):
        if column not in guesses.columns:
            raise LedgerError(
                f"{submission}: no column {column!r} (the solution {solution} has columns {id_column}, {label_column})"
            )
    if guesses.columns[0] != id_column:
        # Duplicates were checked on the first column; the matching below uses the named one.
        raise LedgerError(f"{submission}: the first column must be {id_column!r}, not {guesses.columns[0]!r}")
    if truth.empty:
        raise LedgerError(f"{solution}: has no rows to score")

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

    merged = truth[[id_column, label_column]].merge(
        guesses[[id_column, label_column]], on=id_column, suffixes=("_true", "_submitted"), validate="one_to_one"
    )
    merged["correct"] = merged[f"{label_column}_true"] == merged[f"{label_column}_submitted"]
    per_class = (
        merged.groupby(f"{label_column}_true", sort=True)["correct"]
        .agg(n="size", correct="sum")
        .rename_axis("label")
        .reset_index()
    )
    per_class["correct"] = per_class["correct"].astype(int)
    per_class["accuracy"] = per_class["correct"] / per_class["n"]
    return ScoreReport(accuracy=float(merged["correct"].mean()), n=len(merged), per_class=per_class)
