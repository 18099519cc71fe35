"""Each metric on a few images worked by hand, then against scikit-learn on random data."""

import math
import subprocess
import sys

import numpy as np
import pytest

from ledger.errors import LedgerError
from ledger.bag.metrics import METRICS, NAMES, class_ranks, metric_by_name


def one_hot_like(predicted, classes, confidence=0.6):
    """Probabilities whose argmax is `predicted`: `confidence` there, the rest spread evenly."""
    probs = np.full((len(predicted), classes), (1 - confidence) / (classes - 1))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def score(name, labels, probs, **kwargs):
    return metric_by_name(name, **kwargs).score(np.array(labels), np.array(probs, dtype=np.float64))


# ---------------------------------------------------------------- by hand

# truth  0 0 0 1 2 2
# guess  0 0 1 1 2 1
TRUTH, GUESS = [0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 2, 1]


def test_accuracy_and_error_rate_by_hand():
    # Right at images 1, 2, 4, 5: 4 of 6.
    probs = one_hot_like(GUESS, 3)
    assert score("accuracy", TRUTH, probs) == pytest.approx(4 / 6)
    assert score("error_rate", TRUTH, probs) == pytest.approx(2 / 6)


def test_f1_averages_by_hand():
    probs = one_hot_like(GUESS, 3)
    # class 0: TP 2, FP 0, FN 1 -> precision 1, recall 2/3, F1 2 * 2/3 / (5/3) = 4/5
    # class 1: TP 1, FP 2, FN 0 -> precision 1/3, recall 1, F1 2 * 1/3 / (4/3) = 1/2
    # class 2: TP 1, FP 0, FN 1 -> precision 1, recall 1/2, F1 2 * 1/2 / (3/2) = 2/3
    # macro: (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90
    assert score("f1_macro", TRUTH, probs) == pytest.approx(59 / 90)
    # micro: pooled TP 4, FP 2, FN 2 -> 4/6 (accuracy, for one label per image)
    assert score("f1_micro", TRUTH, probs) == pytest.approx(4 / 6)
    # weighted by support 3, 1, 2: (3 * 4/5 + 1/2 + 2 * 2/3) / 6 = (72 + 15 + 40) / 30 / 6 = 127/180
    assert score("f1_weighted", TRUTH, probs) == pytest.approx(127 / 180)


def test_log_loss_by_hand_clips_at_float64_epsilon():
    probs = [[0.5, 0.25, 0.25], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]]
    labels = [0, 1, 2, 1]
    # -ln 0.5, -ln 0.8, -ln 0.8, and the last image's true class has 0, clipped to eps = 2^-52:
    # -ln 2^-52 = 52 ln 2. Mean: (53 ln 2 + 2 ln 1.25) / 4.
    expected = (53 * math.log(2) + 2 * math.log(1.25)) / 4
    assert score("log_loss", labels, probs) == pytest.approx(expected, rel=1e-12)


def test_binary_roc_auc_by_hand():
    # P(second class): negatives 0.1, 0.6; positives 0.35, 0.8, 0.6. Of the 6 (negative, positive)
    # pairs the positive ranks higher in 4 (0.1<0.35, 0.1<0.8, 0.1<0.6, 0.6<0.8), ties once
    # (0.6 = 0.6, half a pair), loses once (0.6 > 0.35): 4.5 / 6.
    positive = np.array([0.1, 0.6, 0.35, 0.8, 0.6])
    probs = np.stack([1 - positive, positive], axis=1)
    assert score("roc_auc", [0, 0, 1, 1, 1], probs) == pytest.approx(0.75)
    # Two classes: AUC is the same whichever class is called positive.
    assert score("roc_auc", [0, 0, 1, 1, 1], probs, vocab=["a", "b"], class_order=["b", "a"]) == pytest.approx(0.75)


def test_multiclass_roc_auc_is_the_macro_mean_of_one_vs_rest():
    probs = [[0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.2, 0.5, 0.3],
             [0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]
    labels = [0, 0, 1, 1, 2, 2]
    # class 0: positives 0.6, 0.3 against 0.2, 0.5, 0.1, 0.3: 4 + (1 + 0 + 1 + 0.5) = 6.5 / 8
    # class 1: positives 0.5, 0.3 against 0.3, 0.4, 0.2, 0.3: 4 + (0.5 + 0 + 1 + 0.5) = 6 / 8
    # class 2: positives 0.7, 0.4 against 0.1, 0.3, 0.3, 0.2: 8 / 8
    assert score("roc_auc", labels, probs) == pytest.approx((6.5 / 8 + 6 / 8 + 1) / 3)


def test_quadratic_weighted_kappa_by_hand_and_in_the_given_order():
    truth, guess = [0, 0, 1, 2, 2], [0, 1, 1, 2, 0]
    probs = one_hot_like(guess, 3)
    # Observed (rows truth, columns guess): [1 1 0; 0 1 0; 1 0 1]. Rows sum 2 1 2, columns 2 2 1.
    # Expected = outer(rows, columns) / 5: [.8 .8 .4; .4 .4 .2; .8 .8 .4]. Weights (i - j)^2.
    # sum w*O = 1*1 (0->1) + 4*1 (2->0) = 5;  sum w*E = 2.4 + 0.6 + 4.0 = 7.  kappa = 1 - 5/7.
    assert score("qwk", truth, probs) == pytest.approx(2 / 7)
    # The spec orders the classes b < a < c: ranks a 1, b 0, c 2. Truth ranks 1 1 0 2 2, guesses
    # 1 0 0 2 1: observed [1 0 0; 1 1 0; 0 1 1], rows 1 2 2, columns 2 2 1. sum w*O = 1 + 1 = 2;
    # expected rows [.4 .4 .2], [.8 .8 .4], [.8 .8 .4]: sum w*E = 1.2 + 1.2 + 4.0 = 6.4. kappa = 1 - 2/6.4.
    ordered = score("qwk", truth, probs, vocab=["a", "b", "c"], class_order=["b", "a", "c"])
    assert ordered == pytest.approx(1 - 2 / 6.4)


def test_undefined_figures_are_nan():
    assert math.isnan(score("roc_auc", [1, 1], [[0.2, 0.8], [0.4, 0.6]]))  # one class present
    assert math.isnan(score("roc_auc", [0, 1, 1], one_hot_like([0, 1, 2], 3)))  # class 2 never true
    assert math.isnan(score("qwk", [1, 1], one_hot_like([1, 1], 3)))  # one class everywhere
    assert math.isnan(score("accuracy", np.zeros(0, int), np.zeros((0, 3))))


# ---------------------------------------------------------------- against scikit-learn


def test_every_metric_agrees_with_scikit_learn_on_random_data():
    from sklearn import metrics as sk

    rng = np.random.default_rng(0)
    for classes in (2, 4):
        logits = rng.normal(size=(200, classes))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        labels = rng.integers(0, classes, size=200)
        guess = probs.argmax(axis=1)
        expected = {
            "accuracy": sk.accuracy_score(labels, guess),
            "error_rate": 1 - sk.accuracy_score(labels, guess),
            "f1_macro": sk.f1_score(labels, guess, average="macro"),
            "f1_micro": sk.f1_score(labels, guess, average="micro"),
            "f1_weighted": sk.f1_score(labels, guess, average="weighted"),
            "log_loss": sk.log_loss(labels, probs),
            "roc_auc": sk.roc_auc_score(labels, probs[:, 1]) if classes == 2 else
            sk.roc_auc_score(labels, probs, multi_class="ovr", average="macro"),
            "qwk": sk.cohen_kappa_score(labels, guess, weights="quadratic"),
        }
        assert set(expected) == set(NAMES)
        for name, value in expected.items():
            assert score(name, labels, probs) == pytest.approx(value, abs=1e-12), (name, classes)


def test_direction_and_kind_of_every_metric():
    lower = {name for name, m in METRICS.items() if not m.higher_is_better}
    probabilities = {name for name, m in METRICS.items() if m.needs_probabilities}
    assert lower == {"error_rate", "log_loss"} and probabilities == {"log_loss", "roc_auc"}


# ---------------------------------------------------------------- comparing scores


def test_better_ignores_differences_within_the_tolerance():
    accuracy, log_loss = metric_by_name("accuracy"), metric_by_name("log_loss")
    one_ulp_more = np.nextafter(0.5, 1.0)
    assert not accuracy.better(one_ulp_more, 0.5) and not accuracy.better(0.5, one_ulp_more)
    assert accuracy.better(0.75, 0.5) and not accuracy.better(0.5, 0.75)
    assert log_loss.better(0.3, 0.4) and not log_loss.better(0.4, 0.3)  # lower is better
    # Relative for large losses: 36.04 against 36.04 + 1e-12 is a tie.
    assert not log_loss.better(36.04, 36.04 + 1e-12)
    assert accuracy.better(0.1, float("nan")) and not accuracy.better(float("nan"), 0.1)


# ---------------------------------------------------------------- names and order


def test_unknown_metric_names_the_choices():
    with pytest.raises(LedgerError, match=r"unknown metric 'auc'; choices: accuracy, error_rate, .*qwk"):
        metric_by_name("auc")


def test_class_order_defaults_to_sorted_and_numeric_names_sort_as_numbers():
    assert class_ranks(["b", "a", "c"]).tolist() == [1, 0, 2]
    assert class_ranks(["0", "1", "10", "2"]).tolist() == [0, 1, 3, 2]  # 10 after 2
    assert class_ranks(["mild", "none", "severe"], ["none", "mild", "severe"]).tolist() == [1, 0, 2]
    with pytest.raises(LedgerError, match="class_order must name every class once; missing severe"):
        class_ranks(["mild", "none", "severe"], ["none", "mild"])
    with pytest.raises(LedgerError, match="not a class: bad"):
        class_ranks(["a", "b"], ["a", "b", "bad"])


def test_importing_the_metrics_imports_neither_sklearn_nor_torch():
    code = "import sys, ledger.bag.metrics; print('sklearn' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------- the spec's key


def _spec(tmp_path, extra):
    from conftest import write_spec

    from ledger.spec.loader import load_spec

    (tmp_path / "data").mkdir(exist_ok=True)
    path = write_spec(tmp_path / "spec.yaml", tmp_path / "data", "  - {name: m, arch: convnext_atto, size: 32}\n", extra)
    return load_spec(path, check_models=False), path


def test_the_spec_metric_defaults_to_accuracy_and_takes_a_class_order(tmp_path):
    spec, _ = _spec(tmp_path, "")
    assert (spec.metric, spec.class_order) == ("accuracy", None)
    spec, _ = _spec(tmp_path, "metric: qwk\nclass_order: [0, 1, 2, 10]\n")  # YAML numbers are class names
    assert (spec.metric, spec.class_order) == ("qwk", ("0", "1", "2", "10"))
    assert spec.to_dict()["class_order"] == ["0", "1", "2", "10"]


@pytest.mark.parametrize("extra, message", [
    ("metric: auc\n", "metric: expected one of accuracy, error_rate, f1_macro, f1_micro, f1_weighted, log_loss, "
                      "roc_auc, qwk, f1_samples, f2_samples, rmse, mae, got 'auc'"),
    ("class_order: [a, b, a]\n", "class_order: expected a list of distinct class names, got ['a', 'b', 'a']"),
    ("class_order: mild\n", "class_order: expected a non-empty list, got str 'mild'"),
])
def test_a_bad_metric_key_is_one_line_naming_it(tmp_path, extra, message):
    from ledger.errors import SpecError

    with pytest.raises(SpecError) as caught:
        _spec(tmp_path, extra)
    assert str(caught.value) == f"{tmp_path / 'spec.yaml'}: {message}"
