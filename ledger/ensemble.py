"""Bag finished runs into one submission: align, weighted mean, argmax, CSV.

Plain functions on in-memory data; the store loads the runs and the CLI prints the results.

Matching rules, used for both the test ids of runs and the ids of the sample submission:
ids are compared as strings, exactly first; ids left unmatched are then tried with the file
extension stripped from one side ("100330.jpg" == "100330"), because Kaggle sample submissions
carry the extension in some competitions and not in others while runs keep what the data layer
gave. Two different extensions ("1.jpg", "1.png") never match.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ledger.artifacts import Predictions
from ledger.errors import LedgerError
from ledger.submission_shape import LABEL, Shape, fill

_EXAMPLES = 3  # offending ids or classes named in an error message


@dataclass(frozen=True)
class RunInput:
    """One finished run, as the store hands it over."""

    run_id: str
    model: str  # the spec's model entry it is a run of: weights apply per entry
    test: Predictions
    valid: Predictions | None = None


@dataclass(frozen=True, eq=False)
class BagResult:
    ids: np.ndarray  # str (N,), in the order bag() was given
    probs: np.ndarray  # float32 (N, C), weighted mean over runs
    labels: np.ndarray  # str (N,), vocab[argmax]
    vocab: np.ndarray  # str (C,)
    weights: dict[str, float]  # normalised weight per run_id


# ---------------------------------------------------------------- weights


def normalise_weights(runs: Sequence[RunInput], weights: Mapping[str, float]) -> dict[str, float]:
    """Weight per run_id, summing to 1. The bag is a weighted mean of ENTRIES, each entry the plain
    mean of its runs: an entry weighs what the spec (or --weight) says (default 1) whatever its run
    count, and each of its runs a 1/runs share of that. More runs of an entry lower its variance
    without tilting the bag towards it. The out-of-bag estimate (ledger.oob) is built the same way,
    entry by entry, from the runs that held each image out (one per entry with K folds)."""
    model_names = {run.model for run in runs}
    unknown = sorted(set(weights) - model_names)
    if unknown:
        raise LedgerError(
            f"--weight names unknown model {unknown[0]!r}; models with finished runs: "
            f"{', '.join(sorted(model_names)) or 'none'}"
        )
    for name, weight in weights.items():
        if not np.isfinite(weight) or weight < 0:
            raise LedgerError(f"--weight {name}={weight}: weights must be finite and >= 0")
    entry_weight = {name: float(weights.get(name, 1.0)) for name in model_names}
    total = sum(entry_weight.values())
    if total <= 0:
        raise LedgerError("all ensemble weights are zero: nothing to bag")
    run_count = {name: sum(run.model == name for run in runs) for name in model_names}
    return {run.run_id: entry_weight[run.model] / total / run_count[run.model] for run in runs}


def _weight_vector(runs: Sequence[RunInput], weights: Mapping[str, float]) -> np.ndarray:
    missing = [run.run_id for run in runs if run.run_id not in weights]
    if missing:
        raise LedgerError(f"no weight for run {missing[0]}")
    vector = np.array([weights[run.run_id] for run in runs], dtype=np.float64)
    if not (np.isfinite(vector).all() and (vector >= 0).all() and vector.sum() > 0):
        raise LedgerError("ensemble weights must be finite, >= 0 and not all zero")
    # Renormalise so callers may pass raw weights; normalise_weights already rejected bad ones.
    return vector / vector.sum()


# ---------------------------------------------------------------- id and class matching


def _as_str(values: Sequence[str] | np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(str)


def _strip_extensions(ids: np.ndarray) -> np.ndarray:
    # Only the last suffix after the last path separator, like os.path.splitext.
    return pd.Series(ids, dtype=object).str.replace(r"\.[^./\\]+$", "", regex=True).to_numpy(str)


def _few(values) -> str:
    values = list(values)
    more = f" (+{len(values) - _EXAMPLES} more)" if len(values) > _EXAMPLES else ""
    return ", ".join(repr(str(v)) for v in values[:_EXAMPLES]) + more


class _IdMatcher:
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
        positions = _lookup(source_ids, self.target)
        if (positions >= 0).all():
            return positions  # the common case: one hash lookup
        # Strip one side at a time, never both: "1.jpg" must not match "1.png", and an id
        # without extension may hold dots ("img.001" matches "img.001.png").
        exact = positions >= 0
        positions[~exact] = _lookup(source_ids, _strip_extensions(self.target[~exact]))
        missing = positions < 0
        if missing.any():
            positions[missing] = _lookup(_strip_extensions(source_ids), self.target[missing])
        # A stripped match may not take a prediction that another target id already matched
        # ("a" and "a.png" both in the target): exact matches win, ambiguous ones match nothing.
        shared = pd.Series(positions).duplicated(keep=False).to_numpy()
        positions[shared & ~exact & (positions >= 0)] = -1
        return positions


def _lookup(source_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
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


def _check_unique(ids: np.ndarray, what: str) -> None:
    index = pd.Index(ids)
    if not index.is_unique:
        raise LedgerError(f"{what} has duplicate ids: {_few(index[index.duplicated()].unique())}")


def _column_positions(run_id: str, run_vocab: np.ndarray, vocab: np.ndarray, what: str) -> np.ndarray:
    """Column of each vocab class in this run's probabilities, matched by class name."""
    if set(run_vocab) != set(vocab) or len(run_vocab) != len(vocab):
        missing = sorted(set(vocab) - set(run_vocab))
        extra = sorted(set(run_vocab) - set(vocab))
        raise LedgerError(
            f"run {run_id}: {what} classes differ from the ensemble's"
            + (f"; missing {_few(missing)}" if missing else "")
            + (f"; extra {_few(extra)}" if extra else "")
            + ("; duplicate class names" if not (missing or extra) else "")
        )
    return pd.Index(run_vocab).get_indexer(vocab)


def _check_shape(run_id: str, preds: Predictions, what: str) -> None:
    if preds.probs.shape != (len(preds.ids), len(preds.vocab)):
        raise LedgerError(
            f"run {run_id}: {what} probs have shape {preds.probs.shape}, expected "
            f"({len(preds.ids)}, {len(preds.vocab)}) from its ids and vocab"
        )


# ---------------------------------------------------------------- bagging


def align(
    runs: Sequence[RunInput], ids: Sequence[str], vocab: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Test probabilities of every run as one float32 array [run, ids, vocab].

    Columns are matched by class name (runs may list classes in any order) and rows by id, so
    row i of every run is `ids[i]`. A run whose class set or test id set differs is refused:
    silently dropping or padding rows would bag images that some runs never predicted.
    """
    if not runs:
        raise LedgerError("no finished runs to ensemble")
    target = _as_str(ids)
    _check_unique(target, "the submission")
    vocab = np.sort(_as_str(runs[0].test.vocab)) if vocab is None else _as_str(vocab)
    if len(set(vocab)) != len(vocab):
        raise LedgerError(f"class vocab has duplicate names: {_few(vocab)}")

    matcher = _IdMatcher(target)
    aligned = np.empty((len(runs), len(target), len(vocab)), dtype=np.float32)
    for r, run in enumerate(runs):
        _check_shape(run.run_id, run.test, "test")
        run_ids = _as_str(run.test.ids)
        columns = _column_positions(run.run_id, _as_str(run.test.vocab), vocab, "test")
        rows = matcher.positions(run_ids)
        if len(run_ids) != len(target) or (rows < 0).any():
            _check_unique(run_ids, f"run {run.run_id}: test predictions")
            missing = target[rows < 0]
            unmatched = np.ones(len(run_ids), dtype=bool)
            unmatched[rows[rows >= 0]] = False
            extra = run_ids[unmatched]
            raise LedgerError(
                f"run {run.run_id}: test ids differ from the submission's ({len(run_ids)} vs "
                f"{len(target)})"
                + (f"; missing {_few(missing)}" if len(missing) else "")
                + (f"; extra {_few(extra)}" if len(extra) else "")
            )
        aligned[r] = run.test.probs[rows][:, columns]
    return aligned, vocab


def bag(runs: Sequence[RunInput], weights: Mapping[str, float], ids: Sequence[str]) -> BagResult:
    """Weighted mean of the runs' test probabilities in `ids` order, and its argmax class names."""
    aligned, vocab = align(runs, ids)
    weight_vector = _weight_vector(runs, weights)
    # tensordot sums over the run axis in one BLAS call; float64 weights keep the sum exact enough.
    probs = np.tensordot(weight_vector, aligned, axes=1).astype(np.float32)
    return BagResult(
        ids=_as_str(ids),
        probs=probs,
        labels=vocab[probs.argmax(axis=1)],  # ties go to the first class in vocab order
        vocab=vocab,
        weights={run.run_id: float(w) for run, w in zip(runs, weight_vector)},
    )


# ---------------------------------------------------------------- submission CSV


def read_sample_submission(
    path: Path, id_col: str | None = None, label_col: str | None = None
) -> tuple[pd.DataFrame, str, str]:
    """The sample submission as strings (ids like "001" or "NA" kept verbatim), with its id and
    label column names: the first and second columns unless named."""
    try:
        # index_col=False: never let pandas turn the first column into the index.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except FileNotFoundError:
        raise LedgerError(f"{path}: sample submission not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise LedgerError(f"{path}: unreadable sample submission ({e})") from None
    columns = list(frame.columns)
    id_col = id_col if id_col is not None else columns[0]
    if label_col is None:
        if len(columns) < 2:
            raise LedgerError(f"{path}: sample submission has no label column (columns: {columns})")
        label_col = columns[1]
    for name in (id_col, label_col):
        if name not in columns:
            raise LedgerError(f"{path}: no column {name!r} in the sample submission ({columns})")
    if id_col == label_col:
        raise LedgerError(f"{path}: id and label column are both {id_col!r}")
    return frame, id_col, label_col


def write_submission(
    sample_submission: Path,
    result: BagResult,
    out: Path,
    id_col: str | None = None,
    label_col: str | None = None,
    commit: Callable[[str], object] | None = None,
    shape: Shape | None = None,
) -> pd.DataFrame:
    """Write `out`: the sample submission's columns, header, ids and order, with the columns that
    `shape` names filled (default: the label column holding the predicted class names).

    Written to `.<name>.tmp-<pid>` and renamed, so `out` is the old file or the whole new one, never
    half written. `commit(sha256)` (the ledger row) runs right after the rename: if it fails, the
    new file is removed and the old one put back, so a CSV only stands once its row exists. Stale
    temporary files of dead processes next to `out` are removed first."""
    frame, id_col, label_col = read_sample_submission(sample_submission, id_col, label_col)
    sample_ids = frame[id_col].to_numpy(str)
    _check_unique(sample_ids, f"{sample_submission}")
    positions = _IdMatcher(sample_ids).positions(_as_str(result.ids))
    if (positions < 0).any():
        raise LedgerError(
            f"{sample_submission}: {(positions < 0).sum()} ids have no prediction: "
            f"{_few(sample_ids[positions < 0])}"
        )
    fill(frame, shape or Shape(LABEL, (label_col,)), result.vocab, result.probs[positions])

    out = Path(out)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    previous = out.with_name(f".{out.name}.tmp-{os.getpid()}.old")  # the old file, until the commit holds
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        frame.to_csv(temporary, index=False)
        sha256 = hashlib.sha256(temporary.read_bytes()).hexdigest()
        _unlink(previous)  # left by a dead process whose pid was ours
        if out.exists():
            os.link(out, previous)  # a second name for the old file: the rename below replaces only `out`
        os.replace(temporary, out)
    except OSError as e:
        _unlink(previous)
        raise LedgerError(f"{out}: cannot write submission ({e})") from None
    finally:
        _unlink(temporary)  # after a successful replace it is already gone; also on Ctrl-C
    try:
        if commit is not None:
            commit(sha256)
    except BaseException:
        # No row, no file: put the old file back (or remove the new one) before the error goes on.
        if previous.exists():
            os.replace(previous, out)
        else:
            _unlink(out)
        raise
    _unlink(previous)
    return frame


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # e.g. the parent could not be created: there is no file either


_TEMPORARY = re.compile(r"^\.?(?P<name>.+)\.tmp-(?P<pid>\d+)(\.old)?$")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove temporary files that a killed `ledger ensemble` (SIGKILL, power loss: no `finally`
    runs) left next to `out`: `.<name>.csv.tmp-<pid>[.old]` whose process is gone. Files of live
    processes are another command writing right now and are left alone."""
    removed = []
    for path in Path(out).parent.glob("*.csv.tmp-*"):
        match = _TEMPORARY.match(path.name)
        if match and not _process_alive(int(match["pid"])):
            _unlink(path)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid we cannot ask about): leave its file
    return True
