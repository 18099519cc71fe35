"""Matching ids and classes between runs and the sample submission.

Ids are compared as strings, exactly first; ids left unmatched are then tried with the file
extension stripped from one side ("100330.jpg" == "100330"), because Kaggle sample submissions
carry the extension in some competitions and not in others while runs keep what the data layer
gave. Two different extensions ("1.jpg", "1.png") never match. Classes match by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ledger.runs.artifacts import Predictions
from ledger.errors import LedgerError

_EXAMPLES = 3  # offending ids or classes named in an error message


def as_str(values: Sequence[str] | np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(str)


def _strip_extensions(ids: np.ndarray) -> np.ndarray:
    # Only the last suffix after the last path separator, like os.path.splitext.
    return pd.Series(ids, dtype=object).str.replace(r"\.[^./\\]+$", "", regex=True).to_numpy(str)


def few(values, limit: int = _EXAMPLES, quote: bool = True) -> str:
    """At most `limit` values for an error line (quoted, so blanks show), and how many more there are."""
    values = [repr(str(v)) if quote else str(v) for v in values]
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


class IdMatcher:
    """Positions of target ids (the sample-submission order) inside each source id array.

    Runs trained on the same data share one id order, so the positions are computed once per
    distinct source order (keyed by its bytes) and reused: one hash lookup per run, not per row.
    """

    def __init__(self, target_ids: np.ndarray):
        self.target = target_ids
        self._cache: dict[tuple[str, bytes], np.ndarray] = {}

    def positions(self, source_ids: np.ndarray) -> np.ndarray:
        """Index into source for every target id; -1 where the target id has no match."""
        key = (source_ids.dtype.str, source_ids.tobytes())
        if key not in self._cache:
            self._cache[key] = self._match(source_ids)
        return self._cache[key]

    def _match(self, source_ids: np.ndarray) -> np.ndarray:
        positions = lookup(source_ids, self.target)
        if (positions >= 0).all():
            return positions  # the common case: one hash lookup
        # Strip one side at a time, never both: "1.jpg" must not match "1.png", and an id
        # without extension may hold dots ("img.001" matches "img.001.png").
        exact = positions >= 0
        positions[~exact] = lookup(source_ids, _strip_extensions(self.target[~exact]))
        missing = positions < 0
        if missing.any():
            positions[missing] = lookup(_strip_extensions(source_ids), self.target[missing])
        # A stripped match may not take a prediction that another target id already matched
        # ("a" and "a.png" both in the target): exact matches win, ambiguous ones match nothing.
        shared = pd.Series(positions).duplicated(keep=False).to_numpy()
        positions[shared & ~exact & (positions >= 0)] = -1
        return positions


def lookup(source_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """Hash lookup of every target in source, -1 where absent. An id that occurs more than once
    in source is ambiguous and matches nothing."""
    index = pd.Index(source_ids)
    if index.is_unique:
        return index.get_indexer(target_ids)
    kept = np.flatnonzero(~index.duplicated(keep=False))
    positions = index[kept].get_indexer(target_ids)
    result = np.full(len(target_ids), -1)
    result[positions >= 0] = kept[positions[positions >= 0]]
    return result


def check_unique(ids: np.ndarray, what: str) -> None:
    index = pd.Index(ids)
    if not index.is_unique:
        raise LedgerError(f"{what} has duplicate ids: {few(index[index.duplicated()].unique())}")


def column_positions(run_id: str, run_vocab: np.ndarray, vocab: np.ndarray, what: str) -> np.ndarray:
    """Column of each vocab class in this run's probabilities, matched by class name."""
    if set(run_vocab) != set(vocab) or len(run_vocab) != len(vocab):
        missing = sorted(set(vocab) - set(run_vocab))
        extra = sorted(set(run_vocab) - set(vocab))
        raise LedgerError(
            f"run {run_id}: {what} classes differ from the ensemble's"
            + (f"; missing {few(missing)}" if missing else "")
            + (f"; extra {few(extra)}" if extra else "")
            + ("; duplicate class names" if not (missing or extra) else "")
        )
    return pd.Index(run_vocab).get_indexer(vocab)


def check_shape(run_id: str, preds: Predictions, what: str) -> None:
    if preds.probs.shape != (len(preds.ids), len(preds.vocab)):
        raise LedgerError(
            f"run {run_id}: {what} probs have shape {preds.probs.shape}, expected "
            f"({len(preds.ids)}, {len(preds.vocab)}) from its ids and vocab"
        )
