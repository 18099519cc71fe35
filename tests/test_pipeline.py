"""End to end through the CLI on a tiny real competition: train (probing first for `accum: auto`),
the ledger rows against the artifacts, a failing run, and a submission. The one expensive test."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONVNEXT, TINY_VIT, write_spec
from typer.testing import CliRunner

from ledger.runs import artifacts
from ledger.cli import app

pytestmark = pytest.mark.slow  # trains or builds end to end: `make test-quick` leaves it out

runner = CliRunner()

MODELS = (
    f"  - {{name: convnext, arch: convnext_atto, size: 32, runs: 2, model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n"
    f"  - {{name: vit, arch: vit_tiny_patch16_224, size: 16, presize: 24, accum: 2, weight: 2,"
    f" model_kwargs: {json.dumps(TINY_VIT)}}}\n"
)


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def folder_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_train_probe_ensemble_end_to_end(tmp_path, tiny_competition):
    home = tmp_path / "home"
    # Scored on macro F1, as the competition would be: every epoch, the run's row and the bag.
    spec = write_spec(tmp_path / "tiny.yaml", tiny_competition, MODELS, extra="metric: f1_macro\n")

    result = invoke("train", spec, "--home", home)
    assert result.exit_code == 0, result.output
    # convnext has accum auto and no probe on record: train probes first and says so.
    assert "no probe is on record" in result.output and "convnext: accum 1" in result.output
    assert "out-of-bag f1_macro of the spec's bag: " in result.output  # what the runs are worth together

    ledger = json.loads(invoke("runs", "--home", home, "--json").output)
    rows = ledger["runs"]
    assert [(r["model"], r["status"]) for r in rows] == [("convnext", "done")] * 2 + [("vit", "done")]
    # The probe train ran is on record, with its trial and the device it measured.
    [probe] = ledger["probes"]
    assert probe["model"] == "convnext" and probe["chosen_k"] == 1 and probe["device"].startswith("cpu")
    assert [t["k"] for t in probe["trials"]] == [1] and probe["trials"][0]["fits"] == 1
    assert rows[0]["split_seed"] != rows[1]["split_seed"]  # a fresh random split for each run
    assert [r["accum"] for r in rows] == [1, 1, 2]

    sample = pd.read_csv(tiny_competition / "sample_submission.csv")
    train_ids = set(pd.read_csv(tiny_competition / "train.csv")["image_id"])
    for row in rows:
        folder = home / "tiny" / row["id"]
        assert row["artifact_dir"] == f"tiny/{row['id']}"  # relative to the home, so the home can move
        for name in (artifacts.SPEC, artifacts.METRICS, artifacts.SUMMARY, artifacts.TEST_PREDS, artifacts.VALID_PREDS):
            assert (folder / name).is_file(), name
        assert not list(folder.parent.glob("*.tmp-*"))
        summary = artifacts.read_json(folder / artifacts.SUMMARY)
        metrics = pd.read_csv(folder / artifacts.METRICS)
        valid = artifacts.load_predictions(folder / artifacts.VALID_PREDS)
        test = artifacts.load_predictions(folder / artifacts.TEST_PREDS)
        # The row's figures are the artifacts' figures.
        assert row["error_rate"] == summary["error_rate"] == metrics["error_rate"].iloc[-1]
        assert row["valid_loss"] == summary["valid_loss"] == metrics["valid_loss"].iloc[-1]
        assert row["split_seed"] == summary["split_seed"] and row["peak_bytes"] == summary["peak_bytes"] > 0
        # Held-out predictions are TTA'd (as the submission is); the epoch's error rate is plain.
        recomputed_accuracy = np.mean(valid.vocab[valid.probs.argmax(1)] == valid.labels)
        assert abs(recomputed_accuracy - summary["tta_accuracy"]) < 1e-6
        # The competition's metric: plain after each epoch (metrics.csv, the row), and TTA'd, as
        # scikit-learn computes it on the held-out predictions the run wrote.
        from sklearn.metrics import f1_score

        assert row["metric"] == summary["metric"] == "f1_macro"
        assert row["valid_metric"] == summary["valid_metric"] == metrics["f1_macro"].iloc[-1]
        f1 = f1_score(valid.labels, valid.vocab[valid.probs.argmax(1)], average="macro")
        assert abs(row["tta_metric"] - f1) < 1e-9 and row["tta_accuracy"] == summary["tta_accuracy"]
        assert len(metrics) == 1 and summary["valid_images"] == len(valid.ids) == 10  # round(20% of 6) = 1 per class, 10 classes
        assert set(valid.ids) <= train_ids
        assert list(test.ids) == list(sample["image_id"]) and list(test.vocab) == sorted(test.vocab)
        np.testing.assert_allclose(test.probs.sum(1), 1.0, rtol=1e-5)

    # A submission: exactly the sample's columns, ids and order, and a ledger record of it.
    out = tmp_path / "sub.csv"
    result = invoke("ensemble", spec, "--home", home, "--out", out)
    assert result.exit_code == 0, result.output
    assert "out-of-bag f1_macro" in result.output and "accuracy" in result.output
    submission = pd.read_csv(out)
    assert list(submission.columns) == list(sample.columns)
    assert list(submission["image_id"]) == list(sample["image_id"])
    assert set(submission["label"]) <= set(test.vocab)
    recorded = json.loads(invoke("runs", "--home", home, "--json").output)["submissions"]
    assert recorded[0]["path"] == str(out) and sorted(recorded[0]["runs"]) == sorted(r["id"] for r in rows)
    # Weights per entry: convnext 1, vit 2 -> 1/3, 2/3; convnext's two runs share its 1/3.
    assert sorted(recorded[0]["weights"].values()) == pytest.approx([1 / 6, 1 / 6, 2 / 3])
    scored = invoke("score", out, tiny_competition / "solution.csv")
    assert scored.exit_code == 0 and "accuracy" in scored.output

    # A run made to fail (weights for another arch) is recorded failed, the command exits 1, the runs
    # after it go on, and the earlier runs' artifacts are untouched.
    before = {r["id"]: folder_digest(home / "tiny" / r["id"]) for r in rows}
    from ledger.training.models import save_weights
    from test_train import tiny_vit

    save_weights(tiny_vit(), tmp_path / "other.safetensors")
    failing = MODELS.replace("runs: 2,", f"runs: 1, pretrained: {tmp_path / 'other.safetensors'},")
    failing = failing.replace("weight: 2,", "weight: 2, lr: 0.001,")  # a new recipe: its run is owed
    spec2 = write_spec(tmp_path / "tiny2.yaml", tiny_competition, failing)
    result = invoke("train", spec2, "--home", home)
    assert result.exit_code == 1
    rows_after = json.loads(invoke("runs", "--home", home, "--json").output)["runs"]
    new = [r for r in rows_after if r["id"] not in before]
    assert [(r["model"], r["status"]) for r in new] == [("convnext", "failed"), ("vit", "done")]
    assert "weights do not fit convnext_atto" in new[0]["error"]
    assert not (home / "tiny" / new[0]["id"]).exists() and not list((home / "tiny").glob("*.tmp-*"))
    assert {rid: folder_digest(home / "tiny" / rid) for rid in before} == before
    # The failed run is never bagged: asking for it by id is refused with its id.
    refused = invoke("ensemble", spec2, "--home", home, "--run", new[0]["id"], "--dry-run")
    assert refused.exit_code == 1 and new[0]["id"] in refused.output and "failed" in refused.output
