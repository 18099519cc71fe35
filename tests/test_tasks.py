"""task: multi_label and regression, from the spec to the submission: what a spec may say, how the
labels are read, the head and its loss (figures worked by hand from the formulas), the out-of-bag
estimate, the submission's shapes, and `ledger score` against scikit-learn on the same files."""

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ledger.bag.out_of_bag import estimate, held_out, tune_weights
from ledger.bag.submission_shape import PER_CLASS, TAGS, VALUES, Shape, fill, submission_shape
from ledger.bag.task_metrics import task_metric
from ledger.cli import app
from ledger.data.competition import load_competition
from ledger.errors import LedgerError, SpecError
from ledger.runs.artifacts import Predictions, load_predictions, save_predictions
from ledger.spec.loader import load_spec
from ledger.training.inference import classification_metrics
from ledger.training.loss import Criterion, Head


def _competition(root, train_csv: str, sample: str):
    """A folder of blank images named in `train_csv` and the sample submission's ids."""
    from PIL import Image

    (root / "train_images").mkdir(parents=True)
    (root / "test_images").mkdir()
    table = pd.read_csv(io.StringIO(train_csv), dtype=str, keep_default_na=False)
    for image_id in table.iloc[:, 0]:
        Image.new("RGB", (8, 8)).save(root / "train_images" / image_id)
    for image_id in pd.read_csv(io.StringIO(sample), dtype=str).iloc[:, 0]:
        Image.new("RGB", (8, 8)).save(root / "test_images" / image_id)
    (root / "train.csv").write_text(train_csv)
    (root / "sample_submission.csv").write_text(sample)
    return root


TAGS_CSV = "image_id,tags\na.png,cat dog\nb.png,\nc.png,dog\nd.png,bird cat\n"
TAGS_SAMPLE = "image_id,tags\nx.png,cat\ny.png,cat\n"


@pytest.fixture
def tags_root(tmp_path):
    return _competition(tmp_path / "tags", TAGS_CSV, TAGS_SAMPLE)


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the spec


def test_each_task_takes_its_own_metrics_and_defaults_to_its_usual_one(tmp_path, tags_root):
    base = f"name: t\ndata: {{root: {tags_root}, labels: train.csv, label_col: tags}}\n" \
           f"models:\n  - {{name: a, arch: resnet18, size: 32}}\n"
    assert load_spec(_write(tmp_path, "task: multi_label\n" + base), check_models=False).metric == "f2_samples"
    assert load_spec(_write(tmp_path, "task: regression\n" + base), check_models=False).metric == "rmse"
    assert load_spec(_write(tmp_path, base), check_models=False).metric == "accuracy"
    with pytest.raises(SpecError, match=r"^.*metric: 'accuracy' is not a multi_label metric; choices: f1_samples"):
        load_spec(_write(tmp_path, "task: multi_label\nmetric: accuracy\n" + base), check_models=False)
    with pytest.raises(SpecError, match="metric: 'f2_samples' is not a regression metric"):
        load_spec(_write(tmp_path, "task: regression\nmetric: f2_samples\n" + base), check_models=False)
    with pytest.raises(SpecError, match="task: expected one of single_label, multi_label, regression"):
        load_spec(_write(tmp_path, "task: ranking\n" + base), check_models=False)


@pytest.mark.parametrize("head, model, message", [
    ("task: multi_label\nclass_order: [cat, dog]\n", "", "class_order: orders the classes of a single_label task"),
    ("", "", "data.label_col: one column of class names with task single_label"),
    ("task: regression\n", ", loss: huber, label_smoothing: 0.1", r"models\[0\].label_smoothing: smooths class labels"),
    ("task: regression\n", ", cutmix: 1.0", r"models\[0\].cutmix: pastes one image's patch"),
    ("task: multi_label\n", ", loss: huber", r"models\[0\].loss: huber is a regression loss"),
])
def test_what_cannot_apply_to_the_task_is_refused_in_one_line(tmp_path, tags_root, head, model, message):
    label_col = "[tags]" if "single_label" in message else "tags"
    text = (f"name: t\n{head}data: {{root: {tags_root}, labels: train.csv, label_col: {label_col}}}\n"
            f"models:\n  - {{name: a, arch: resnet18, size: 32{model}}}\n")
    with pytest.raises(SpecError, match=message) as error:
        load_spec(_write(tmp_path, text), check_models=False)
    assert "\n" not in str(error.value)


def test_extra_targets_and_pseudo_labels_are_single_label_only(tmp_path, tags_root):
    text = (f"name: t\ntask: regression\ndata: {{root: {tags_root}, labels: train.csv, label_col: tags, "
            f"extra_targets: [other]}}\nmodels:\n  - {{name: a, arch: resnet18, size: 32}}\n")
    with pytest.raises(SpecError, match="data.extra_targets: extra targets are class columns of a single_label task"):
        load_spec(_write(tmp_path, text), check_models=False)
    text = text.replace(", extra_targets: [other]", "").replace("labels: train.csv", "labels: folders")
    with pytest.raises(SpecError, match="data.labels: task regression reads its labels from a label CSV"):
        load_spec(_write(tmp_path, text), check_models=False)


# ---------------------------------------------------------------- the labels


def test_tags_come_from_a_column_of_words_with_an_empty_cell_for_none(tmp_path, tags_root):
    spec = load_spec(_write(tmp_path, f"name: t\ntask: multi_label\ndata: {{root: {tags_root}, labels: train.csv, "
                                      f"label_col: tags}}\nmodels:\n  - {{name: a, arch: resnet18, size: 32}}\n"),
                     check_models=False)
    competition = load_competition(spec.data)
    assert competition.vocab == ("bird", "cat", "dog")
    np.testing.assert_array_equal(competition.train_labels, [[0, 1, 1], [0, 0, 0], [0, 0, 1], [1, 1, 0]])
    assert competition.head_sizes == (3,)
    np.testing.assert_array_equal(competition.strata, [2, 0, 1, 2])  # the number of tags


def test_tags_or_numbers_come_from_listed_columns_and_a_bad_cell_is_named(tmp_path):
    root = _competition(tmp_path / "cols", "image_id,cat,dog,age\na.png,1,0,3.5\nb.png,0,1,7\nc.png,1,1,1\n",
                        "image_id,cat,dog\nx.png,0.5,0.5\n")
    head = f"data: {{root: {root}, labels: train.csv, label_col: [cat, dog]}}\nmodels:\n  - {{name: a, arch: r, size: 8}}\n"
    tags = load_competition(load_spec(_write(tmp_path, "name: t\ntask: multi_label\n" + head), check_models=False).data)
    assert tags.vocab == ("cat", "dog")
    np.testing.assert_array_equal(tags.train_labels, [[1, 0], [0, 1], [1, 1]])
    numbers = load_competition(load_spec(_write(tmp_path, "name: t\ntask: regression\n" + head.replace(
        "[cat, dog]", "[age, dog]")), check_models=False).data)
    np.testing.assert_allclose(numbers.train_labels, [[3.5, 0], [7, 1], [1, 1]])
    (root / "train.csv").write_text("image_id,cat,dog,age\na.png,1,0,3.5\nb.png,0,2,seven\nc.png,1,1,1\n")
    with pytest.raises(LedgerError, match=r"train.csv: 1 row\(s\) of column 'dog' not 0 or 1 \(a tag's column\), "
                                          r"e.g. b.png \('2'\)"):
        load_competition(load_spec(_write(tmp_path, "name: t\ntask: multi_label\n" + head), check_models=False).data)
    with pytest.raises(LedgerError, match=r"1 row\(s\) of column 'age' not a finite number, e.g. b.png \('seven'\)"):
        load_competition(load_spec(_write(tmp_path, "name: t\ntask: regression\n" + head.replace(
            "[cat, dog]", "age")), check_models=False).data)


# ---------------------------------------------------------------- the head and its loss


def test_binary_cross_entropy_per_tag_with_each_tag_smoothed_as_two_classes():
    # logit 0 -> p = 0.5; logit 2 -> p = 0.880797. eps 0.2: targets 1 -> 0.9, 0 -> 0.1.
    # BCE(p, t) = -(t log p + (1 - t) log(1 - p)):
    #   tag 1 (logit 0, t 0.9): log 2 = 0.693147
    #   tag 2 (logit 2, t 0.1): -(0.1 log 0.880797 + 0.9 log 0.119203) = 0.012693 + 1.914235 = 1.926928
    criterion = Criterion(Head((2,), "multi_label"), label_smoothing=0.2)
    logits, targets = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    _, smoothed = criterion.mix(torch.zeros(1, 3, 4, 4), targets)
    torch.testing.assert_close(smoothed, torch.tensor([[0.9, 0.1]]))
    assert criterion(logits, smoothed).item() == pytest.approx((0.693147 + 1.926928) / 2, abs=1e-5)


def test_regression_learns_standardised_targets_and_predicts_in_their_units():
    class Folder:  # what Head.of reads of a competition
        task, head_sizes = "regression", (1,)
        train_labels = np.array([[10.0], [20.0], [30.0], [1000.0]], dtype=np.float32)

    head = Head.of(Folder(), np.array([0, 1, 2]))  # the training rows only: mean 20, std sqrt(200/3)
    assert head.mean == pytest.approx((20.0,)) and head.std == pytest.approx((math.sqrt(200 / 3),))
    criterion = Criterion(head)
    _, standard = criterion.mix(torch.zeros(2, 3, 4, 4), torch.tensor([[10.0], [30.0]]))
    torch.testing.assert_close(standard, torch.tensor([[-1.224745], [1.224745]]))
    # MSE of logits (0, 0) against (-1.224745, 1.224745): 1.5
    assert criterion(torch.zeros(2, 1), standard).item() == pytest.approx(1.5, abs=1e-5)
    assert head.activate(torch.tensor([[1.0]])).item() == pytest.approx(20 + math.sqrt(200 / 3), abs=1e-4)
    # Huber (delta 1) of an error of 3 is 3 - 0.5; of 0.5 it is 0.5 * 0.25.
    huber = Criterion(head, loss="huber")
    assert huber(torch.tensor([[3.0], [0.5]]), torch.zeros(2, 1)).item() == pytest.approx((2.5 + 0.125) / 2)
    assert Head.from_dict(head.to_dict()) == head and Head.from_dict(None, (10,)) == Head((10,))


def test_mixup_mixes_the_target_vectors_by_the_images_shares():
    criterion = Criterion(Head((2,), "multi_label"), mixup=0.4)
    images = torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), 3.0)])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    np.random.seed(0)
    mixed, soft = criterion.mix(images, targets)
    lam = (mixed[0, 0, 0, 0].item() - 3.0) / (1.0 - 3.0)  # image 0 = lam * 1 + (1 - lam) * 3
    torch.testing.assert_close(soft[0], torch.tensor([lam, 1 - lam]))
    torch.testing.assert_close(soft[1], torch.tensor([1 - lam, lam]))


def test_held_out_figures_of_tags_and_numbers():
    probs, tags = torch.tensor([[0.9, 0.2], [0.4, 0.6]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss, error, extra = classification_metrics(probs, tags, Head((2,), "multi_label"))
    # BCE: -(log .9 + log .8 + log .4 + log .6) / 4; one decision of four wrong (0.4 < 0.5 for a 1).
    assert loss == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4, abs=1e-5)
    assert error == 0.25 and extra == []
    head = Head((1,), "regression", (10.0,), (2.0,))
    loss, error, _ = classification_metrics(torch.tensor([[12.0], [10.0]]), torch.tensor([[10.0], [10.0]]), head)
    assert loss == pytest.approx(0.5) and error is None  # standardised errors 1 and 0


# ---------------------------------------------------------------- out of bag, shapes, score


def _valid(run_ids, probs, targets, vocab=("a", "b"), task="multi_label"):
    return Predictions(np.array(run_ids), np.asarray(probs, dtype=np.float32), np.array(vocab),
                       targets=np.asarray(targets, dtype=np.float32), task=task)


def test_the_out_of_bag_f2_chooses_its_threshold_on_the_images_it_scores():
    from sklearn.metrics import fbeta_score

    rng = np.random.default_rng(0)
    truth = (rng.random((200, 2)) < 0.3).astype(float)
    one = np.clip(truth * 0.35 + rng.random((200, 2)) * 0.3, 0, 1)  # positives 0.35..0.65, negatives 0..0.3
    two = np.clip(truth * 0.25 + rng.random((200, 2)) * 0.5, 0, 1)
    ids = [f"{i:03d}" for i in range(200)]
    held = held_out([("r1", "one", _valid(ids, one, truth)), ("r2", "two", _valid(ids, two, truth))], ["a", "b"])
    figure = estimate(held, {"one": 1.0}, metric=task_metric("f2_samples", "multi_label"))
    assert figure.images == 200 and math.isnan(figure.accuracy)
    best = max(fbeta_score(truth, (one >= t).astype(int), beta=2, average="samples", zero_division=1.0)
               for t in np.arange(1, 100) / 100)
    assert figure.score == pytest.approx(best, abs=1e-9)
    tuned = tune_weights(held, metric=task_metric("f2_samples", "multi_label"))
    assert tuned.weights["one"] > 0


def test_runs_disagreeing_on_an_images_targets_or_of_two_tasks_are_refused():
    a = _valid(["x"], [[0.5, 0.5]], [[1, 0]])
    with pytest.raises(LedgerError, match="run r2: validation targets disagree with another run's for 'x'"):
        held_out([("r1", "e", a), ("r2", "e", _valid(["x"], [[0.5, 0.5]], [[0, 1]]))], ["a", "b"])
    single = Predictions(np.array(["x"]), np.array([[0.5, 0.5]], dtype=np.float32), np.array(["a", "b"]),
                         labels=np.array(["a"]))
    with pytest.raises(LedgerError, match="runs of different tasks"):
        held_out([("r1", "e", a), ("r2", "f", single)], ["a", "b"])


def test_predictions_keep_their_targets_and_task_through_a_file(tmp_path):
    preds = _valid(["x", "y"], [[0.1, 0.9], [0.5, 0.5]], [[0, 1], [1, 1]], task="regression")
    save_predictions(tmp_path / "p.npz", preds)
    back = load_predictions(tmp_path / "p.npz")
    assert back.task == "regression" and back.truth.tolist() == [[0, 1], [1, 1]]


def test_a_submission_takes_the_samples_shape(tmp_path):
    f2, auc = task_metric("f2_samples", "multi_label"), task_metric("roc_auc", "multi_label")
    sample = tmp_path / "s.csv"
    assert submission_shape(sample, ["id", "tags"], ["a", "b"], f2, "multi_label") == Shape(TAGS, ("tags",), decided=True)
    shape = submission_shape(sample, ["id", "b", "a"], ["a", "b"], auc, "multi_label")
    assert shape.kind == PER_CLASS and shape.columns == ("b", "a") and not shape.decided
    with pytest.raises(LedgerError, match="one column of tags, but metric roc_auc scores probabilities"):
        submission_shape(sample, ["id", "tags"], ["a", "b"], auc, "multi_label")
    rmse = task_metric("rmse", "regression")
    assert submission_shape(sample, ["id", "target"], ["size"], rmse, "regression").kind == VALUES
    with pytest.raises(LedgerError, match="a submission of 2 targets needs one column named as each"):
        submission_shape(sample, ["id", "x"], ["size", "age"], rmse, "regression")

    from ledger.bag.decisions import Decision

    frame = pd.DataFrame({"id": ["p", "q", "r"], "tags": ""})
    probs = np.array([[0.3, 0.1], [0.1, 0.05], [0.9, 0.3]])
    fill(frame, Shape(TAGS, ("tags",), decided=True), ["a", "b"], probs, Decision("thresholds", (0.2, 0.25)))
    assert frame["tags"].tolist() == ["a", "", "a b"]  # each tag at its own threshold; none is an empty cell


def test_ledger_score_equals_scikit_learn_on_the_same_files(tmp_path):
    from sklearn.metrics import (cohen_kappa_score, fbeta_score, mean_absolute_error, roc_auc_score,
                                 root_mean_squared_error)
    from sklearn.preprocessing import MultiLabelBinarizer

    rng = np.random.default_rng(1)
    ids = [f"i{n}" for n in range(60)]
    words = ["sky", "sea", "tree", "road"]
    truth_tags = [" ".join(w for w in words if rng.random() < 0.35) for _ in ids]
    guess_tags = [" ".join(w for w in words if rng.random() < 0.35) for _ in ids]
    pd.DataFrame({"id": ids, "tags": truth_tags}).to_csv(tmp_path / "solution.csv", index=False)
    pd.DataFrame({"id": ids[::-1], "tags": guess_tags[::-1]}).to_csv(tmp_path / "sub.csv", index=False)
    runner = CliRunner()

    def scored(*args) -> float:
        result = runner.invoke(app, ["score", *map(str, args), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["score"]

    binarizer = MultiLabelBinarizer(classes=words)
    y_true, y_pred = binarizer.fit_transform([t.split() for t in truth_tags]), binarizer.transform(
        [t.split() for t in guess_tags])
    assert scored(tmp_path / "sub.csv", tmp_path / "solution.csv", "--metric", "f2_samples") == pytest.approx(
        fbeta_score(y_true, y_pred, beta=2, average="samples", zero_division=1.0), abs=1e-12)

    probs = rng.random((60, 4))
    pd.DataFrame({"id": ids, **{w: y_true[:, j] for j, w in enumerate(words)}}).to_csv(tmp_path / "sol01.csv",
                                                                                       index=False)
    pd.DataFrame({"id": ids, **{w: probs[:, j] for j, w in enumerate(words)}}).to_csv(tmp_path / "p.csv", index=False)
    assert scored(tmp_path / "p.csv", tmp_path / "sol01.csv", "--metric", "roc_auc", "--task",
                  "multi_label") == pytest.approx(roc_auc_score(y_true, probs, average="macro"), abs=1e-12)

    values, guesses = rng.normal(30, 5, 60), rng.normal(30, 5, 60)
    pd.DataFrame({"id": ids, "size": values}).to_csv(tmp_path / "sol_n.csv", index=False)
    pd.DataFrame({"id": ids, "size": guesses}).to_csv(tmp_path / "n.csv", index=False)
    assert scored(tmp_path / "n.csv", tmp_path / "sol_n.csv", "--metric", "rmse") == pytest.approx(
        root_mean_squared_error(values, guesses), abs=1e-9)
    assert scored(tmp_path / "n.csv", tmp_path / "sol_n.csv", "--metric", "mae") == pytest.approx(
        mean_absolute_error(values, guesses), abs=1e-9)
    grades, graded = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
    pd.DataFrame({"id": ids, "grade": grades}).to_csv(tmp_path / "sol_g.csv", index=False)
    pd.DataFrame({"id": ids, "grade": graded}).to_csv(tmp_path / "g.csv", index=False)
    assert scored(tmp_path / "g.csv", tmp_path / "sol_g.csv", "--metric", "qwk", "--task", "regression") == \
        pytest.approx(cohen_kappa_score(grades, graded, weights="quadratic"), abs=1e-12)


def test_the_reports_tag_table_and_residuals_by_range():
    from ledger.report.task_views import per_tag, residuals_by_range, vector_interpretation

    tags = vector_interpretation("r", _valid(["p", "q", "r", "s"], [[0.9, 0.1], [0.6, 0.7], [0.2, 0.4], [0.1, 0.8]],
                                             [[1, 0], [0, 1], [1, 0], [0, 1]]), "here")
    table = per_tag(tags).set_index("tag")
    # tag a: true for p, r; predicted (>= 0.5) for p, q: precision 1/2, recall 1/2, F1 1/2.
    # tag b: true for q, s; predicted for q, s: all 1.
    assert table.loc["a", ["images", "predicted", "precision", "recall", "f1"]].tolist() == [2, 2, 0.5, 0.5, 0.5]
    assert table.loc["b", ["precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0]
    truth = np.arange(1, 11, dtype=float)[:, None]  # quintiles of 1..10: (1, 2), (3, 4), ... (9, 10)
    numbers = vector_interpretation("r", _valid([str(i) for i in range(10)], truth + np.array(
        [[1], [1], [0], [0], [0], [0], [0], [0], [-2], [-4]]), truth, vocab=("size",), task="regression"), "here")
    ranges = residuals_by_range(numbers)
    assert ranges["images"].tolist() == [2, 2, 2, 2, 2]
    assert ranges["mean residual"].tolist() == [1.0, 0.0, 0.0, 0.0, -3.0]
    assert ranges["rmse"].iloc[-1] == pytest.approx(math.sqrt((4 + 16) / 2))
