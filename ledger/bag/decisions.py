"""Thresholds and cut-offs chosen on out-of-bag predictions: how a decided metric turns
probabilities into tags, or values into grades.

Thresholds (the F-scores): first one threshold for all tags, the best on a grid of 0.01..0.99; then,
for each tag with at least `min_positives` positives, its own threshold by coordinate ascent with
the others fixed (two passes at most), kept only when the metric improves by more than the
tolerance. A tag with few positives keeps the global one: its own would fit a handful of images.

Cut-offs (`qwk`): the grades are the distinct true values; the K-1 boundaries start at the
midpoints and each is searched on a grid between its neighbours, in turn, until a pass changes
nothing: a coordinate form of the OptimizedRounder APTOS competitors ran from the same midpoints.

Both searches score every grid point from counts and prefix sums in one vectorised step, the same
figure scikit-learn computes (tests compare them), because `choose` runs once per candidate blend
inside the greedy weight search. Ties are decided with `metric.better` and its tolerance and then by
a fixed order of grid positions, so the result does not depend on the CPU or the BLAS build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ledger.errors import LedgerError
from ledger.bag.matching import few
from ledger.bag.task_metrics import ZERO_DIVISION, TaskMetric, checked_arrays

KINDS = ("thresholds", "cutoffs")
# k / 100 is correctly rounded, so a chosen threshold is exactly the float JSON writes as 0.25.
GRID = np.arange(1, 100) / 100
_MIDDLE = 49  # GRID[49] == 0.5: ties between global thresholds go toward it
# Passes: on 30 random F2 problems (3,000 images, 10 tags) a third pass never changed what two
# gave; on 30 random kappa problems (5 grades) the cut-offs settled within 5 passes.
_TAG_PASSES = 2
_CUTOFF_STEPS = 100  # each boundary is tried at 99 points between its neighbours
_CUTOFF_PASSES = 20


@dataclass(frozen=True)
class Decision:
    kind: str  # "thresholds" or "cutoffs"
    values: tuple[float, ...]  # thresholds: one per tag; cutoffs: K-1 ascending boundaries
    grades: tuple[float, ...] = ()  # cutoffs: the K grade values, ascending

    def __post_init__(self):
        # Coerced and checked here, so a Decision built by hand is as safe as one read from JSON.
        try:
            object.__setattr__(self, "values", tuple(float(v) for v in self.values))
            object.__setattr__(self, "grades", tuple(float(g) for g in self.grades))
        except (TypeError, ValueError):
            raise LedgerError(f"{self.kind}: values and grades must be sequences of numbers") from None
        values, grades = np.array(self.values), np.array(self.grades)
        if self.kind not in KINDS:
            raise LedgerError(f"decision kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (np.isfinite(values).all() and np.isfinite(grades).all()):
            raise LedgerError(f"{self.kind}: every value must be a finite number")
        if self.kind == "thresholds":
            if not len(values) or grades.size:
                raise LedgerError("thresholds: one threshold per tag and no grades")
            # Above 0: a threshold of 0 would tag everything, and 0/1 predictions must stay as they are.
            if values.min() <= 0.0 or values.max() > 1.0:
                raise LedgerError("thresholds: every threshold must lie above 0 and at most 1")
        else:
            if len(grades) != len(values) + 1:
                raise LedgerError(f"cutoffs: {len(values)} cut-offs need {len(values) + 1} grades, "
                                  f"got {len(grades)}")
            if (np.diff(values) <= 0).any() or (np.diff(grades) <= 0).any():
                raise LedgerError("cutoffs: cut-offs and grades must be strictly ascending")

    def apply(self, preds: np.ndarray) -> np.ndarray:
        """Thresholds: (N, T) int 0/1, on where preds >= the tag's threshold. Cut-offs: (N, 1) grade
        values, a prediction equal to a cut-off taking the higher grade."""
        # float64 first: a float32 array compared with 0.01 would compare in float32 (NEP 50).
        preds = np.asarray(preds, dtype=np.float64)
        width = len(self.values) if self.kind == "thresholds" else 1
        if preds.ndim != 2 or preds.shape[1] != width:
            raise LedgerError(f"{self.kind}: expected predictions (N, {width}), got {preds.shape}")
        if not np.isfinite(preds).all():
            raise LedgerError(f"{self.kind}: the predictions hold non-finite values (nan or inf)")
        if self.kind == "thresholds":
            return (preds >= np.array(self.values)).astype(np.int64)
        grades = np.array(self.grades)
        return grades[np.searchsorted(np.array(self.values), preds[:, 0], side="right")][:, None]

    def to_dict(self) -> dict:
        """JSON-safe; Python writes floats with the shortest repr that reads back exactly."""
        return {"kind": self.kind, "values": list(self.values), "grades": list(self.grades)}

    @classmethod
    def from_dict(cls, d) -> Decision:
        """The decision `to_dict` wrote; a one-line LedgerError for anything else."""
        if not isinstance(d, Mapping):
            raise LedgerError(f"a decision must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(map(str, d)) - {"kind", "values", "grades"})
        if unknown or "kind" not in d or "values" not in d:
            raise LedgerError("a decision needs 'kind' and 'values' (and 'grades' for cutoffs)"
                              + (f"; unknown keys: {few(unknown)}" if unknown else ""))
        return cls(str(d["kind"]), _numbers(d["values"], "values"), _numbers(d.get("grades", []), "grades"))

    def describe(self, names: Sequence[str] | None = None) -> str:
        """One short line for the CLI: 'threshold 0.25 for 14 of 17 tags; 3 tags their own (0.18..0.4)'."""
        if self.kind == "cutoffs":
            grades = ", ".join(f"{g:g}" for g in self.grades)
            if not self.values:
                return f"one grade ({grades}) for all"
            return f"cut-offs {', '.join(f'{v:.4g}' for v in self.values)} between grades {grades}"
        # The most common threshold (the lowest on a tie) leads: the global one, unless most tags
        # took their own, which the line then says by its counts.
        values, counts = np.unique(self.values, return_counts=True)
        common = float(values[np.argmax(counts)])
        own = [i for i, v in enumerate(self.values) if v != common]
        if not own:
            return f"threshold {common:g} for all {len(self.values)} tags"
        lead = f"threshold {common:g} for {len(self.values) - len(own)} of {len(self.values)} tags; "
        if names is None or len(names) != len(self.values):
            spread = f"{min(self.values[i] for i in own):g}..{max(self.values[i] for i in own):g}"
            return lead + f"{len(own)} tag{'s' * (len(own) > 1)} their own ({spread})"
        return lead + "their own: " + few([f"{names[i]} {self.values[i]:g}" for i in own], quote=False)


def _numbers(values, key: str) -> list[float]:
    if isinstance(values, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in values):
        return [float(v) for v in values]
    raise LedgerError(f"a decision's {key!r} must be a list of numbers")


def choose(metric: TaskMetric, truth, preds, min_positives: int = 20,
           per_tag: bool = True) -> Decision | None:
    """The decision that scores best on these (out-of-bag) predictions; None for a metric that
    scores probabilities or values as they are. `per_tag=False` fits only the global threshold:
    the cheap path for the weight search."""
    if not metric.decided:
        return None
    truth, preds = checked_arrays(metric, truth, preds)
    if len(truth) == 0:
        raise LedgerError(f"{metric.name}: no predictions to choose {metric.decision_kind} on")
    if metric.decision_kind == "cutoffs":
        return _choose_cutoffs(metric, truth[:, 0], preds[:, 0])
    return _choose_thresholds(metric, truth, preds, min_positives, per_tag)


def _pick(metric: TaskMetric, scores: np.ndarray, order: np.ndarray, current: float | None = None) -> int:
    """The first position in `order` whose score is within the tolerance of the best (and beats
    `current` by more than it, when given); -1 when none beats `current`."""
    scores = [float(s) for s in scores]
    best = max(scores) if metric.higher_is_better else min(scores)
    for i in order:
        if not metric.better(best, scores[i]) and (current is None or metric.better(scores[i], current)):
            return int(i)
    return -1


# ---------------------------------------------------------------- thresholds


def _fscore(tp: np.ndarray, predicted: np.ndarray, true: np.ndarray, beta: float) -> np.ndarray:
    """scikit-learn's F-beta from counts: (1 + b²) tp / (b² true + predicted), ZERO_DIVISION at 0/0."""
    b2 = beta * beta
    denominator = b2 * true + predicted
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (1 + b2) * tp / denominator, ZERO_DIVISION)


def _above(counts: np.ndarray) -> np.ndarray:
    """From counts of grid positions 0..K (last axis), the count above each of the K thresholds:
    a prediction at position p (p grid values at or below it) is on for thresholds 0..p-1."""
    return np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1][..., 1:]


def _grid_positions(preds: np.ndarray) -> np.ndarray:
    """How many grid thresholds each prediction reaches (it is on at GRID[j] iff j < position), as
    searchsorted(GRID, preds, "right") counts them, in half its time: floor(100 p) is off by at most
    one either way, and (t + 1) / 100 is the very float GRID[t] holds, so one `<=` and one `>`
    against it correct the count exactly."""
    position = np.floor(preds * 100)
    position += (position + 1) / 100 <= preds
    position -= position / 100 > preds
    return np.clip(position, 0, len(GRID)).astype(np.int64)


def _choose_thresholds(metric: TaskMetric, truth, preds, min_positives: int, per_tag: bool) -> Decision:
    if metric.average not in ("samples", "macro") or metric.beta is None:
        raise LedgerError(f"{metric.name}: no threshold search for this metric")
    search = (_MacroF if metric.average == "macro" else _SamplesF)(truth, _grid_positions(preds), metric.beta)
    steps = np.arange(len(GRID))
    # Ties between global thresholds: nearest 0.5, then the lower one.
    at = np.full(truth.shape[1], _pick(metric, search.all_tags(), np.lexsort((steps, np.abs(steps - _MIDDLE)))))
    eligible = np.flatnonzero(truth.sum(axis=0) >= min_positives) if per_tag else ()
    for _ in range(_TAG_PASSES if len(eligible) else 0):
        changed = False
        for t in eligible:
            scores = search.one_tag(t, at)
            # A tag's own threshold: nearest its current one, then the lower one.
            moved = _pick(metric, scores, np.lexsort((steps, np.abs(steps - at[t]))), scores[at[t]])
            if moved >= 0:
                search.move(t, moved)
                at[t], changed = moved, True
        if not changed:
            break
    return Decision("thresholds", tuple(float(GRID[j]) for j in at))


class _MacroF:
    """Mean over tags of each tag's F: the tags do not interact, so one (T, K) table of each tag's
    F at each threshold serves both steps."""

    def __init__(self, truth, position, beta):
        tags, width = truth.shape[1], len(GRID) + 1
        flat = (np.arange(tags)[None, :] * width + position).ravel()
        predicted = _above(np.bincount(flat, minlength=tags * width).reshape(tags, width))
        hits = _above(np.bincount(flat, weights=truth.ravel(), minlength=tags * width).reshape(tags, width))
        self.table = _fscore(hits, predicted, truth.sum(axis=0)[:, None], beta)

    def all_tags(self) -> np.ndarray:
        return self.table.mean(axis=0)

    def one_tag(self, t: int, at: np.ndarray) -> np.ndarray:
        others = np.arange(len(at)) != t
        return (self.table[others, at[others]].sum() + self.table[t]) / len(at)

    def move(self, t: int, step: int) -> None:
        pass  # the table holds every threshold of every tag


class _SamplesF:
    """Mean over images of each image's F, from counts per image: tags interact through them."""

    def __init__(self, truth, position, beta):
        self.truth, self.position, self.beta = truth, position, beta
        self.true = truth.sum(axis=1)
        self.on = None  # (N, T) decisions at the current thresholds, kept with their sums per image

    def all_tags(self) -> np.ndarray:
        """In O(N T), not O(N K): an image's F changes only where one of its tags switches on. With
        its tags in descending order of position, the i-th switches on below its position and adds
        F(first i on) - F(first i - 1 on)."""
        (n, tags), true = self.truth.shape, self.true
        order = np.argsort(-self.position, axis=1, kind="stable")
        ranked = np.take_along_axis(self.position, order, axis=1)
        hits = np.cumsum(np.take_along_axis(self.truth, order, axis=1), axis=1)
        f_none = _fscore(np.zeros(n), np.zeros(n), true, self.beta)
        f_first = _fscore(hits, np.arange(1, tags + 1)[None, :], true[:, None], self.beta)
        steps = np.diff(np.concatenate([f_none[:, None], f_first], axis=1), axis=1)
        gain = _above(np.bincount(ranked.ravel(), weights=steps.ravel(), minlength=len(GRID) + 1))
        return (f_none.sum() + gain) / n

    def one_tag(self, t: int, at: np.ndarray) -> np.ndarray:
        """The other tags' decisions fixed; an image gains F(on) - F(off) below its position."""
        if self.on is None:
            self.on = (self.position > at[None, :]).astype(np.float64)
            self.hits, self.predicted = (self.on * self.truth).sum(axis=1), self.on.sum(axis=1)
        truth_t, on_t = self.truth[:, t], self.on[:, t]
        hits, predicted = self.hits - on_t * truth_t, self.predicted - on_t
        f_off = _fscore(hits, predicted, self.true, self.beta)
        f_on = _fscore(hits + truth_t, predicted + 1, self.true, self.beta)
        gain = _above(np.bincount(self.position[:, t], weights=f_on - f_off, minlength=len(GRID) + 1))
        return (f_off.sum() + gain) / len(truth_t)

    def move(self, t: int, step: int) -> None:
        flipped = (self.position[:, t] > step) - self.on[:, t]
        self.on[:, t] += flipped
        self.hits += flipped * self.truth[:, t]
        self.predicted += flipped


# ---------------------------------------------------------------- cut-offs


def _choose_cutoffs(metric: TaskMetric, truth: np.ndarray, preds: np.ndarray) -> Decision:
    grades = np.unique(truth)
    if len(grades) == 1:
        return Decision("cutoffs", (), (float(grades[0]),))
    cutoffs = (grades[:-1] + grades[1:]) / 2
    order = np.argsort(preds, kind="stable")
    values, rank = preds[order], np.searchsorted(grades, truth)[order]  # rank: index of the true grade
    count = len(grades)
    # Quadratic kappa over grade indices, as cohen_kappa_score computes it with the grades as labels:
    # 1 - sum_images (true - guess)^2 / sum_j guesses_j * expected_j, expected_j = sum_i true_i (i - j)^2 / N.
    true_counts = np.bincount(rank, minlength=count)
    distance = (np.arange(count)[:, None] - np.arange(count)[None, :]) ** 2
    expected = (distance * true_counts[:, None]).sum(axis=0) / len(values)
    ends = (min(values[0], grades[0]), max(values[-1], grades[-1]))
    for _ in range(_CUTOFF_PASSES):
        changed = False
        for b in range(count - 1):
            moved = _move_boundary(metric, b, cutoffs, values, rank, expected, ends)
            if moved is not None:
                cutoffs[b], changed = moved, True
        if not changed:
            break
    return Decision("cutoffs", tuple(float(c) for c in cutoffs), tuple(float(g) for g in grades))


def _move_boundary(metric, b, cutoffs, values, rank, expected, ends) -> float | None:
    """The best cut-off between grades b and b + 1 on a grid between its neighbours, the others
    fixed; None when none beats the current one by more than the tolerance."""
    n, last = len(values), len(cutoffs) - 1
    low = cutoffs[b - 1] if b > 0 else ends[0]
    high = cutoffs[b + 1] if b < last else ends[1]
    grid = low + (high - low) * np.arange(1, _CUTOFF_STEPS) / _CUTOFF_STEPS
    grid = grid[(grid > low) & (grid < high)]  # strictly between, so the cut-offs stay ascending
    if not len(grid):
        return None
    # Images in start..stop (sorted by prediction) lie between the neighbours: grade b below the
    # cut-off, b + 1 from it on. The rest keep their guesses whatever this cut-off does.
    start = np.searchsorted(values, low, side="left") if b > 0 else 0
    stop = np.searchsorted(values, high, side="left") if b < last else n
    guess = np.searchsorted(cutoffs, values, side="right")
    outside = np.r_[0:start, stop:n]
    disagreement = ((rank[outside] - guess[outside]) ** 2).sum()
    chance = np.bincount(guess[outside], minlength=len(expected)) @ expected
    below = np.r_[0, np.cumsum((rank[start:stop] - b) ** 2)]
    from_on = np.r_[np.cumsum(((rank[start:stop] - b - 1) ** 2)[::-1])[::-1], 0]

    def kappa(cut: np.ndarray) -> np.ndarray:
        split = np.clip(np.searchsorted(values, cut, side="left"), start, stop)
        m = split - start
        return 1 - (disagreement + below[m] + from_on[m]) / (
            chance + m * expected[b] + (stop - split) * expected[b + 1])

    current = float(kappa(np.array([cutoffs[b]]))[0])
    # Ties: nearest the current cut-off, then the lower one.
    moved = _pick(metric, kappa(grid), np.lexsort((grid, np.abs(grid - cutoffs[b]))), current)
    return None if moved < 0 else float(grid[moved])
