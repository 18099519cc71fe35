"""Bag finished runs into one submission: align, weighted mean, argmax, CSV.

Plain functions on in-memory data; the store loads the runs and the CLI prints the results.

Matching rules, used for both the test ids of runs and the ids of the sample submission:
ids are compared as strings, exactly first; ids left unmatched are then tried with the file
extension stripped from one side ("100330.jpg" == "100330"), because Kaggle sample submissions
carry the extension in some competitions and not in others while runs keep what the data layer
gave. Two different extensions ("1.jpg", "1.png") never match.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ledger.artifacts import Predictions
from ledger.errors import LedgerError

_EXAMPLES = 3  # offending ids or classes named in an error message
_TABLE_COLUMNS = ["kind", "name", "weight", "accuracy", "covered"]


@dataclass(frozen=True)
class RunInput:
    """One finished run, as the store hands it over."""

    run_id: str
    model: str  # model name from the spec: --weight applies per model name
    test: Predictions
    valid: Predictions | None = None


@dataclass(frozen=True, eq=False)
class BagResult:
    ids: np.ndarray  # str (N,), in the order bag() was given
    probs: np.ndarray  # float32 (N, C), weighted mean over runs
    labels: np.ndarray  # str (N,), vocab[argmax]
    vocab: np.ndarray  # str (C,)
    weights: dict[str, float]  # normalised weight per run_id


@dataclass(frozen=True, eq=False)
class OutOfBag:
    accuracy: float  # ensemble accuracy on the covered training images (nan when none)
    covered: int  # training images held out by at least one weighted run
    table: pd.DataFrame  # columns kind, name, weight, accuracy, covered; rows ensemble, models, runs


# ---------------------------------------------------------------- weights


def normalise_weights(runs: Sequence[RunInput], weights: Mapping[str, float]) -> dict[str, float]:
    """Weight per run_id, summing to 1. A run weighs what its model name weighs (default 1), so a
    model with three runs counts three times as much as a model with one: that is what bagging
    more runs of a strong model is for."""
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
    raw = {run.run_id: float(weights.get(run.model, 1.0)) for run in runs}
    total = sum(raw.values())
    if total <= 0:
        raise LedgerError("all ensemble weights are zero: nothing to bag")
    return {run_id: weight / total for run_id, weight in raw.items()}


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


# ---------------------------------------------------------------- out-of-bag estimate


def _oob_accuracy(
    valids: Sequence[tuple[str, Predictions]], weight_vector: np.ndarray, vocab: np.ndarray
) -> tuple[float, int]:
    """Accuracy of the weighted mean over the runs that held each image out, and how many
    images that covers. An image held out only by zero-weight runs is not covered."""
    all_ids = np.unique(np.concatenate([_as_str(preds.ids) for _, preds in valids]))
    sums = np.zeros((len(all_ids), len(vocab)), dtype=np.float64)
    weight_sums = np.zeros(len(all_ids), dtype=np.float64)
    true_class = np.full(len(all_ids), -1, dtype=np.int64)
    for (run_id, preds), weight in zip(valids, weight_vector):
        rows = np.searchsorted(all_ids, _as_str(preds.ids))  # all_ids is sorted and holds them all
        columns = _column_positions(run_id, _as_str(preds.vocab), vocab, "validation")
        # Fancy-index += adds a repeated row only once, so repeats must be refused, not summed.
        _check_unique(_as_str(preds.ids), f"run {run_id}: validation predictions")
        sums[rows] += weight * preds.probs[:, columns]
        weight_sums[rows] += weight
        labels = pd.Index(vocab).get_indexer(_as_str(preds.labels))
        if (labels < 0).any():
            raise LedgerError(f"run {run_id}: validation labels not in the class vocab: "
                              f"{_few(np.unique(_as_str(preds.labels)[labels < 0]))}")
        known = true_class[rows]
        disagree = (known >= 0) & (known != labels)
        if disagree.any():
            raise LedgerError(f"run {run_id}: validation labels disagree with another run's for "
                              f"{_few(all_ids[rows[disagree]])}")
        true_class[rows] = labels
    covered = weight_sums > 0
    if not covered.any():
        return float("nan"), 0
    predicted = sums[covered].argmax(axis=1)  # dividing by weight_sums would not move the argmax
    return float((predicted == true_class[covered]).mean()), int(covered.sum())


def out_of_bag(runs: Sequence[RunInput], weights: Mapping[str, float]) -> OutOfBag:
    """Estimate the ensemble's accuracy from the runs' held-out training images.

    Each run held out its own random split, so most training images were unseen by some runs;
    averaging only those runs' predictions gives an honest estimate without a test set.
    Rows: the ensemble (given weights), each model (its runs, equal weights), each run alone;
    `weight` is the share of the normalised weights behind the row. Runs without validation
    predictions (or labels) are skipped.
    """
    scored = [run for run in runs if run.valid is not None and run.valid.labels is not None]
    weight_vector = _weight_vector(runs, weights) if runs else np.zeros(0)
    weight_of = {run.run_id: float(w) for run, w in zip(runs, weight_vector)}
    if not scored:
        return OutOfBag(accuracy=float("nan"), covered=0, table=pd.DataFrame(columns=_TABLE_COLUMNS))
    for run in scored:
        _check_shape(run.run_id, run.valid, "validation")
    vocab = np.sort(_as_str(runs[0].test.vocab))
    valids = [(run.run_id, run.valid) for run in scored]

    accuracy, covered = _oob_accuracy(
        valids, np.array([weight_of[run.run_id] for run in scored]), vocab
    )
    rows = [("ensemble", "ensemble", sum(weight_of[r.run_id] for r in scored), accuracy, covered)]
    for model in sorted({run.model for run in scored}):
        members = [(run.run_id, run.valid) for run in scored if run.model == model]
        model_accuracy, model_covered = _oob_accuracy(members, np.ones(len(members)), vocab)
        model_weight = sum(weight_of[run_id] for run_id, _ in members)
        rows.append(("model", model, model_weight, model_accuracy, model_covered))
    for run in scored:
        run_accuracy, run_covered = _oob_accuracy([(run.run_id, run.valid)], np.ones(1), vocab)
        rows.append(("run", run.run_id, weight_of[run.run_id], run_accuracy, run_covered))
    table = pd.DataFrame(rows, columns=_TABLE_COLUMNS)
    return OutOfBag(accuracy=accuracy, covered=covered, table=table)


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
) -> pd.DataFrame:
    """Write `out`: the sample submission's columns, header, ids and order, with the label column
    holding the predicted class names. Written to a temporary file and renamed, so `out` is
    either the old file or the whole new one, never half written."""
    frame, id_col, label_col = read_sample_submission(sample_submission, id_col, label_col)
    sample_ids = frame[id_col].to_numpy(str)
    _check_unique(sample_ids, f"{sample_submission}")
    positions = _IdMatcher(sample_ids).positions(_as_str(result.ids))
    if (positions < 0).any():
        raise LedgerError(
            f"{sample_submission}: {(positions < 0).sum()} ids have no prediction: "
            f"{_few(sample_ids[positions < 0])}"
        )
    frame[label_col] = result.labels[positions]

    out = Path(out)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(temporary, index=False)
        os.replace(temporary, out)
    except OSError as e:
        raise LedgerError(f"{out}: cannot write submission ({e})") from None
    finally:
        try:
            temporary.unlink(missing_ok=True)  # after a successful replace it is already gone
        except OSError:
            pass  # e.g. the parent could not be created: there is no temporary file either
    return frame


# ---------------------------------------------------------------- from the ledger to a submission


@dataclass(frozen=True, eq=False)
class Submission:
    runs: list[dict]  # the ledger rows of the runs bagged
    result: BagResult
    out_of_bag: OutOfBag
    path: Path | None  # None on a dry run


def make_submission(spec, store, run_ids: Sequence[str] | None = None,
                    weight_overrides: Mapping[str, float] | None = None, out: Path | None = None,
                    dry_run: bool = False) -> Submission:
    """Bag the experiment's `done` runs (or the given ids) into a checked submission CSV and record
    which runs, with which weights, made it. `failed` and `running` runs are never used."""
    from datetime import datetime

    from ledger.artifacts import TEST_PREDS, VALID_PREDS, load_predictions

    if run_ids:
        rows = store.runs(ids=list(run_ids))
        found = {row["id"]: row for row in rows}
        for run_id in run_ids:
            if run_id not in found:
                raise LedgerError(f"run {run_id}: not in the ledger at {store.home}")
            if found[run_id]["status"] != "done":
                raise LedgerError(f"run {run_id}: status is {found[run_id]['status']}; only done runs are bagged")
            if found[run_id]["experiment"] != spec.name:
                raise LedgerError(f"run {run_id}: belongs to experiment {found[run_id]['experiment']!r}, not {spec.name!r}")
    else:
        rows = store.runs(spec.name, status="done")
        if not rows:
            raise LedgerError(f"experiment {spec.name!r}: no done runs in {store.home} (run `ledger train` first)")
    runs = []
    for row in rows:
        folder = store.artifact_path(row)
        valid_path = folder / VALID_PREDS
        runs.append(RunInput(row["id"], row["model"], load_predictions(folder / TEST_PREDS),
                             load_predictions(valid_path) if valid_path.exists() else None))
    present = {run.model for run in runs}
    # Spec weights for the models that have runs here; --weight may name only those too.
    model_weights = {m.name: m.weight for m in spec.models if m.name in present} | dict(weight_overrides or {})
    weights = normalise_weights(runs, model_weights)
    sample_path = spec.data.root / spec.data.sample_submission
    frame, id_col, _ = read_sample_submission(sample_path)
    result = bag(runs, weights, frame[id_col].to_numpy(str))
    oob = out_of_bag(runs, weights)
    path = None
    if not dry_run:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(out) if out else Path("submissions") / f"{spec.name}-{stamp}.csv"
        write_submission(sample_path, result, path)
        store.record_submission(spec.name, path, [r["id"] for r in rows], result.weights,
                                None if np.isnan(oob.accuracy) else oob.accuracy)
    return Submission(rows, result, oob, path)
