"""The multi-label and regression metrics, worked by hand on a few images and compared with
scikit-learn called directly on random and edge-case data."""

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import (cohen_kappa_score, f1_score, fbeta_score, log_loss, mean_absolute_error,
                             roc_auc_score, root_mean_squared_error)

from ledger.bag.decisions import Decision
from ledger.bag.task_metrics import TASK_METRICS, task_metric
from ledger.errors import LedgerError


def tagged(n=300, tags=6, seed=0):
    """Random multi-label truth with tags of different frequencies, and probabilities that lean
    toward it, rounded to 3 places so that some land exactly on a threshold."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, tags)) < np.linspace(0.05, 0.6, tags)).astype(np.float64)
    probs = np.clip(0.4 * truth + 0.6 * rng.random((n, tags)), 0, 1).round(3)
    return truth, probs


def score(name, task, truth, preds, decision=None):
    return task_metric(name, task).score(np.array(truth, dtype=float), np.array(preds, dtype=float), decision)


# ---------------------------------------------------------------- by hand


# Three images, three tags. Image 0 has no tag and none predicted; image 1 has none but one
# predicted; image 2 has tags 0 and 1 and predicts 1 and 2.
HAND_TRUTH = [[0, 0, 0], [0, 0, 0], [1, 1, 0]]
HAND_PROBS = [[0.1, 0.2, 0.3], [0.7, 0.1, 0.0], [0.2, 0.9, 0.5]]


def test_f_over_samples_by_hand_an_image_with_no_tag_and_none_predicted_is_perfect():
    # At 0.5 (>=): image 0 predicts nothing (F = 1, zero_division=1), image 1 predicts tag 0
    # (tp 0: F = 0), image 2 predicts tags 1 and 2: tp 1, true 2, predicted 2.
    # F2 = 5 tp / (4 true + predicted) = 5 / 10 = 1/2; F1 = 2 tp / (true + predicted) = 2/4 = 1/2.
    assert score("f2_samples", "multi_label", HAND_TRUTH, HAND_PROBS) == pytest.approx((1 + 0 + 0.5) / 3)
    assert score("f1_samples", "multi_label", HAND_TRUTH, HAND_PROBS) == pytest.approx((1 + 0 + 0.5) / 3)


def test_f1_macro_by_hand():
    # tag 0: tp 0, true 1, predicted 1 -> 0; tag 1: tp 1, true 1, predicted 1 -> 1;
    # tag 2: tp 0, true 0, predicted 1 -> 0. Mean 1/3.
    assert score("f1_macro", "multi_label", HAND_TRUTH, HAND_PROBS) == pytest.approx(1 / 3)
    # Raising tag 2's threshold to 0.6 leaves it neither true nor predicted anywhere, which scores 1
    # (zero_division=1): (0 + 1 + 1) / 3.
    assert score("f1_macro", "multi_label", HAND_TRUTH, HAND_PROBS,
                 Decision("thresholds", (0.5, 0.5, 0.6))) == pytest.approx(2 / 3)


def test_predictions_that_are_already_tags_stay_as_they_are():
    tags = [[0, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert score("f2_samples", "multi_label", HAND_TRUTH, tags) == pytest.approx(0.5)
    assert score("f2_samples", "multi_label", HAND_TRUTH, tags,
                 Decision("thresholds", (1.0, 0.01, 0.7))) == pytest.approx(0.5)


def test_rmse_and_mae_average_the_columns_by_hand():
    truth = [[1.0, 10.0], [2.0, 20.0]]
    preds = [[4.0, 10.0], [6.0, 20.0]]
    # column 0: errors 3 and 4 -> RMSE sqrt(12.5), MAE 3.5; column 1 exact.
    assert score("rmse", "regression", truth, preds) == pytest.approx(math.sqrt(12.5) / 2)
    assert score("mae", "regression", truth, preds) == pytest.approx(3.5 / 2)


def test_qwk_rounds_to_the_nearest_grade_seen_in_the_truth_half_way_up():
    truth = [[0], [1], [2], [3], [3], [1]]
    preds = [[-2.0], [0.5], [1.49], [2.7], [9.0], [1.5]]
    guess = [0, 1, 1, 3, 3, 2]  # by hand: clipped into 0..3, 0.5 and 1.5 go up
    expected = cohen_kappa_score([0, 1, 2, 3, 3, 1], guess, weights="quadratic")
    assert score("qwk", "regression", truth, preds) == pytest.approx(expected, rel=1e-12)
    # With cut-offs: below 1 grade 0, from 1 grade 2, from 2.5 grade 3 (grade 1 is never guessed).
    cut = Decision("cutoffs", (1.0, 1.2, 2.5), (0.0, 1.0, 2.0, 3.0))
    expected = cohen_kappa_score([0, 1, 2, 3, 3, 1], [0, 0, 2, 3, 3, 2], weights="quadratic")
    assert score("qwk", "regression", truth, preds, cut) == pytest.approx(expected, rel=1e-12)


def test_grades_already_whole_are_scored_as_they_are_with_or_without_cutoffs():
    truth = [[0], [1], [2], [3]]
    guess = [[0], [2], [2], [4]]  # 4: a grade the truth lacks, kept (not clipped to 3)
    expected = cohen_kappa_score([0, 1, 2, 3], [0, 2, 2, 4], weights="quadratic")
    assert score("qwk", "regression", truth, guess) == pytest.approx(expected, rel=1e-12)
    cut = Decision("cutoffs", (0.9, 2.5, 2.6, 3.1), (0.0, 1.0, 2.0, 3.0, 4.0))
    assert score("qwk", "regression", truth, guess, cut) == pytest.approx(expected, rel=1e-12)


def test_f_over_samples_of_a_single_tag_is_the_share_of_images_decided_right():
    # One tag: an image scores 1 when right (tagged and true, or neither), else 0.
    truth, probs = [[1], [0], [1], [0]], [[0.9], [0.2], [0.1], [0.7]]
    assert score("f2_samples", "multi_label", truth, probs) == pytest.approx(0.5)
    assert score("f1_samples", "multi_label", truth, probs) == pytest.approx(0.5)
    # Macro over one tag is that tag's F1 (tp 1, fp 1, fn 1: 1/2), not the mean over classes 0 and 1.
    assert score("f1_macro", "multi_label", truth, probs) == pytest.approx(0.5)
    truth, probs = tagged(tags=1, seed=7)
    assert score("f1_macro", "multi_label", truth, probs) == pytest.approx(
        f1_score(truth[:, 0], probs[:, 0] >= 0.5, zero_division=1.0), rel=1e-12)


# ---------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f_scores_equal_scikit_learn_at_any_thresholds(seed):
    truth, probs = tagged(seed=seed)
    truth[:5] = 0  # images with no tag, some predicting one
    thresholds = (0.5, 0.3, 0.45, 0.62, 0.2, 0.5)
    for decision in (None, Decision("thresholds", thresholds)):
        cut = np.array(thresholds) if decision else 0.5
        tags = (probs >= cut).astype(int)
        for name, beta, average in [("f1_samples", 1, "samples"), ("f2_samples", 2, "samples"),
                                    ("f1_macro", 1, "macro")]:
            expected = fbeta_score(truth, tags, beta=beta, average=average, zero_division=1.0)
            assert score(name, "multi_label", truth, probs, decision) == pytest.approx(expected, rel=1e-12)
        assert score("f1_macro", "multi_label", truth, probs, decision) == pytest.approx(
            f1_score(truth, tags, average="macro", zero_division=1.0), rel=1e-12)


def test_roc_auc_is_the_mean_over_columns_with_both_classes():
    truth, probs = tagged(seed=3)
    assert score("roc_auc", "multi_label", truth, probs) == pytest.approx(
        roc_auc_score(truth, probs, average="macro"), rel=1e-12)
    truth[:, 1] = 0  # a tag never present: no AUC
    truth[:, 4] = 1  # a tag always present: no AUC
    per_column = [roc_auc_score(truth[:, t], probs[:, t]) for t in (0, 2, 3, 5)]
    assert score("roc_auc", "multi_label", truth, probs) == pytest.approx(np.mean(per_column), rel=1e-12)
    truth[:, [0, 2, 3]] = 0  # one column left with an AUC
    assert score("roc_auc", "multi_label", truth, probs) == pytest.approx(
        roc_auc_score(truth[:, 5], probs[:, 5]), rel=1e-12)
    assert math.isnan(score("roc_auc", "multi_label", np.zeros((4, 2)), np.full((4, 2), 0.3)))


def test_log_loss_is_the_mean_binary_log_loss_over_columns():
    truth, probs = tagged(seed=4)
    probs[0, 0] = 0.0  # clipped, as scikit-learn clips
    truth[:, 2] = 0  # one class in a column
    expected = np.mean([log_loss(truth[:, t], probs[:, t], labels=[0, 1]) for t in range(truth.shape[1])])
    assert score("log_loss", "multi_label", truth, probs) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("targets", [1, 3])
def test_rmse_and_mae_equal_scikit_learn(targets):
    rng = np.random.default_rng(targets)
    truth = rng.normal(50, 20, (200, targets))
    preds = truth + rng.normal(0, 5, (200, targets)) * np.arange(1, targets + 1)
    assert score("rmse", "regression", truth, preds) == pytest.approx(
        root_mean_squared_error(truth, preds), rel=1e-12)
    assert score("mae", "regression", truth, preds) == pytest.approx(
        mean_absolute_error(truth, preds), rel=1e-12)


def test_qwk_equals_scikit_learn_on_random_grades():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 5, 400).astype(float)
    preds = truth + rng.normal(0, 0.8, 400)
    guess = np.clip(np.floor(preds + 0.5), 0, 4)  # nearest integer grade, half way up
    assert score("qwk", "regression", truth[:, None], preds[:, None]) == pytest.approx(
        cohen_kappa_score(truth, guess, weights="quadratic"), rel=1e-12)


def test_undefined_figures_are_nan():
    for task, metrics in TASK_METRICS.items():
        for name in metrics:
            width = 1 if name == "qwk" else 3
            assert math.isnan(score(name, task, np.zeros((0, width)), np.zeros((0, width))))
    assert math.isnan(score("qwk", "regression", [[2], [2]], [[2.1], [1.9]]))  # one grade everywhere


# ---------------------------------------------------------------- the table and its refusals


def test_the_metrics_of_each_task_and_their_kind():
    names = {task: set(metrics) for task, metrics in TASK_METRICS.items()}
    assert names == {"multi_label": {"f1_samples", "f2_samples", "f1_macro", "roc_auc", "log_loss"},
                     "regression": {"rmse", "mae", "qwk"}}
    decided = {m.name for metrics in TASK_METRICS.values() for m in metrics.values() if m.decided}
    assert decided == {"f1_samples", "f2_samples", "f1_macro", "qwk"}
    lower = {m.name for metrics in TASK_METRICS.values() for m in metrics.values() if not m.higher_is_better}
    assert lower == {"log_loss", "rmse", "mae"}
    for metrics in TASK_METRICS.values():
        for m in metrics.values():
            assert m.needs_probabilities != m.decided


def test_better_ignores_differences_within_the_tolerance():
    f2, rmse = task_metric("f2_samples", "multi_label"), task_metric("rmse", "regression")
    assert f2.better(0.8, 0.7) and not f2.better(0.7, 0.8)
    assert not f2.better(0.8 + 1e-12, 0.8) and not f2.better(float("nan"), 0.1) and f2.better(0.1, float("nan"))
    assert rmse.better(1.0, 2.0) and not rmse.better(1.0, 1.0 + 1e-12)


def test_unknown_metric_or_task_names_the_choices():
    with pytest.raises(LedgerError, match="unknown metric 'accuracy' for task regression; choices: rmse, mae, qwk"):
        task_metric("accuracy", "regression")
    with pytest.raises(LedgerError, match="unknown task 'single_label'"):
        task_metric("f2_samples", "single_label")


@pytest.mark.parametrize("name, task, truth, preds, message", [
    ("rmse", "regression", np.zeros(3), np.zeros(3), r"expected truth and predictions of one shape \(N, T\)"),
    ("rmse", "regression", [["a"]], [[1.0]], "truth and predictions must be arrays of numbers"),
    ("rmse", "regression", [[1.0], [2.0]], [[1.0], [2.0, 3.0]], "must be arrays of numbers"),
    ("rmse", "regression", np.zeros((3, 2)), np.zeros((3, 1)), r"got \(3, 2\) and \(3, 1\)"),
    ("f2_samples", "multi_label", np.zeros((3, 0)), np.zeros((3, 0)), "T >= 1"),
    ("rmse", "regression", np.zeros((3, 1)), np.array([[1.0], [np.nan], [np.inf]]), "predictions hold 2 non-finite"),
    ("mae", "regression", np.array([[np.nan]]), np.zeros((1, 1)), "truth holds 1 non-finite"),
    ("qwk", "regression", np.zeros((3, 2)), np.zeros((3, 2)), "one column of grades, got 2 columns"),
    ("roc_auc", "multi_label", np.full((2, 2), 2.0), np.zeros((2, 2)), "must be 0 or 1 per tag"),
    ("log_loss", "multi_label", np.zeros((2, 2)), np.full((2, 2), 1.5), "probabilities in 0..1"),
])
def test_bad_arrays_are_refused_in_one_line(name, task, truth, preds, message):
    with pytest.raises(LedgerError, match=message) as error:
        task_metric(name, task).score(truth, preds)
    assert "\n" not in str(error.value)


def test_a_decision_of_the_wrong_kind_is_refused_and_ignored_where_nothing_is_decided():
    truth, probs = tagged(n=20, tags=1)
    with pytest.raises(LedgerError, match="f2_samples: needs thresholds, got cutoffs"):
        score("f2_samples", "multi_label", truth, probs, Decision("cutoffs", (0.5,), (0.0, 1.0)))
    with pytest.raises(LedgerError, match="qwk: needs cutoffs, got thresholds"):
        score("qwk", "regression", [[0], [1]], [[0], [1]], Decision("thresholds", (0.5,)))
    thresholds = Decision("thresholds", (0.9,))
    assert score("roc_auc", "multi_label", truth, probs, thresholds) == score("roc_auc", "multi_label", truth, probs)


def test_importing_the_task_metrics_and_decisions_imports_neither_sklearn_nor_torch():
    code = ("import sys, ledger.bag.task_metrics, ledger.bag.decisions; "
            "print('sklearn' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
