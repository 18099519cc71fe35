"""Out-of-bag estimate of a bag's accuracy, and ensemble weights chosen from it.

The bag is a weighted mean of model ENTRIES, each entry the plain mean of its runs (see
`ensemble.normalise_weights`). The estimate mirrors that construction image by image:
  1. for each entry and training image, average the entry's held-out predictions over the runs
     that held the image out (runs that trained on it never vote);
  2. combine the entries with the normalised weights;
  3. score only images that every weighted entry covers, so each image is predicted by the whole
     bag and not by whichever runs happened to hold it out.
With K-fold splits every entry covers every training image; with random splits the coverage is
smaller, and every figure states it. Figures compared with one another (each entry alone, the
spec's weights, equal weights, tuned weights) are scored on one image set: those every entry covers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ledger.ensemble import _as_str, _check_shape, _check_unique, _column_positions, _few
from ledger.errors import LedgerError

DEFAULT_STEPS = 30  # greedy selection steps; Caruana et al. find the curve flat well before 50
_EPSILON = 1e-15  # probabilities are clipped here before the log in the tie-breaking log loss


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Each entry's held-out predictions, averaged over its runs that held the image out."""

    entries: tuple[str, ...]  # entry (spec model) names, in the order given
    ids: np.ndarray  # str (N,): every image some run held out, sorted
    labels: np.ndarray  # int (N,): true class, index into vocab
    vocab: np.ndarray  # str (C,)
    probs: np.ndarray  # float64 (E, N, C): the entry's mean over its runs; 0 where it does not cover
    covered: np.ndarray  # bool (E, N): the entry has at least one run that held the image out
    train_images: int  # training images in total, for the coverage figure

    def common(self, entries: Sequence[str] | None = None) -> np.ndarray:
        """Images (bool mask) covered by every one of `entries` (default: all entries)."""
        rows = [self.entries.index(e) for e in (self.entries if entries is None else entries)]
        return self.covered[rows].all(axis=0) if rows else np.zeros(len(self.ids), dtype=bool)


@dataclass(frozen=True)
class Estimate:
    accuracy: float  # nan when no image is scored
    images: int  # training images scored
    train_images: int  # training images in total


@dataclass(frozen=True)
class Tuned:
    counts: dict[str, int]  # times each entry was picked: weights to paste into the spec
    weights: dict[str, float]  # the counts normalised
    steps: int  # greedy steps taken (the ensemble kept may be an earlier one on the path)


def held_out(
    valids: Sequence[tuple[str, str, object]], vocab: Sequence[str], train_images: int | None = None
) -> HeldOut:
    """`valids`: (run_id, entry, Predictions with labels) for every run that has held-out
    predictions. Columns are matched by class name; an image's true label must agree across runs."""
    vocab = _as_str(vocab)
    entries = tuple(dict.fromkeys(entry for _, entry, _ in valids))
    ids = np.unique(np.concatenate([_as_str(p.ids) for _, _, p in valids])) if valids else np.zeros(0, str)
    sums = np.zeros((len(entries), len(ids), len(vocab)), dtype=np.float64)
    counts = np.zeros((len(entries), len(ids)), dtype=np.int64)
    labels = np.full(len(ids), -1, dtype=np.int64)
    for run_id, entry, preds in valids:
        _check_shape(run_id, preds, "validation")
        run_ids = _as_str(preds.ids)
        # Fancy-index += adds a repeated row only once, so repeats must be refused, not summed.
        _check_unique(run_ids, f"run {run_id}: validation predictions")
        if preds.labels is None:
            raise LedgerError(f"run {run_id}: validation predictions carry no labels")
        rows = np.searchsorted(ids, run_ids)  # ids is sorted and holds them all
        columns = _column_positions(run_id, _as_str(preds.vocab), vocab, "validation")
        run_labels = pd.Index(vocab).get_indexer(_as_str(preds.labels))
        if (run_labels < 0).any():
            raise LedgerError(f"run {run_id}: validation labels not in the class vocab: "
                              f"{_few(np.unique(_as_str(preds.labels)[run_labels < 0]))}")
        known = labels[rows]
        disagree = (known >= 0) & (known != run_labels)
        if disagree.any():
            raise LedgerError(f"run {run_id}: validation labels disagree with another run's for "
                              f"{_few(ids[rows[disagree]])}")
        labels[rows] = run_labels
        e = entries.index(entry)
        sums[e, rows] += preds.probs[:, columns]
        counts[e, rows] += 1
    covered = counts > 0
    probs = sums / np.maximum(counts, 1)[..., None]
    return HeldOut(entries, ids, labels, vocab, probs, covered,
                   len(ids) if train_images is None else int(train_images))


def _weight_vector(held: HeldOut, weights: Mapping[str, float]) -> np.ndarray:
    unknown = sorted(set(weights) - set(held.entries))
    if unknown:
        raise LedgerError(f"weight for {unknown[0]!r}, which has no held-out predictions "
                          f"(entries: {', '.join(held.entries) or 'none'})")
    vector = np.array([float(weights.get(e, 0.0)) for e in held.entries])
    if not (np.isfinite(vector).all() and (vector >= 0).all() and vector.sum() > 0):
        raise LedgerError("out-of-bag weights must be finite, >= 0 and not all zero")
    return vector / vector.sum()


def _scores(held: HeldOut, vector: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    """(accuracy, log loss) of the weighted entries on the images of the mask."""
    if not images.any():
        return float("nan"), float("nan")
    probs = np.tensordot(vector, held.probs[:, images], axes=1)  # (n, C), rows sum to 1
    truth = held.labels[images]
    accuracy = float((probs.argmax(axis=1) == truth).mean())  # ties go to the first class, as in bag()
    log_loss = float(-np.log(np.clip(probs[np.arange(len(truth)), truth], _EPSILON, 1)).mean())
    return accuracy, log_loss


def estimate(held: HeldOut, weights: Mapping[str, float], images: np.ndarray | None = None) -> Estimate:
    """Accuracy of the entries combined with `weights` (entry name -> weight, unnamed entries 0).
    `images` (bool mask over held.ids) defaults to those covered by every entry weighted above 0;
    pass one mask to compare weightings on the same images."""
    vector = _weight_vector(held, weights)
    if images is None:
        images = held.common([e for e, w in zip(held.entries, vector) if w > 0])
    accuracy, _ = _scores(held, vector, images)
    return Estimate(accuracy, int(images.sum()), held.train_images)


def tune_weights(held: HeldOut, steps: int = DEFAULT_STEPS) -> Tuned:
    """Greedy ensemble selection with replacement (Caruana et al. 2004) on the images every entry
    covers. Start from the best single entry; at each step add the entry (again, if it helps) whose
    addition scores best; keep the best ensemble on the path, the earliest among equals (fewer picks,
    less fitted to these images). Scores compare by accuracy, then lower log loss (accuracy ties are
    common on few images), then entry order: the result never depends on anything but the data."""
    if not held.entries:
        raise LedgerError("no held-out predictions to tune weights on")
    images = held.common()
    if not images.any():
        raise LedgerError("no training image is held out by every entry: nothing to tune weights on")

    def key(counts: np.ndarray) -> tuple[float, float]:
        accuracy, log_loss = _scores(held, counts / counts.sum(), images)
        return accuracy, -log_loss

    def best_next(counts: np.ndarray) -> tuple[tuple[float, float], np.ndarray]:
        best = None
        for e in range(len(held.entries)):  # strict > keeps the first entry among equals
            candidate = counts.copy()
            candidate[e] += 1
            score = key(candidate)
            if best is None or score > best[0]:
                best = (score, candidate)
        return best

    best_score, counts = best_next(np.zeros(len(held.entries), dtype=np.int64))
    kept = counts
    for _ in range(steps):
        score, counts = best_next(counts)
        if score > best_score:
            best_score, kept = score, counts
    return Tuned(counts={e: int(c) for e, c in zip(held.entries, kept)},
                 weights={e: float(c) / kept.sum() for e, c in zip(held.entries, kept)},
                 steps=steps)


def compare(held: HeldOut, spec_weights: Mapping[str, float], tuned: Tuned | None = None) -> pd.DataFrame:
    """Out-of-bag table on the images every entry covers: each entry alone, the spec's weights,
    equal weights and (if given) the tuned weights. Columns: kind, name, weights, accuracy, images,
    train_images."""
    images = held.common()
    rows = [("entry", e, {e: 1.0}) for e in held.entries]
    rows.append(("weights", "spec", dict(spec_weights)))
    rows.append(("weights", "equal", {e: 1.0 for e in held.entries}))
    if tuned is not None:
        rows.append(("weights", "tuned", dict(tuned.counts)))
    table = []
    for kind, name, weights in rows:
        if sum(weights.values()) <= 0:  # e.g. the spec weighs every entry with held-out predictions 0
            table.append((kind, name, weights, float("nan"), 0, held.train_images))
            continue
        result = estimate(held, weights, images)
        table.append((kind, name, weights, result.accuracy, result.images, result.train_images))
    return pd.DataFrame(table, columns=["kind", "name", "weights", "accuracy", "images", "train_images"])
