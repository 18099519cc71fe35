"""The out-of-bag estimate and the weight search on hand-computed numbers (no files, no torch)."""

import numpy as np
import pytest

from ledger.runs.artifacts import Predictions
from ledger.errors import LedgerError
from ledger.bag.metrics import metric_by_name
from ledger.bag.out_of_bag import by_runs, compare, estimate, held_out, tune_weights

VOCAB = ["cat", "dog"]
LABELS = {"x1": "cat", "x2": "cat", "x3": "dog", "x4": "dog"}


def valid(cat: dict[str, float]) -> Predictions:
    """Held-out predictions from {image: P(cat)}; true labels from LABELS."""
    ids = list(cat)
    return Predictions(ids=np.array(ids), probs=np.array([[cat[i], 1 - cat[i]] for i in ids], dtype=np.float64),
                       vocab=np.array(VOCAB), labels=np.array([LABELS[i] for i in ids]))


# Two entries trained on random splits. "strong" has two runs, both holding out x2;
# x1 is held out by strong only, x4 by weak only.
RANDOM_SPLITS = [
    ("s1", "strong", valid({"x1": 0.9, "x2": 0.9})),
    ("s2", "strong", valid({"x2": 0.9, "x3": 0.2})),
    ("w1", "weak", valid({"x2": 0.0, "x3": 0.3, "x4": 0.1})),
]


def old_per_run_estimate(valids, run_weight):
    """The estimate `ensemble.out_of_bag` gave before: every image scored by whichever runs held it
    out, each run at its own weight. Kept here to show the figure it got wrong."""
    votes = {}
    for run_id, _, preds in valids:
        for image, probs in zip(preds.ids, preds.probs):
            votes.setdefault(str(image), []).append(run_weight[run_id] * probs)
    right = [VOCAB[int(np.argmax(sum(v)))] == LABELS[image] for image, v in votes.items()]
    return float(np.mean(right)), len(right)


def test_old_per_run_figure_was_wrong_and_the_entry_figure_is_right():
    # The bag: strong and weak weighted 1 : 1, each the mean of its runs.
    # Old: every run weighs 1, every image scored by what held it out:
    #   x1  s1 alone            0.9 cat   right      x2  (0.9 + 0.9 + 0.0)/3 = 0.6 cat  right
    #   x3  (0.2 + 0.3)/2 = 0.25 cat -> dog  right   x4  w1 alone 0.1 cat -> dog        right
    assert old_per_run_estimate(RANDOM_SPLITS, {"s1": 1, "s2": 1, "w1": 1}) == (1.0, 4)
    # Right by construction: strong's mean and weak's mean, 1 : 1, only where both entries vote:
    #   x2  strong (0.9 + 0.9)/2 = 0.9, weak 0.0 -> 0.45 cat -> dog   wrong (the bag predicts dog)
    #   x3  strong 0.2, weak 0.3 -> 0.25 cat -> dog                    right
    # x1 and x4 are never predicted by the whole bag: not scored.
    held = held_out(RANDOM_SPLITS, VOCAB, train_images=5)
    result = estimate(held, {"strong": 1, "weak": 1})
    assert (result.accuracy, result.images, result.train_images) == (0.5, 2, 5)
    # Weights are normalised: 3 : 3 is 1 : 1.
    assert estimate(held, {"strong": 3, "weak": 3}) == result


def test_entry_means_average_the_runs_that_held_the_image_out():
    held = held_out(RANDOM_SPLITS, VOCAB)
    strong = held.entries.index("strong")
    assert list(held.ids) == ["x1", "x2", "x3", "x4"] and held.train_images == 4
    np.testing.assert_allclose(held.probs[strong, :, 0], [0.9, 0.9, 0.2, 0.0])  # x4: not covered
    assert held.covered.tolist() == [[True, True, True, False], [False, True, True, True]]


def test_weighting_an_entry_zero_scores_the_others_on_their_own_coverage():
    held = held_out(RANDOM_SPLITS, VOCAB)
    # strong alone covers x1, x2, x3: 0.9 right, 0.9 right, 0.2 -> dog right.
    assert estimate(held, {"strong": 1, "weak": 0}).images == 3
    assert estimate(held, {"strong": 1}).accuracy == 1.0


def test_compared_weightings_are_scored_on_the_same_images():
    held = held_out(RANDOM_SPLITS, VOCAB, train_images=4)
    table = compare(held, {"strong": 1, "weak": 3}).set_index("name")
    # All rows on {x2, x3}, the images both entries cover.
    assert set(table["images"]) == {2} and set(table["train_images"]) == {4}
    # strong alone: x2 0.9 right, x3 0.2 right.  weak alone: x2 0.0 wrong, x3 0.3 right.
    assert table.loc["strong", "accuracy"] == 1.0 and table.loc["weak", "accuracy"] == 0.5
    # spec 1 : 3: x2 (0.9 + 0)/4 = 0.225 wrong; x3 (0.2 + 0.9)/4 = 0.275 right.  equal: as above, 0.5.
    assert table.loc["spec", "accuracy"] == 0.5 and table.loc["equal", "accuracy"] == 0.5
    assert list(table["kind"]) == ["entry", "entry", "weights", "weights"]


def test_k_fold_covers_every_image():
    # Two entries, two folds each: every image held out exactly once per entry.
    folds = [
        ("a0", "a", valid({"x1": 0.8, "x2": 0.4})), ("a1", "a", valid({"x3": 0.4, "x4": 0.6})),
        ("b0", "b", valid({"x1": 0.3, "x2": 0.9})), ("b1", "b", valid({"x3": 0.1, "x4": 0.3})),
    ]
    held = held_out(folds, VOCAB, train_images=4)
    # a 3 : b 1.  x1 (2.4 + 0.3)/4 = 0.675 cat right; x2 (1.2 + 0.9)/4 = 0.525 cat right;
    # x3 (1.2 + 0.1)/4 = 0.325 dog right; x4 (1.8 + 0.3)/4 = 0.525 cat wrong.
    result = estimate(held, {"a": 3, "b": 1})
    assert (result.accuracy, result.images, result.train_images) == (0.75, 4, 4)
    # On log loss: the true class gets x1 0.675, x2 0.525, x3 1 - 0.325 = 0.675, x4 1 - 0.525 = 0.475.
    loss = estimate(held, {"a": 3, "b": 1}, metric=metric_by_name("log_loss"))
    expected = -(2 * np.log(0.675) + np.log(0.525) + np.log(0.475)) / 4
    assert loss.metric == "log_loss" and loss.score == pytest.approx(expected) and loss.accuracy == 0.75
    # One run per entry covers each image: there is no bagging gain to show.
    assert by_runs(held, {"a": 3, "b": 1}).empty


def test_labels_that_disagree_between_runs_are_refused():
    wrong = Predictions(ids=np.array(["x1"]), probs=np.array([[0.5, 0.5]]), vocab=np.array(VOCAB),
                        labels=np.array(["dog"]))
    with pytest.raises(LedgerError, match=r"run w: validation labels disagree.*'x1'"):
        held_out([("s", "a", valid({"x1": 0.9})), ("w", "b", wrong)], VOCAB)


def test_vocab_order_of_a_run_does_not_matter():
    shuffled = Predictions(ids=np.array(["x2", "x3"]), probs=np.array([[0.0, 1.0], [0.7, 0.3]]),  # dog, cat
                           vocab=np.array(["dog", "cat"]), labels=np.array(["cat", "dog"]))
    held = held_out([("w", "weak", shuffled)], VOCAB)
    np.testing.assert_allclose(held.probs[0], [[1.0, 0.0], [0.3, 0.7]])


# ---------------------------------------------------------------- greedy selection


# Labels x1 cat, x2 cat, x3 dog. A: 2/3 alone (x3 wrong); B: 2/3 alone (x2 wrong); A + B: all right.
TUNING = [
    ("a", "A", valid({"x1": 0.7, "x2": 0.7, "x3": 0.55})),
    ("b", "B", valid({"x1": 0.6, "x2": 0.45, "x3": 0.1})),
]


def test_greedy_selection_by_hand():
    held = held_out(TUNING, VOCAB)
    # Start: A and B tie at 2/3; log loss A (0.357 + 0.357 + 0.799)/3 = 0.504, B (0.511 + 0.799 +
    # 0.105)/3 = 0.472: B.
    assert tune_weights(held, steps=0).weights == {"A": 0, "B": 1}
    # Step 1: B+A: x1 0.65, x2 0.575, x3 P(cat) 0.325: 3/3, a strict gain.
    tuned = tune_weights(held, steps=1)
    assert tuned.weights == {"A": 0.5, "B": 0.5} and tuned.picked == {"A": 1, "B": 1} and tuned.passes == 1
    assert estimate(held, tuned.weights).accuracy == 1.0 and tuned.steps == 1
    # Step 2: A2 B1 and A1 B2 are both 3/3 again: a tie adds nothing, so the search stops there.
    tuned = tune_weights(held, steps=30)
    assert tuned.weights == {"A": 0.5, "B": 0.5} and tuned.steps == 1


def test_resampled_weights_share_out_what_one_pass_gives_all_or_nothing():
    # Three classes, 100 images of class 0. A is right (P 0.6) on images 0-50 and wrong elsewhere
    # (P 0.95 on class 1); B is right (P 0.6) on 51-99 and wrong elsewhere (P 0.95 on class 2).
    # Where one is right the other puts 0.95 on a wrong class, so a mix is right on A's images or
    # on B's (or on neither), never on both: no addition beats the best single entry, and every
    # pass keeps one entry. One pass: A (51 right against 49). A resample has A or B ahead.
    vocab = ["c0", "c1", "c2"]
    ids = np.array([f"i{n:03d}" for n in range(100)])
    labels = np.array(["c0"] * 100)
    a_right, b_right = np.arange(100) <= 50, np.arange(100) > 50
    right, wrong_a, wrong_b = [0.6, 0.2, 0.2], [0.025, 0.95, 0.025], [0.025, 0.025, 0.95]
    a = np.where(a_right[:, None], right, wrong_a)
    b = np.where(b_right[:, None], right, wrong_b)
    held = held_out([("a", "A", Predictions(ids=ids, probs=a, vocab=np.array(vocab), labels=labels)),
                     ("b", "B", Predictions(ids=ids, probs=b, vocab=np.array(vocab), labels=labels))], vocab)
    assert estimate(held, {"A": 1, "B": 1}).accuracy == 0.0  # the premise: mixing never helps
    one = tune_weights(held)
    assert one.weights == {"A": 1, "B": 0} and one.passes == 1 and one.steps == 0
    tuned = tune_weights(held, resamples=40, seed=3)
    assert tuned.passes == 40 and tuned.steps == 0
    # Every pass weighs exactly one entry; the mean share is the fraction of passes it won.
    assert tuned.picked["A"] + tuned.picked["B"] == 40 and 0 < tuned.picked["B"] < tuned.picked["A"]
    assert tuned.weights == pytest.approx({"A": tuned.picked["A"] / 40, "B": tuned.picked["B"] / 40}, abs=0.005)
    # The same predictions and seed give the same weights.
    assert tune_weights(held, resamples=40, seed=3) == tuned


def test_a_chance_level_entry_earns_no_weight_for_a_tie():
    # An overconfident entry (right on 80% of 300 images at P 0.99) and a chance-level one (a coin
    # at P 0.5 +- 0.01). Mixing the coin in never changes a label, so accuracy ties; it does soften
    # the confident mistakes, so the bag's log loss falls: a log-loss tie-break would pick it at
    # every step (greedy selection used to give such an entry 10 of 21 picks).
    rng = np.random.default_rng(0)
    ids = np.array([f"i{n}" for n in range(300)])
    labels = np.array(VOCAB)[rng.integers(0, 2, len(ids))]
    truth = (labels == "cat").astype(float)
    right = rng.random(len(ids)) < 0.8
    confident = np.where(right, truth, 1 - truth) * 0.98 + 0.01
    coin = 0.5 + rng.uniform(-0.01, 0.01, len(ids))

    def entry(p_cat):
        return Predictions(ids=ids, probs=np.stack([p_cat, 1 - p_cat], axis=1), vocab=np.array(VOCAB), labels=labels)

    held = held_out([("g", "good", entry(confident)), ("c", "coin", entry(coin))], VOCAB)
    mixed = estimate(held, {"good": 2, "coin": 1}, metric=metric_by_name("log_loss")).score
    alone = estimate(held, {"good": 1}, metric=metric_by_name("log_loss")).score
    assert mixed < alone  # the premise: the coin lowers the log loss
    tuned = tune_weights(held, steps=20)
    assert tuned.weights == {"good": 1, "coin": 0} and tuned.steps == 0
    # On every bootstrap resample too: resampling never turns a tie into a gain.
    resampled = tune_weights(held, steps=20, resamples=10)
    assert resampled.weights == {"good": 1, "coin": 0} and resampled.picked == {"good": 10, "coin": 0}


def test_ties_go_to_the_first_entry():
    same = valid({"x1": 0.7, "x2": 0.7, "x3": 0.55})
    held = held_out([("r2", "second", same), ("r1", "first", same)], VOCAB)
    # Identical entries: every candidate ties, so the start is kept: the entry listed first.
    assert tune_weights(held, steps=10).weights == {"second": 1, "first": 0}


def test_ties_within_rounding_noise_still_go_to_the_first_entry():
    # "second" is "first" nudged by 1e-13 towards the truth: a lower log loss by ~1e-13, the size
    # of the rounding differences between BLAS builds. It must not win the tie-break on it.
    nudged = Predictions(ids=np.array(["x1", "x2", "x3"]), vocab=np.array(VOCAB), labels=np.array(["cat", "cat", "dog"]),
                         probs=np.array([[0.7 + 1e-13, 0.3 - 1e-13], [0.7 + 1e-13, 0.3 - 1e-13], [0.55 - 1e-13, 0.45 + 1e-13]]))
    held = held_out([("r1", "first", valid({"x1": 0.7, "x2": 0.7, "x3": 0.55})), ("r2", "second", nudged)], VOCAB)
    for name in ("accuracy", "log_loss"):
        assert tune_weights(held, steps=10, metric=metric_by_name(name)).weights == {"first": 1, "second": 0}


# Labels x1 cat, x3 dog. A: P(cat) 0.9, 0.6; B: 0.5, 0.1.
LOSSES = [("a", "A", valid({"x1": 0.9, "x3": 0.6})), ("b", "B", valid({"x1": 0.5, "x3": 0.1}))]


def test_greedy_selection_on_log_loss_by_hand():
    held = held_out(LOSSES, VOCAB)
    log_loss = metric_by_name("log_loss")
    # Alone: A (-ln 0.9 - ln 0.4)/2 = 0.5108; B (-ln 0.5 - ln 0.9)/2 = 0.3993: start from B.
    assert tune_weights(held, steps=0, metric=log_loss).weights == {"A": 0, "B": 1}
    # Step 1: B+A: x1 0.7, x3 P(dog) 0.65: (0.3567 + 0.4308)/2 = 0.3937 beats B+B (0.3993).
    assert tune_weights(held, steps=1, metric=log_loss).weights == {"A": 0.5, "B": 0.5}
    # Step 2: A1 B2: x1 1.9/3 = 0.6333, x3 P(dog) 1 - 0.8/3 = 0.7333: (0.4568 + 0.3102)/2 = 0.3835;
    # A2 B1 scores 0.4168.  Step 3: A1 B3: x1 0.6, x3 P(dog) 0.775: (0.5108 + 0.2549)/2 = 0.3829;
    # A2 B2 is A1 B1 (0.3937).
    tuned = tune_weights(held, steps=3, metric=log_loss)
    assert tuned.weights == {"A": 0.25, "B": 0.75}
    table = compare(held, {"A": 1, "B": 1}, tuned, metric=log_loss).set_index("name")
    assert table.loc["tuned", "score"] == pytest.approx(-(np.log(0.6) + np.log(0.775)) / 2)
    assert table.loc["equal", "score"] == pytest.approx(-(np.log(0.7) + np.log(0.65)) / 2)
    assert table.loc["tuned", "score"] < table.loc["equal", "score"]
    # Accuracy beside it: both bags get x1 and x3 right.
    assert table.loc["tuned", "accuracy"] == table.loc["equal", "accuracy"] == 1.0


def test_the_bagging_gain_by_the_number_of_runs_averaged():
    # One entry, random splits: r1 and r2 hold out x1, x2, x3; r3 holds out x1 again.
    # Labels x1 cat, x2 cat, x3 dog.
    runs = [("r1", "m", valid({"x1": 0.4, "x2": 0.45, "x3": 0.3})),
            ("r2", "m", valid({"x1": 0.8, "x2": 0.45, "x3": 0.6})),
            ("r3", "m", valid({"x1": 0.7}))]
    table = by_runs(held_out(runs, VOCAB), {"m": 1})
    # k = 1 on x1, x2, x3: r1 alone, x1 0.4 wrong, x2 0.45 wrong, x3 0.3 right: 1/3.
    # k = 2 on the same images: x1 (0.4 + 0.8)/2 = 0.6 right, x2 0.45 wrong, x3 0.45 right: 2/3.
    # k = 3 on x1 only: (0.4 + 0.8 + 0.7)/3 = 0.63 right: 1; r1 alone on x1: wrong: 0.
    assert table["runs"].tolist() == [1, 2, 3] and table["images"].tolist() == [3, 3, 1]
    assert table["score"].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert table["one_run_score"].tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])


def test_tuning_needs_images_every_entry_covers():
    held = held_out([("a", "A", valid({"x1": 0.9})), ("b", "B", valid({"x2": 0.9}))], VOCAB)
    with pytest.raises(LedgerError, match="no training image is held out by every entry"):
        tune_weights(held)
