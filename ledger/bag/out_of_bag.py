"""Out-of-bag estimate of a bag's score on the competition's metric, and ensemble weights chosen
from it.

The bag is a weighted mean of model ENTRIES, each entry the plain mean of its runs (see
`ensemble.normalise_weights`). The estimate mirrors that construction image by image:
  1. for each entry and training image, average the entry's held-out predictions over the runs
     that held the image out (runs that trained on it never vote);
  2. combine the entries with the normalised weights;
  3. score only images that every weighted entry covers, so each image is predicted by the whole
     bag and not by whichever runs happened to hold it out.
With K-fold splits every entry covers every training image, each by ONE of its runs: the figure is
that of a bag with one run per entry, while the submission averages K; it usually scores better.
Where images are held out by several runs of an entry (random splits, or more runs than folds),
`by_runs` shows the gain of averaging them. With random splits the coverage is smaller, and every
figure states it. Figures compared with one another (each entry alone, the spec's weights, equal
weights, tuned weights) are scored on one image set: those every entry covers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ledger.bag.ensemble import checked_weights
from ledger.bag.matching import as_str, check_shape, check_unique, column_positions, few
from ledger.errors import LedgerError
from ledger.bag.metrics import ACCURACY, SINGLE_LABEL, Metric
from ledger.bag.decisions import choose
from ledger.bag.task_metrics import TaskMetric, tie_breaker as tie_breaker_of

DEFAULT_STEPS = 30  # greedy selection steps; Caruana et al. find the curve flat well before 50
# Greedy passes on bootstrap resamples of the held-out images, averaged (Caruana et al.'s bagged
# selection takes 20 bags). One pass on a few thousand images picks among weightings a few images
# apart; on the default's run sets its weights scored below the averaged ones on hidden labels.
DEFAULT_RESAMPLES = 20


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Each entry's held-out predictions, averaged over its runs that held the image out."""

    entries: tuple[str, ...]  # entry (spec model) names, in the order given
    ids: np.ndarray  # str (N,): every image some run held out, sorted
    # The truth: int (N,) true class, index into vocab; or float (N, C) true tags (0/1) or numbers.
    labels: np.ndarray
    vocab: np.ndarray  # str (C,): classes, tags or target columns
    probs: np.ndarray  # float64 (E, N, C): the entry's mean over its runs; 0 where it does not cover
    counts: np.ndarray  # int (E, N): the entry's runs that held the image out
    train_images: int  # training images in total, for the coverage figure
    # (entry index, rows into ids, float64 probs in vocab order) of every run, in the order given
    runs: tuple[tuple[int, np.ndarray, np.ndarray], ...] = ()
    task: str = SINGLE_LABEL

    @property
    def covered(self) -> np.ndarray:
        """bool (E, N): the entry has at least one run that held the image out."""
        return self.counts > 0

    def common(self, entries: Sequence[str] | None = None) -> np.ndarray:
        """Images (bool mask) covered by every one of `entries` (default: all entries)."""
        rows = [self.entries.index(e) for e in (self.entries if entries is None else entries)]
        return self.covered[rows].all(axis=0) if rows else np.zeros(len(self.ids), dtype=bool)


@dataclass(frozen=True)
class Estimate:
    metric: str  # the metric's name
    score: float  # the metric's figure; nan when no image is scored
    accuracy: float  # nan when no image is scored
    images: int  # training images scored
    train_images: int  # training images in total
    decision: object | None = None  # decisions.Decision the figure was scored with (tags, grades); None: none


@dataclass(frozen=True)
class Tuned:
    # Each entry's share of the bag, rounded to 0.01: the weights to paste into the spec, and those
    # --use-tuned bags with. One pass: its picks normalised; resampled: the passes' shares averaged.
    weights: dict[str, float]
    picked: dict[str, int]  # passes that gave the entry a weight above 0
    passes: int  # 1: one pass on the held-out images; else one per bootstrap resample
    steps: int  # greedy steps taken over all passes: each improved the metric (fewer than asked when none could)


def held_out(
    valids: Sequence[tuple[str, str, object]], vocab: Sequence[str], train_images: int | None = None
) -> HeldOut:
    """`valids`: (run_id, entry, Predictions with their truth) for every run that has held-out
    predictions. Columns are matched by class name; an image's truth (its class, or its tags or
    numbers) must agree across runs."""
    tasks = {p.task for _, _, p in valids}
    if len(tasks) > 1:
        raise LedgerError(f"runs of different tasks ({', '.join(sorted(tasks))}) cannot be bagged together")
    task = tasks.pop() if tasks else SINGLE_LABEL
    vocab = as_str(vocab)
    entries = tuple(dict.fromkeys(entry for _, entry, _ in valids))
    ids = np.unique(np.concatenate([as_str(p.ids) for _, _, p in valids])) if valids else np.zeros(0, str)
    sums = np.zeros((len(entries), len(ids), len(vocab)), dtype=np.float64)
    counts = np.zeros((len(entries), len(ids)), dtype=np.int64)
    # Not yet known: -1 (a class index), or a row of nan (tags, numbers).
    truth = np.full(len(ids), -1, dtype=np.int64) if task == SINGLE_LABEL else np.full((len(ids), len(vocab)), np.nan)
    what = "labels" if task == SINGLE_LABEL else "targets"
    runs = []
    for run_id, entry, preds in valids:
        check_shape(run_id, preds, "validation")
        run_ids = as_str(preds.ids)
        # Fancy-index += adds a repeated row only once, so repeats must be refused, not summed.
        check_unique(run_ids, f"run {run_id}: validation predictions")
        if preds.truth is None:
            raise LedgerError(f"run {run_id}: validation predictions carry no {what}")
        rows = np.searchsorted(ids, run_ids)  # ids is sorted and holds them all
        columns = column_positions(run_id, as_str(preds.vocab), vocab, "validation")
        run_truth = _run_truth(run_id, preds, vocab, columns)
        known = truth[rows]
        if task == SINGLE_LABEL:
            disagree = (known >= 0) & (known != run_truth)
        else:
            disagree = ~np.isnan(known).any(axis=1) & ~np.isclose(known, run_truth, rtol=1e-6, atol=1e-6).all(axis=1)
        if disagree.any():
            raise LedgerError(f"run {run_id}: validation {what} disagree with another run's for "
                              f"{few(ids[rows[disagree]])}")
        truth[rows] = run_truth
        e = entries.index(entry)
        run_probs = np.asarray(preds.probs[:, columns], dtype=np.float64)
        sums[e, rows] += run_probs
        counts[e, rows] += 1
        runs.append((e, rows, run_probs))
    probs = sums / np.maximum(counts, 1)[..., None]
    return HeldOut(entries, ids, truth, vocab, probs, counts,
                   len(ids) if train_images is None else int(train_images), tuple(runs), task)


def _run_truth(run_id: str, preds, vocab: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """A run's held-out truth in the bag's terms: class indices into `vocab`, or its tags or numbers
    in `vocab`'s column order."""
    if preds.task != SINGLE_LABEL:
        return np.asarray(preds.targets, dtype=np.float64)[:, columns]
    indices = pd.Index(vocab).get_indexer(as_str(preds.labels))
    if (indices < 0).any():
        raise LedgerError(f"run {run_id}: validation labels not in the class vocab: "
                          f"{few(np.unique(as_str(preds.labels)[indices < 0]))}")
    return indices


@dataclass(frozen=True)
class ChosenOutOfBag:
    """A metric of decisions (tags at thresholds, grades at cut-offs) that scores predictions with
    the decisions chosen on them, as the submission's are chosen on the out-of-bag predictions: a
    little optimistic (a few thresholds fitted on thousands of images; docs/bagging-and-metrics.md
    measures it against hidden labels). name, better, ...: the metric's own."""

    metric: TaskMetric

    def __getattr__(self, name: str):
        return getattr(self.metric, name)

    def score(self, truth: np.ndarray, preds: np.ndarray) -> float:
        return self.scored(truth, preds)[0]

    def scored(self, truth: np.ndarray, preds: np.ndarray):
        """(the figure, the decision it was scored with)."""
        decision = self.decision(truth, preds)
        return self.metric.score(truth, preds, decision), decision

    def decision(self, truth: np.ndarray, preds: np.ndarray):
        return choose(self.metric, truth, preds) if len(truth) else None


def out_of_bag_metric(metric):
    """`metric` as the out-of-bag figures score it: decisions chosen on the images scored."""
    return ChosenOutOfBag(metric) if isinstance(metric, TaskMetric) and metric.decided else metric


def _accuracy(held: HeldOut, truth: np.ndarray, probs: np.ndarray) -> float:
    """Accuracy, for single-label bags; tags and numbers have none (nan)."""
    return ACCURACY.score(truth, probs) if held.task == SINGLE_LABEL else float("nan")


def _weight_vector(held: HeldOut, weights: Mapping[str, float]) -> np.ndarray:
    unknown = sorted(set(weights) - set(held.entries))
    if unknown:
        raise LedgerError(f"weight for {unknown[0]!r}, which has no held-out predictions "
                          f"(entries: {', '.join(held.entries) or 'none'})")
    checked = checked_weights({e: float(weights.get(e, 0.0)) for e in held.entries}, "entry")
    return np.array([checked[e] for e in held.entries])


def _combined(probs: np.ndarray, vector: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(n, C): the entries' probabilities (E, N, C) weighted by `vector`, on the images of the mask."""
    return np.tensordot(vector, probs[:, images], axes=1)  # rows sum to 1


def estimate(held: HeldOut, weights: Mapping[str, float], images: np.ndarray | None = None,
             metric: Metric = ACCURACY) -> Estimate:
    """`metric` (and accuracy) of the entries combined with `weights` (entry name -> weight, unnamed
    entries 0). `images` (bool mask over held.ids) defaults to those covered by every entry weighted
    above 0; pass one mask to compare weightings on the same images."""
    vector = _weight_vector(held, weights)
    if images is None:
        images = held.common([e for e, w in zip(held.entries, vector) if w > 0])
    probs, truth = _combined(held.probs, vector, images), held.labels[images]
    metric = out_of_bag_metric(metric)
    # A metric of decisions keeps the thresholds or cut-offs it chose: the submission decides with them.
    score, decision = metric.scored(truth, probs) if isinstance(metric, ChosenOutOfBag) else \
        (metric.score(truth, probs), None)
    return Estimate(metric.name, score, _accuracy(held, truth, probs), int(images.sum()), held.train_images,
                    decision)


def tune_weights(held: HeldOut, steps: int = DEFAULT_STEPS, metric: Metric = ACCURACY, resamples: int = 0,
                 seed: int = 0) -> Tuned:
    """Ensemble weights from greedy selection (`greedy_counts`) on the images every entry covers:
    one pass on those images (`resamples` 0), or one pass on each of `resamples` bootstrap
    resamples of them (drawn with numpy's generator seeded by `seed`, so the same predictions give
    the same weights), each pass's picks normalised and the shares averaged. Averaging is the
    variance reduction of Caruana et al.'s bagged ensemble selection: a single pass on a held-out
    set of a few thousand images chooses among weightings a few images apart, and an entry
    whose help is within that noise gets all or nothing by chance; averaged, it gets the share of
    the resamples on which it helped."""
    if not held.entries:
        raise LedgerError("no held-out predictions to tune weights on")
    images = held.common()
    if not images.any():
        raise LedgerError("no training image is held out by every entry: nothing to tune weights on")
    truth, probs = held.labels[images], held.probs[:, images]
    draws = [np.arange(len(truth))] if resamples <= 0 else \
        list(np.random.default_rng(seed).integers(0, len(truth), size=(resamples, len(truth))))
    shares, taken = np.zeros((len(draws), len(held.entries))), 0
    for i, rows in enumerate(draws):
        counts, steps_taken = greedy_counts(truth[rows], probs[:, rows], held.task, steps, metric)
        shares[i], taken = counts / counts.sum(), taken + steps_taken
    mean = shares.mean(axis=0)
    return Tuned(weights={e: round(float(w), 2) for e, w in zip(held.entries, mean)},
                 picked={e: int(n) for e, n in zip(held.entries, (shares > 0).sum(axis=0))},
                 passes=len(draws), steps=taken)


def greedy_counts(truth: np.ndarray, probs: np.ndarray, task: str, steps: int = DEFAULT_STEPS,
                  metric: Metric = ACCURACY) -> tuple[np.ndarray, int]:
    """Greedy ensemble selection with replacement (Caruana et al. 2004) on `metric`: the times each
    entry of `probs` (E, N, C) is picked, and the steps taken. Start from the best single entry;
    at each step add the entry (again, if it helps) whose addition scores best, and stop when no
    addition improves the metric by more than `metrics.TOLERANCE`. An addition that only ties is
    never taken: on a label metric ties are common on few images, and an entry added for a tie (a
    chance-level entry that merely softens an overconfident one, say) would earn weight it did
    nothing for. Scores within the tolerance are equal, so rounding (which differs between CPUs and
    BLAS builds) decides nothing. Among equal improvements (and among the single entries at the
    start) a label metric prefers the lower log loss, then the entry listed first."""
    metric, tie_breaker = out_of_bag_metric(metric), tie_breaker_of(metric, task)

    def evaluate(counts: np.ndarray) -> tuple[float, float]:
        mixed = np.tensordot(counts / counts.sum(), probs, axes=1)
        return metric.score(truth, mixed), (float("nan") if tie_breaker is None else tie_breaker.score(truth, mixed))

    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        if metric.better(a[0], b[0]) or metric.better(b[0], a[0]):
            return metric.better(a[0], b[0])
        return tie_breaker is not None and tie_breaker.better(a[1], b[1])

    def best_next(counts: np.ndarray) -> tuple[tuple[float, float], np.ndarray]:
        best = None
        for e in range(len(probs)):  # only a strict win replaces: the first entry among equals
            candidate = counts.copy()
            candidate[e] += 1
            score = evaluate(candidate)
            if best is None or beats(score, best[0]):
                best = (score, candidate)
        return best

    score, counts = best_next(np.zeros(len(probs), dtype=np.int64))
    taken = 0
    for taken in range(1, steps + 1):
        next_score, next_counts = best_next(counts)
        if not metric.better(next_score[0], score[0]):  # a tie or worse: the search ends here
            taken -= 1
            break
        score, counts = next_score, next_counts
    return counts, taken


def compare(held: HeldOut, spec_weights: Mapping[str, float], tuned: Tuned | None = None,
            metric: Metric = ACCURACY) -> pd.DataFrame:
    """Out-of-bag table on the images every entry covers: each entry alone, the spec's weights,
    equal weights and (if given) the tuned weights. Columns: kind, name, weights, score (of
    `metric`), accuracy, images, train_images."""
    images = held.common()
    rows = [("entry", e, {e: 1.0}) for e in held.entries]
    rows.append(("weights", "spec", dict(spec_weights)))
    rows.append(("weights", "equal", {e: 1.0 for e in held.entries}))
    if tuned is not None:
        rows.append(("weights", "tuned", dict(tuned.weights)))
    table = []
    for kind, name, weights in rows:
        if sum(weights.values()) <= 0:  # e.g. the spec weighs every entry with held-out predictions 0
            table.append((kind, name, weights, float("nan"), float("nan"), 0, held.train_images))
            continue
        result = estimate(held, weights, images, metric)
        table.append((kind, name, weights, result.score, result.accuracy, result.images, result.train_images))
    return pd.DataFrame(table, columns=["kind", "name", "weights", "score", "accuracy", "images", "train_images"])


def _first_runs_mean(held: HeldOut, k: int) -> np.ndarray:
    """(E, N, C): each entry's mean over the first k of its runs (in the order given) that held
    the image out."""
    sums = np.zeros_like(held.probs)
    taken = np.zeros(held.counts.shape, dtype=np.int64)
    for e, rows, probs in held.runs:
        take = taken[e, rows] < k
        sums[e, rows[take]] += probs[take]
        taken[e, rows[take]] += 1
    return sums / np.maximum(taken, 1)[..., None]


def by_runs(held: HeldOut, weights: Mapping[str, float], metric: Metric = ACCURACY) -> pd.DataFrame:
    """The bagging gain, where images are held out by several runs of every weighted entry: for
    k = 1, 2, ...: on the images each weighted entry holds out k times or more, the bag averaging
    k runs per entry against the bag of one run per entry (the first that held the image out).
    Columns: runs, images, score, one_run_score, accuracy, one_run_accuracy. Empty where no image
    is held out twice by every weighted entry (K folds, one run per fold)."""
    columns = ["runs", "images", "score", "one_run_score", "accuracy", "one_run_accuracy"]
    vector = _weight_vector(held, weights)
    depth = held.counts[vector > 0].min(axis=0)  # runs of the thinnest weighted entry, per image
    most = int(depth.max()) if len(depth) else 0
    if most < 2:
        return pd.DataFrame([], columns=columns)
    table = []
    metric = out_of_bag_metric(metric)
    one_run = _first_runs_mean(held, 1)
    for k in range(1, most + 1):
        images = depth >= k
        truth = held.labels[images]
        bag_k = _combined(_first_runs_mean(held, k), vector, images)
        bag_1 = _combined(one_run, vector, images)
        table.append((k, int(images.sum()), metric.score(truth, bag_k), metric.score(truth, bag_1),
                      _accuracy(held, truth, bag_k), _accuracy(held, truth, bag_1)))
    return pd.DataFrame(table, columns=columns)
