"""`ledger ensemble` on fake run folders: which runs are bagged (by fingerprint, or named by id
prefix), the out-of-bag figure and its coverage, --tune-weights, --json, and the submission's
provenance in the ledger. No training: every run folder is hand-made."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_spec
from typer.testing import CliRunner

from ledger.runs.artifacts import TEST_PREDS, VALID_PREDS, Predictions, save_predictions
from ledger.cli import app
from ledger.spec.fingerprint import run_fingerprint
from ledger.spec.loader import load_spec
from ledger.store.database import Store

runner = CliRunner()

MODELS = ("  - {name: convnext, arch: convnext_atto, size: 32, runs: 2}\n"
          "  - {name: vit, arch: vit_tiny_patch16_224, size: 16, weight: 3}\n")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="ledger")


@pytest.fixture
def setup(tmp_path, tiny_competition, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_competition, MODELS)
    spec = load_spec(spec_path, check_models=False)
    train = pd.read_csv(tiny_competition / "train.csv", dtype=str)
    sample = pd.read_csv(tiny_competition / "sample_submission.csv", dtype=str)
    return dict(home=tmp_path / "home", spec_path=spec_path, spec=spec, train=train, sample=sample)


def add_run(setup, run_id, model, *, held_out=None, correct=True, status="done", fingerprint="current",
            test_class=0, confidence=0.7):
    """A done run folder and its ledger row. `held_out`: positions in train.csv of its held-out
    images (default: all); its validation probabilities put `confidence` on the true class, or on
    the next class when not `correct`, and spread the rest evenly. Its test predictions all say vocab[test_class]."""
    home, spec, train, sample = setup["home"], setup["spec"], setup["train"], setup["sample"]
    vocab = np.array(sorted(train["label"].unique()))
    folder = home / "tiny" / run_id
    folder.mkdir(parents=True)
    rows = train if held_out is None else train.iloc[held_out]
    truth = pd.Index(vocab).get_indexer(rows["label"])
    guess = truth if correct else (truth + 1) % len(vocab)
    probs = np.full((len(rows), len(vocab)), (1 - confidence) / (len(vocab) - 1))
    probs[np.arange(len(rows)), guess] = confidence
    save_predictions(folder / VALID_PREDS, Predictions(rows["image_id"].to_numpy(), probs, vocab,
                                                       rows["label"].to_numpy()))
    test = np.full((len(sample), len(vocab)), 0.0)
    test[:, test_class] = 1.0
    save_predictions(folder / TEST_PREDS, Predictions(sample["image_id"].to_numpy(), test, vocab))
    if fingerprint == "current":
        fingerprint = run_fingerprint(spec, spec.model(model)) if model in [m.name for m in spec.models] else None
    store = Store(home)
    store.insert_run(dict(id=run_id, experiment="tiny", model=model, arch="x", size="32", status=status,
                          started_at="2026-01-01T00:00:00", artifact_dir=f"tiny/{run_id}", fingerprint=fingerprint))
    store.close()


def ensemble_json(setup, *args):
    result = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one JSON object: anything else on stdout fails here


HALVES = (list(range(0, 60, 2)), list(range(1, 60, 2)))  # two folds: every image held out once


def test_bags_only_the_current_spec_version_and_records_its_provenance(setup):
    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    add_run(setup, "c1", "convnext", held_out=HALVES[1])
    add_run(setup, "v0", "vit", correct=False)
    add_run(setup, "old", "convnext", fingerprint="0123456789ab")
    add_run(setup, "gone", "swin", fingerprint="fedcba987654")
    add_run(setup, "broken", "convnext", status="failed")

    data = ensemble_json(setup)
    assert data["runs"] == ["c0", "c1", "v0"]
    vit_now = run_fingerprint(setup["spec"], setup["spec"].model("vit"))
    convnext_now = run_fingerprint(setup["spec"], setup["spec"].model("convnext"))
    assert vit_now != convnext_now
    assert data["excluded"] == [
        {"run_id": "old", "reason": f"recipe changed since (fingerprint 0123456789ab, entry 'convnext' now {convnext_now})"},
        {"run_id": "gone", "reason": "model entry 'swin' removed from the spec"},
    ]
    # Entries 1 : 3; convnext's 1/4 shared by its two runs.
    assert data["weights"] == pytest.approx({"c0": 1 / 8, "c1": 1 / 8, "v0": 3 / 4})
    # Every image held out by both entries: convnext says the true class at 0.7, vit the next class
    # at 0.7. Weighted 1 : 3 the true class gets 0.25 * 0.7 + 0.75 * 0.033 = 0.2, the wrong 0.53: 0/60.
    assert (data["oob_accuracy"], data["oob_images"], data["train_images"]) == (0.0, 60, 60)

    out = Path(data["out"])
    assert out.is_absolute() and out.parent == (setup["home"] / "submissions").absolute()
    assert out.name.startswith("tiny-") and out.is_file()
    assert data["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    store = Store(setup["home"])
    [row] = store.submissions("tiny")
    assert row.path == f"submissions/{out.name}" and store.submission_path(row).resolve() == out.resolve()
    assert row.runs == ["c0", "c1", "v0"] and row.sha256 == data["sha256"]
    assert (row.oob_accuracy, row.oob_images, row.train_images) == (0.0, 60, 60)
    assert json.loads(row.excluded) == data["excluded"] and row.weights == data["weights"]

    table = runner.invoke(app, ["runs", "--home", str(setup["home"])], env={"COLUMNS": "300"})  # no cell cut short
    assert table.exit_code == 0 and data["sha256"][:12] in table.stdout and "60/60" in table.stdout


def test_a_changed_recipe_leaves_its_entry_out_and_says_so(setup, tmp_path, tiny_competition):
    add_run(setup, "c0", "convnext")
    add_run(setup, "v0", "vit")
    write_spec(setup["spec_path"], tiny_competition, MODELS.replace("size: 16", "size: 24"))
    data = ensemble_json(setup, "--dry-run")
    assert data["runs"] == ["c0"] and data["missing_entries"] == ["vit"] and data["out"] is None
    assert [e["run_id"] for e in data["excluded"]] == ["v0"]
    assert data["excluded"][0]["reason"].startswith("recipe changed since (fingerprint ")
    assert Store(setup["home"]).submissions() == []
    text = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--dry-run")
    assert "recipe changed since" in text.stdout and "entry 'vit' has no done run" in text.stdout


def test_tune_weights_prints_the_comparison_and_never_writes_the_spec(setup):
    # convnext right everywhere (0.7), vit wrong everywhere (0.6): tuning must drop vit. Equal weights:
    # true class (0.7 + 0.044)/2 = 0.37 beats the wrong one (0.033 + 0.6)/2 = 0.32; spec 1 : 3 does not.
    add_run(setup, "c0", "convnext", test_class=0)
    add_run(setup, "v0", "vit", correct=False, test_class=1, confidence=0.6)
    before = setup["spec_path"].read_bytes()
    data = ensemble_json(setup, "--tune-weights")
    assert data["tuned"]["weights"] == {"convnext": 1, "vit": 0}
    # 20 bootstrap resamples by default: convnext wins every one.
    assert data["tuned"]["passes"] == 20 and data["tuned"]["picked"] == {"convnext": 20, "vit": 0}
    rows = {row["name"]: row for row in data["tuned"]["comparison"]}
    assert [rows[n]["accuracy"] for n in ("convnext", "vit", "spec", "equal", "tuned")] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert {row["images"] for row in rows.values()} == {60}
    assert setup["spec_path"].read_bytes() == before
    # Without --use-tuned the CSV uses the spec's weights (vit 3): every label is vocab[1].
    vocab = sorted(setup["train"]["label"].unique())
    assert set(pd.read_csv(data["out"])["label"]) == {vocab[1]} and data["oob_accuracy"] == 0.0
    tuned = ensemble_json(setup, "--use-tuned")
    assert tuned["runs"] == ["c0"] and set(pd.read_csv(tuned["out"])["label"]) == {vocab[0]}
    assert tuned["oob_accuracy"] == 1.0 and tuned["excluded"] == [{"run_id": "v0", "reason": "entry 'vit' has weight 0"}]

    text = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--tune-weights", "--dry-run")
    assert text.exit_code == 0, text.output
    assert "  convnext: 1  (weighted by 20 of 20 passes)\n  vit: 0  (weighted by 0 of 20 passes)\n" in text.stdout
    assert "equal" in text.stdout
    one_pass = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--tune-weights", "--resamples", "0",
                      "--dry-run")
    assert "one pass on these images" in one_pass.stdout and "  convnext: 1\n  vit: 0\n" in one_pass.stdout


def test_runs_named_by_unique_prefix(setup):
    add_run(setup, "20260101-aaa111", "convnext")
    add_run(setup, "20260101-aab222", "convnext")
    add_run(setup, "20260101-bbb333", "vit", status="failed")
    data = ensemble_json(setup, "--dry-run", "--run", "20260101-aab", "--runs", "20260101-aab222")
    assert data["runs"] == ["20260101-aab222"] and data["excluded"] == []

    for prefix, message in (("20260101-aa", "run '20260101-aa' is ambiguous: 2 runs match: '20260101-aaa111', "
                                            "'20260101-aab222'"),
                            ("nope", "run 'nope': no run id starts with it"),
                            ("20260101-b", "run 20260101-bbb333: status is failed; only done runs are bagged")):
        result = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--run", prefix, "--dry-run")
        assert result.exit_code == 1 and result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: {message}")


def test_no_csv_stands_without_its_ledger_row(setup, monkeypatch):
    add_run(setup, "c0", "convnext")

    def locked(*args, **kwargs):
        from ledger.errors import LedgerError
        raise LedgerError("ledger.db: database is locked")

    monkeypatch.setattr(Store, "record_submission", locked)
    out = setup["home"] / "sub.csv"
    result = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--out", out)
    assert result.exit_code == 1 and "database is locked" in result.stderr and "wrote" not in result.stdout
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["ledger.db", "ledger.db-shm",
                                                                                  "ledger.db-wal", "tiny"]


def test_use_tuned_and_weight_conflict(setup):
    add_run(setup, "c0", "convnext")
    result = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--use-tuned", "--weight", "vit=1")
    assert result.exit_code == 1 and "--use-tuned and --weight" in result.stderr


def test_submissions_of_a_v4_ledger_were_estimated_on_accuracy(tmp_path):
    from conftest import ledger_at_version

    home = tmp_path / "home"
    db = ledger_at_version(home, 4)  # a ledger as schema 4 left it, before metrics were recorded
    db.execute("INSERT INTO submissions (id, experiment, path, created_at, runs, weights, oob_accuracy)"
               " VALUES ('s1', 'tiny', '/x.csv', 'now', '[]', '{}', 0.875)")
    db.close()
    [row] = Store(home, existing=True).submissions()
    assert (row.metric, row.oob_score, row.oob_accuracy) == ("accuracy", 0.875, 0.875)
    table = runner.invoke(app, ["submissions", "--home", str(home)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "accuracy" in table.stdout and "0.8750" in table.stdout
