"""Thresholds and cut-offs chosen on out-of-bag predictions: found where the answer is known by
construction, checked against scikit-learn called directly, deterministic, and safe to store."""

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, fbeta_score

from ledger.bag.decisions import GRID, Decision, choose
from ledger.bag.task_metrics import task_metric
from ledger.errors import LedgerError

F2 = task_metric("f2_samples", "multi_label")
F1_MACRO = task_metric("f1_macro", "multi_label")
QWK = task_metric("qwk", "regression")


def noisy_tags(n=400, tags=5, seed=0):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, tags)) < np.linspace(0.1, 0.5, tags)).astype(np.float64)
    probs = np.clip(0.35 * truth + 0.65 * rng.random((n, tags)), 0, 1).round(3)
    return truth, probs


def f2(truth, tags):
    return fbeta_score(truth, tags, beta=2, average="samples", zero_division=1.0)


def best_on_grid(scores):
    """The grid threshold scikit-learn's scores put first: the best, nearest 0.5 on a tie, then lower."""
    scores = np.asarray(scores)
    ties = np.flatnonzero(scores >= scores.max() - 1e-12)
    return GRID[min(ties, key=lambda i: (abs(i - 49), i))]


# ---------------------------------------------------------------- thresholds


def test_a_known_plateau_of_perfect_thresholds_gives_the_one_nearest_one_half():
    # True tags at 0.35, false ones at 0.15: every threshold in 0.16..0.35 tags perfectly; 0.35 is
    # the one nearest 0.5.
    rng = np.random.default_rng(1)
    truth = (rng.random((200, 4)) < 0.3).astype(float)
    probs = np.where(truth > 0, 0.35, 0.15)
    decision = choose(F2, truth, probs)
    assert decision == Decision("thresholds", (0.35,) * 4)
    assert f2(truth, decision.apply(probs)) == 1.0
    # Beyond 0.5 the nearest is the plateau's lowest: true at 0.8, false at 0.62 -> 0.63.
    assert choose(F2, truth, np.where(truth > 0, 0.8, 0.62)).values == (0.63,) * 4


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name, beta, average", [("f2_samples", 2, "samples"), ("f1_samples", 1, "samples"),
                                                 ("f1_macro", 1, "macro")])
def test_the_global_threshold_is_the_best_on_the_grid_by_scikit_learn(seed, name, beta, average):
    truth, probs = noisy_tags(seed=seed)
    truth[:7] = 0  # images with no tag
    expected = best_on_grid([fbeta_score(truth, (probs >= g).astype(int), beta=beta, average=average,
                                         zero_division=1.0) for g in GRID])
    decision = choose(task_metric(name, "multi_label"), truth, probs, per_tag=False)
    assert decision.values == (expected,) * truth.shape[1]


def test_own_thresholds_only_for_tags_with_enough_positives_and_they_improve_the_score():
    rng = np.random.default_rng(2)
    n = 600
    truth = (rng.random((n, 3)) < [0.3, 0.3, 0.02]).astype(float)
    noise = rng.random((n, 3))
    # Tag 0 is predicted low (positives ~0.1..0.3), tag 1 high (positives ~0.7..0.9): no single
    # threshold suits both. Tag 2 has about 12 positives, fewer than min_positives.
    probs = np.column_stack([0.1 * noise[:, 0] + 0.2 * truth[:, 0],
                             0.6 + 0.1 * noise[:, 1] + 0.2 * truth[:, 1],
                             0.3 * noise[:, 2] + 0.5 * truth[:, 2]])
    assert 0 < truth[:, 2].sum() < 20
    shared = choose(F2, truth, probs, per_tag=False)
    own = choose(F2, truth, probs, min_positives=20)
    assert own.values[2] == shared.values[0]  # the rare tag keeps the global threshold
    assert 0.1 < own.values[0] <= 0.2 and 0.7 <= own.values[1] <= 0.8  # where each separates cleanly
    assert (own.apply(probs)[:, :2] == truth[:, :2]).all()
    assert f2(truth, own.apply(probs)) > f2(truth, shared.apply(probs)) + 0.01
    # With min_positives above every tag's count, nothing moves.
    assert choose(F2, truth, probs, min_positives=n) == shared


def test_own_thresholds_for_macro_f1_are_each_tags_best_by_scikit_learn():
    truth, probs = noisy_tags(seed=4)
    decision = choose(F1_MACRO, truth, probs, min_positives=1)
    for t in range(truth.shape[1]):
        column = [f1_score(truth[:, t], probs[:, t] >= g, zero_division=1.0) for g in GRID]
        assert f1_score(truth[:, t], probs[:, t] >= decision.values[t], zero_division=1.0) == pytest.approx(
            max(column), abs=1e-12)


def test_own_thresholds_for_samples_f_never_score_below_the_global_one():
    for seed in range(4):
        truth, probs = noisy_tags(seed=seed)
        shared = choose(F2, truth, probs, per_tag=False)
        own = choose(F2, truth, probs, min_positives=5)
        assert f2(truth, own.apply(probs)) >= f2(truth, shared.apply(probs))


def test_a_single_tag_gets_the_best_threshold_by_scikit_learn():
    truth, probs = noisy_tags(tags=1, seed=9)
    expected = best_on_grid([f1_score(truth[:, 0], probs[:, 0] >= g, zero_division=1.0) for g in GRID])
    assert choose(F1_MACRO, truth, probs).values == (expected,)
    # Over samples, one tag scores the share of images decided right.
    expected = best_on_grid([np.mean((probs[:, 0] >= g) == truth[:, 0]) for g in GRID])
    assert choose(F2, truth, probs, per_tag=False).values == (expected,)


def test_choice_is_deterministic_and_independent_of_the_image_order():
    truth, probs = noisy_tags(n=800, seed=5)
    first = choose(F2, truth, probs, min_positives=10)
    assert choose(F2, truth, probs, min_positives=10) == first
    shuffled = np.random.default_rng(0).permutation(len(truth))
    assert choose(F2, truth[shuffled], probs[shuffled], min_positives=10) == first


def test_a_metric_of_probabilities_needs_no_decision_and_no_images_is_refused():
    truth, probs = noisy_tags(n=20)
    assert choose(task_metric("roc_auc", "multi_label"), truth, probs) is None
    assert choose(task_metric("rmse", "regression"), truth, probs) is None
    with pytest.raises(LedgerError, match="f2_samples: no predictions to choose thresholds on"):
        choose(F2, np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(LedgerError, match="non-finite"):
        choose(F2, truth, np.where(probs > 0.9, np.nan, probs))


def test_grid_positions_count_the_thresholds_reached_exactly_as_searchsorted():
    from ledger.bag.decisions import _grid_positions

    edges = np.concatenate([GRID, np.nextafter(GRID, 0), np.nextafter(GRID, 1), np.arange(1, 100) * 0.01,
                            [0.0, 5e-324, np.nextafter(1, 0), 1.0]])
    preds = np.concatenate([edges, np.random.default_rng(8).random(100_000)])
    assert np.array_equal(_grid_positions(preds), np.searchsorted(GRID, preds, side="right"))


# ---------------------------------------------------------------- cut-offs


@pytest.mark.parametrize("shift", [0.7, -1.3])
def test_cutoffs_recover_grades_shifted_by_a_constant(shift):
    rng = np.random.default_rng(3)
    grades = rng.integers(0, 5, 500).astype(float)
    preds = (grades + shift)[:, None]
    midpoints = cohen_kappa_score(grades, np.clip(np.floor(preds[:, 0] + 0.5), 0, 4), weights="quadratic")
    decision = choose(QWK, grades[:, None], preds)
    assert decision.grades == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert list(decision.values) == sorted(decision.values) and len(set(decision.values)) == 4
    assert midpoints < 0.95
    assert cohen_kappa_score(grades, decision.apply(preds)[:, 0], weights="quadratic") == 1.0
    assert choose(QWK, grades[:, None], preds) == decision


def test_cutoffs_beat_the_midpoints_on_noisy_predictions():
    rng = np.random.default_rng(4)
    grades = rng.choice([0, 1, 2, 3, 4], 2000, p=[0.45, 0.1, 0.25, 0.1, 0.1]).astype(float)
    preds = (grades + rng.normal(0.3, 0.7, len(grades)))[:, None]
    midpoints = cohen_kappa_score(grades, np.clip(np.floor(preds[:, 0] + 0.5), 0, 4), weights="quadratic")
    decision = choose(QWK, grades[:, None], preds)
    chosen = cohen_kappa_score(grades, decision.apply(preds)[:, 0], weights="quadratic")
    assert chosen > midpoints + 0.005
    assert QWK.score(grades[:, None], preds, decision) == pytest.approx(chosen, rel=1e-12)
    assert list(decision.values) == sorted(decision.values)
    assert choose(QWK, grades[:, None], preds) == decision


def test_one_grade_needs_no_cutoff():
    decision = choose(QWK, np.full((5, 1), 2.0), np.linspace(0, 4, 5)[:, None])
    assert decision == Decision("cutoffs", (), (2.0,))
    assert decision.apply(np.array([[-9.0], [9.0]])).tolist() == [[2.0], [2.0]]


# ---------------------------------------------------------------- the Decision itself


def test_apply_thresholds_and_cutoffs_by_hand():
    thresholds = Decision("thresholds", (0.25, 0.5))
    assert thresholds.apply(np.array([[0.25, 0.49], [0.1, 0.5]])).tolist() == [[1, 0], [0, 1]]
    # float32 0.01 is 0.0099999998: below the threshold 0.01, compared in float64.
    assert Decision("thresholds", (0.01,)).apply(np.array([[0.01]], dtype=np.float32)).tolist() == [[0]]
    cutoffs = Decision("cutoffs", (0.5, 2.25), (0.0, 1.0, 3.0))
    assert cutoffs.apply(np.array([[0.49], [0.5], [2.25], [-4.0]])).tolist() == [[0.0], [1.0], [3.0], [0.0]]


def test_a_decision_goes_through_json_and_back_exactly():
    truth, probs = noisy_tags(seed=6)
    rng = np.random.default_rng(7)
    grades = rng.integers(0, 4, 300).astype(float)
    for decision in (choose(F2, truth, probs, min_positives=5),
                     choose(QWK, grades[:, None], (grades + rng.normal(0, 0.6, 300))[:, None])):
        back = Decision.from_dict(json.loads(json.dumps(decision.to_dict())))
        assert back == decision
        assert np.array_equal(back.apply(probs if decision.kind == "thresholds" else probs[:, :1]),
                              decision.apply(probs if decision.kind == "thresholds" else probs[:, :1]))


@pytest.mark.parametrize("bad, message", [
    ([0.5], "a decision must be a mapping, got list"),
    ({"values": [0.5]}, "a decision needs 'kind' and 'values'"),
    ({"kind": "thresholds", "values": [0.5], "extra": 1}, "unknown keys: 'extra'"),
    ({"kind": "votes", "values": [0.5]}, "decision kind must be one of thresholds, cutoffs"),
    ({"kind": "thresholds", "values": ["0.5"]}, "'values' must be a list of numbers"),
    ({"kind": "thresholds", "values": [True]}, "'values' must be a list of numbers"),
    ({"kind": "thresholds", "values": 0.5}, "'values' must be a list of numbers"),
    ({"kind": "thresholds", "values": []}, "one threshold per tag"),
    ({"kind": "thresholds", "values": [float("nan")]}, "finite"),
    ({"kind": "thresholds", "values": [1.5]}, "above 0 and at most 1"),
    ({"kind": "thresholds", "values": [0.0]}, "above 0 and at most 1"),
    ({"kind": "cutoffs", "values": [1.5, 0.5], "grades": [0, 1, 2]}, "strictly ascending"),
    ({"kind": "cutoffs", "values": [0.5], "grades": [0, 1, 2]}, "1 cut-offs need 2 grades, got 3"),
    ({"kind": "cutoffs", "values": [0.5], "grades": [1, 0]}, "strictly ascending"),
])
def test_a_bad_decision_is_refused_in_one_line(bad, message):
    with pytest.raises(LedgerError, match=message) as error:
        Decision.from_dict(bad)
    assert "\n" not in str(error.value)


def test_apply_refuses_predictions_of_the_wrong_width():
    with pytest.raises(LedgerError, match=r"thresholds: expected predictions \(N, 2\), got \(3, 3\)"):
        Decision("thresholds", (0.5, 0.5)).apply(np.zeros((3, 3)))
    with pytest.raises(LedgerError, match=r"cutoffs: expected predictions \(N, 1\)"):
        Decision("cutoffs", (0.5,), (0.0, 1.0)).apply(np.zeros(3))


def test_describe_in_one_short_line():
    assert Decision("thresholds", (0.25,) * 3).describe() == "threshold 0.25 for all 3 tags"
    mixed = Decision("thresholds", (0.25, 0.25, 0.25, 0.1, 0.4))
    assert mixed.describe() == "threshold 0.25 for 3 of 5 tags; 2 tags their own (0.1..0.4)"
    assert mixed.describe(["a", "b", "c", "haze", "road"]) == (
        "threshold 0.25 for 3 of 5 tags; their own: haze 0.1, road 0.4")
    assert Decision("cutoffs", (0.5, 1.62), (0.0, 1.0, 2.0)).describe() == "cut-offs 0.5, 1.62 between grades 0, 1, 2"
