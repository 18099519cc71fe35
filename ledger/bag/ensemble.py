"""Bag finished runs into one submission: align, weighted mean, argmax, CSV.

Plain functions on in-memory data; the store loads the runs and the CLI prints the results. Ids and
classes match as `matching.py` says; the CSV is written by `bag/submission_csv.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ledger.runs.artifacts import Predictions
from ledger.errors import LedgerError
from ledger.bag.matching import IdMatcher, as_str, check_shape, check_unique, column_positions, few


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
    without tilting the bag towards it. The out-of-bag estimate (ledger.bag.out_of_bag) is built the same way,
    entry by entry, from the runs that held each image out (one per entry with K folds)."""
    model_names = {run.model for run in runs}
    unknown = sorted(set(weights) - model_names)
    if unknown:
        raise LedgerError(
            f"--weight names unknown model {unknown[0]!r}; models with finished runs: "
            f"{', '.join(sorted(model_names)) or 'none'}"
        )
    entry_weight = checked_weights({name: float(weights.get(name, 1.0)) for name in sorted(model_names)}, "entry")
    run_count = {name: sum(run.model == name for run in runs) for name in model_names}
    return {run.run_id: entry_weight[run.model] / run_count[run.model] for run in runs}


def checked_weights(weights: Mapping[str, float], what: str) -> dict[str, float]:
    """The one rule for a bag's weights, wherever they come from (the spec, --weight, greedy
    selection): each finite and >= 0, not all zero. Returned normalised to sum to 1; `what` names
    them in the error ("entry", "run")."""
    for name, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise LedgerError(f"{what} weight {name}={weight:g}: weights must be finite and >= 0")
    total = sum(weights.values())
    if total <= 0:
        raise LedgerError(f"every {what} weight is zero: nothing to bag")
    return {name: weight / total for name, weight in weights.items()}


def _weight_vector(runs: Sequence[RunInput], weights: Mapping[str, float]) -> np.ndarray:
    missing = [run.run_id for run in runs if run.run_id not in weights]
    if missing:
        raise LedgerError(f"no weight for run {missing[0]}")
    # Renormalised so callers may pass raw weights.
    checked = checked_weights({run.run_id: float(weights[run.run_id]) for run in runs}, "run")
    return np.array([checked[run.run_id] for run in runs], dtype=np.float64)


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
    target = as_str(ids)
    check_unique(target, "the submission")
    vocab = np.sort(as_str(runs[0].test.vocab)) if vocab is None else as_str(vocab)
    if len(set(vocab)) != len(vocab):
        raise LedgerError(f"class vocab has duplicate names: {few(vocab)}")

    matcher = IdMatcher(target)
    aligned = np.empty((len(runs), len(target), len(vocab)), dtype=np.float32)
    for r, run in enumerate(runs):
        check_shape(run.run_id, run.test, "test")
        run_ids = as_str(run.test.ids)
        columns = column_positions(run.run_id, as_str(run.test.vocab), vocab, "test")
        rows = matcher.positions(run_ids)
        if len(run_ids) != len(target) or (rows < 0).any():
            check_unique(run_ids, f"run {run.run_id}: test predictions")
            missing = target[rows < 0]
            unmatched = np.ones(len(run_ids), dtype=bool)
            unmatched[rows[rows >= 0]] = False
            extra = run_ids[unmatched]
            raise LedgerError(
                f"run {run.run_id}: test ids differ from the submission's ({len(run_ids)} vs "
                f"{len(target)})"
                + (f"; missing {few(missing)}" if len(missing) else "")
                + (f"; extra {few(extra)}" if len(extra) else "")
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
        ids=as_str(ids),
        probs=probs,
        labels=vocab[probs.argmax(axis=1)],  # ties go to the first class in vocab order
        vocab=vocab,
        weights={run.run_id: float(w) for run, w in zip(runs, weight_vector)},
    )
