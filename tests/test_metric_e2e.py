"""A competition scored by another metric, end to end without training: hand-made run folders,
`ledger check`, `ledger ensemble --json` (out-of-bag figure, --tune-weights), the CSV in the sample
submission's shape, and `ledger score`, every figure against scikit-learn on the same numbers."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import write_spec
from sklearn.metrics import f1_score, log_loss, roc_auc_score
from typer.testing import CliRunner

from ledger.runs.artifacts import TEST_PREDS, VALID_PREDS, Predictions, save_predictions
from ledger.cli import app
from ledger.spec.fingerprint import run_fingerprint
from ledger.spec.loader import load_spec
from ledger.store.database import Store

runner = CliRunner()
# The float32 probabilities of runs miss 1 by ~1e-7 a row; scikit-learn's float64 check would say so.
pytestmark = pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")

# convnext: two runs on two folds; vit: one run holding out every image. Spec weights 1 : 3.
MODELS = ("  - {name: convnext, arch: convnext_atto, size: 32, runs: 2}\n"
          "  - {name: vit, arch: vit_tiny_patch16_224, size: 16, weight: 3, model_kwargs: {img_size: 16}}\n")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="ledger")


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Competition:
    """A copy of the tiny competition whose sample submission and metric the test chooses, and the
    run folders made for it."""

    def __init__(self, root, tmp_path, metric, sample_columns=None, classes=None):
        self.root, self.home = root, tmp_path / "home"
        train = pd.read_csv(root / "train.csv", dtype=str)
        if classes is not None:  # keep the images of these classes only
            train = train[train["label"].isin(classes)].reset_index(drop=True)
            train.to_csv(root / "train.csv", index=False)
        self.train = train
        self.vocab = np.array(sorted(train["label"].unique()))
        sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
        if sample_columns is not None:
            sample = pd.DataFrame({"image_id": sample["image_id"], **{c: "0.5" for c in sample_columns}})
            sample.to_csv(root / "sample_submission.csv", index=False)
        self.sample = sample
        self.spec_path = write_spec(tmp_path / "tiny.yaml", root, MODELS, extra=f"metric: {metric}\n")
        self.spec = load_spec(self.spec_path, check_models=False)
        self.truth = pd.Index(self.vocab).get_indexer(train["label"])
        self.rng = np.random.default_rng(0)
        self.valid, self.test = {}, {}

    def add_run(self, run_id, model, held_out, skill):
        """Random probabilities, `skill` pushing the logits towards the true class."""
        folder = self.home / "tiny" / run_id
        folder.mkdir(parents=True)
        rows = self.train.iloc[held_out]
        logits = self.rng.normal(size=(len(rows), len(self.vocab)))
        logits[np.arange(len(rows)), self.truth[held_out]] += skill
        probs = softmax(logits).astype(np.float32)
        save_predictions(folder / VALID_PREDS, Predictions(rows["image_id"].to_numpy(), probs, self.vocab,
                                                           rows["label"].to_numpy()))
        test = softmax(self.rng.normal(size=(len(self.sample), len(self.vocab)))).astype(np.float32)
        save_predictions(folder / TEST_PREDS, Predictions(self.sample["image_id"].to_numpy(), test, self.vocab))
        self.valid[run_id], self.test[run_id] = (held_out, probs.astype(np.float64)), test.astype(np.float64)
        store = Store(self.home)
        store.insert_run(dict(id=run_id, experiment="tiny", model=model, arch="x", size="32", status="done",
                              started_at="2026-01-01T00:00:00", artifact_dir=f"tiny/{run_id}",
                              fingerprint=run_fingerprint(self.spec, self.spec.model(model))))
        store.close()

    def add_runs(self):
        n = len(self.train)
        self.add_run("c0", "convnext", np.arange(0, n, 2), skill=2.0)  # two folds: each image held out once
        self.add_run("c1", "convnext", np.arange(1, n, 2), skill=2.0)
        self.add_run("v0", "vit", np.arange(n), skill=0.5)

    def held_out_mix(self, convnext, vit):
        """The bag's held-out probabilities, by hand: convnext's fold runs side by side, vit's one run."""
        conv = np.zeros((len(self.train), len(self.vocab)))
        for run_id in ("c0", "c1"):
            rows, probs = self.valid[run_id]
            conv[rows] = probs
        return (convnext * conv + vit * self.valid["v0"][1]) / (convnext + vit)

    def test_mix(self):
        # Entries 1 : 3, convnext's two runs averaged.
        return 0.25 * (self.test["c0"] + self.test["c1"]) / 2 + 0.75 * self.test["v0"]

    def ensemble(self, *args):
        result = invoke("ensemble", self.spec_path, "--home", self.home, "--json", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def solution(self):
        return pd.read_csv(self.root / "solution.csv", dtype=str)


@pytest.fixture
def copy(tmp_path, tiny_competition, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "competition"
    shutil.copytree(tiny_competition, root)
    return root


def test_log_loss_on_one_probability_column_per_class(copy, tmp_path):
    vocab = sorted(pd.read_csv(copy / "train.csv", dtype=str)["label"].unique())
    columns = vocab[::-1]  # the sample's column order, not the sorted one, is what the CSV must keep
    comp = Competition(copy, tmp_path, "log_loss", sample_columns=columns)

    checked = invoke("check", comp.spec_path)
    assert checked.exit_code == 0, checked.output
    assert "metric log_loss, submission: one probability column per class (10)" in " ".join(checked.stdout.split())

    comp.add_runs()
    data = comp.ensemble()
    assert data["metric"] == "log_loss" and data["shape"] == "per_class" and data["columns"] == columns
    mix = comp.held_out_mix(1, 3)
    assert data["oob_score"] == pytest.approx(log_loss(comp.truth, mix), abs=1e-6)
    assert data["oob_accuracy"] == pytest.approx(np.mean(mix.argmax(axis=1) == comp.truth))
    assert data["oob_images"] == 60 and data["oob_by_runs"] == []  # one run per entry holds each image out

    written = pd.read_csv(data["out"], dtype=str)
    assert list(written.columns) == list(comp.sample.columns)
    assert written["image_id"].tolist() == comp.sample["image_id"].tolist()
    probs = written[columns].astype(float).to_numpy()
    expected = comp.test_mix()[:, [vocab.index(c) for c in columns]]
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)

    # --tune-weights on log loss: the tuned bag's figure is no worse than equal weights'.
    tuned = comp.ensemble("--tune-weights", "--dry-run")["tuned"]
    rows = {row["name"]: row for row in tuned["comparison"]}
    assert rows["equal"]["score"] == pytest.approx(log_loss(comp.truth, comp.held_out_mix(1, 1)), abs=1e-6)
    assert rows["tuned"]["score"] <= rows["equal"]["score"] + 1e-12
    t = tuned["weights"]
    assert rows["tuned"]["score"] == pytest.approx(log_loss(comp.truth, comp.held_out_mix(t["convnext"], t["vit"])),
                                                   abs=1e-6)

    scored = invoke("score", data["out"], copy / "solution.csv", "--json")
    assert scored.exit_code == 0, scored.output
    report = json.loads(scored.stdout)
    solution = comp.solution().set_index("image_id").loc[written["image_id"], "label"]
    truth = pd.Index(columns).get_indexer(solution)
    assert report["metric"] == "log_loss" and report["shape"] == "per_class"
    assert report["score"] == pytest.approx(log_loss(truth, probs, labels=range(len(columns))), abs=1e-6)

    [row] = Store(comp.home).submissions("tiny")
    assert row.metric == "log_loss" and row.oob_score == pytest.approx(data["oob_score"])
    table = runner.invoke(app, ["submissions", "--home", str(comp.home)], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "log_loss" in table.stdout and f"{data['oob_score']:.4f}" in table.stdout


def test_f1_macro_on_a_label_submission(copy, tmp_path):
    comp = Competition(copy, tmp_path, "f1_macro")
    checked = invoke("check", comp.spec_path)
    assert checked.exit_code == 0 and "metric f1_macro, submission: one label column (label)" in \
        " ".join(checked.stdout.split())
    comp.add_runs()
    data = comp.ensemble("--tune-weights")
    mix = comp.held_out_mix(1, 3)
    assert data["metric"] == "f1_macro" and data["shape"] == "label"
    assert data["oob_score"] == pytest.approx(f1_score(comp.truth, mix.argmax(axis=1), average="macro"), abs=1e-9)
    rows = {row["name"]: row for row in data["tuned"]["comparison"]}
    assert rows["equal"]["score"] == pytest.approx(
        f1_score(comp.truth, comp.held_out_mix(1, 1).argmax(axis=1), average="macro"), abs=1e-9)
    assert rows["tuned"]["score"] >= rows["equal"]["score"] - 1e-12

    written = pd.read_csv(data["out"], dtype=str)
    assert list(written.columns) == list(comp.sample.columns)
    assert written["image_id"].tolist() == comp.sample["image_id"].tolist()
    assert written["label"].tolist() == comp.vocab[comp.test_mix().argmax(axis=1)].tolist()

    scored = invoke("score", data["out"], copy / "solution.csv", "--metric", "f1_macro", "--json")
    assert scored.exit_code == 0, scored.output
    solution = comp.solution().set_index("image_id").loc[written["image_id"], "label"]
    assert json.loads(scored.stdout)["score"] == pytest.approx(
        f1_score(solution, written["label"], average="macro"), abs=1e-6)


def test_roc_auc_on_a_positive_class_column(copy, tmp_path):
    classes = ["Bag", "Coat"]
    comp = Competition(copy, tmp_path, "roc_auc", classes=classes)
    assert list(comp.vocab) == classes
    comp.add_runs()
    data = comp.ensemble()
    assert data["shape"] == "positive" and data["columns"] == ["label"]
    mix = comp.held_out_mix(1, 3)
    assert data["oob_score"] == pytest.approx(roc_auc_score(comp.truth == 1, mix[:, 1]), abs=1e-9)
    written = pd.read_csv(data["out"])
    np.testing.assert_allclose(written["label"], comp.test_mix()[:, 1], atol=1e-6)  # P(Coat), the second class

    # A two-class solution for the test images, then the score on the written column.
    solution = pd.DataFrame({"image_id": comp.sample["image_id"], "label": ["Bag", "Coat"] * 6})
    solution.to_csv(tmp_path / "solution2.csv", index=False)
    scored = invoke("score", data["out"], tmp_path / "solution2.csv", "--metric", "roc_auc", "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["score"] == pytest.approx(
        roc_auc_score(solution["label"] == "Coat", written["label"]), abs=1e-6)


@pytest.mark.parametrize("metric, columns, message", [
    ("log_loss", None, "metric log_loss scores probabilities, but the sample submission has one column 'label' "
                       "for 10 classes; it needs one column per class"),
    ("accuracy", "classes", "one probability column per class, but metric accuracy scores labels"),
])
def test_a_metric_that_cannot_score_the_sample_shape_fails_at_check(copy, tmp_path, metric, columns, message):
    vocab = sorted(pd.read_csv(copy / "train.csv", dtype=str)["label"].unique())
    comp = Competition(copy, tmp_path, metric, sample_columns=vocab if columns else None)
    result = invoke("check", comp.spec_path)
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {copy / 'sample_submission.csv'}: ") and message in line
    comp.add_runs()  # ensemble refuses before writing anything
    result = invoke("ensemble", comp.spec_path, "--home", comp.home)
    assert result.exit_code == 1 and message in result.stderr and not (comp.home / "submissions").exists()


def test_a_class_order_that_misses_a_class_fails_at_check(copy, tmp_path):
    comp = Competition(copy, tmp_path, "qwk")
    comp.spec_path.write_text(comp.spec_path.read_text() + "class_order: [Bag, Coat]\n")
    result = invoke("check", comp.spec_path)
    assert result.exit_code == 2 and result.stderr == (
        f"error: {comp.spec_path}: class_order must name every class once; missing Ankle_boot, Dress, Pullover, "
        f"Sandal, Shirt (+3 more)\n")


def test_the_estimate_by_runs_averaged_when_an_entry_holds_images_out_twice(copy, tmp_path):
    vocab = sorted(pd.read_csv(copy / "train.csv", dtype=str)["label"].unique())
    comp = Competition(copy, tmp_path, "log_loss", sample_columns=vocab)
    comp.add_runs()
    comp.add_run("c2", "convnext", np.arange(60), skill=2.0)  # a third convnext run past the two folds
    data = comp.ensemble("--dry-run", "--weight", "vit=0")
    folds = comp.held_out_mix(1, 0)  # each image's fold run: the first convnext run that held it out
    both = (folds + comp.valid["c2"][1]) / 2
    one, two = data["oob_by_runs"]
    assert (one["runs"], one["images"], two["runs"], two["images"]) == (1, 60, 2, 60)
    assert two["score"] == pytest.approx(log_loss(comp.truth, both), abs=1e-6)
    assert two["one_run_score"] == one["score"] == pytest.approx(log_loss(comp.truth, folds), abs=1e-6)
    assert data["oob_score"] == pytest.approx(two["score"])  # the estimate averages every run that held out
    text = invoke("ensemble", comp.spec_path, "--home", comp.home, "--dry-run", "--weight", "vit=0")
    assert text.exit_code == 0 and "runs averaged per entry" in text.stdout
