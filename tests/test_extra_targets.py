"""Road to the Top part 4: one model, one head, the submission's target plus extra label columns."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_CONVNEXT, write_spec
from typer.testing import CliRunner

from ledger.runs import artifacts
from ledger.cli import app
from ledger.errors import SpecError
from ledger.spec.loader import load_spec
from ledger.training.inference import classification_metrics, head_softmax
from ledger.training.loss import Criterion


def test_the_loss_is_the_sum_of_each_targets_cross_entropy():
    # Two targets of 2 and 3 classes. Logits (0, 0 | 1, 0, 0), targets (0, 2):
    # target 1: -log(1/2) = 0.693147; target 2: -log(1 / (e + 2)) = log(4.718282) = 1.551445
    logits, targets = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]), torch.tensor([[0, 2]])
    assert Criterion((2, 3))(logits, targets).item() == pytest.approx(0.693147 + 1.551445, abs=1e-5)
    probs = head_softmax(logits, (2, 3))
    torch.testing.assert_close(probs.sum(1), torch.tensor([2.0]))  # each target's slice sums to 1
    loss, error, extra = classification_metrics(probs, targets, (2, 3))
    assert loss == pytest.approx(0.693147 + 1.551445, abs=1e-5)
    assert error == 0.0 and extra == [1.0]  # first target: argmax 0 (a tie, first wins) right; second wrong


def test_extra_targets_need_a_label_csv_and_no_mixing(tmp_path, tiny_competition):
    spec = write_spec(tmp_path / "s.yaml", tiny_competition, "  - {name: a, arch: convnext_atto, size: 32}\n")
    text = spec.read_text()
    spec.write_text(text.replace("labels: train.csv}", "labels: folders, extra_targets: [group]}"))
    with pytest.raises(SpecError, match="data.extra_targets: needs a label CSV"):
        load_spec(spec, check_models=False)
    spec.write_text(text.replace("labels: train.csv}", "labels: train.csv, extra_targets: [group]}")
                    .replace("size: 32}", "size: 32, mixup: 0.2}"))
    with pytest.raises(SpecError, match=r"models\[0\].mixup: mixing is not supported"):
        load_spec(spec, check_models=False)


def test_a_spec_with_an_extra_target_trains_it_and_submits_the_main_one(tmp_path, tiny_competition):
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "s.yaml", tiny_competition,
                      f"  - {{name: c, arch: convnext_atto, size: 32, accum: 1, model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n")
    spec.write_text(spec.read_text().replace("labels: train.csv}", "labels: train.csv, extra_targets: [group]}"))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(spec), "--home", str(home)])
    assert result.exit_code == 0, result.output
    run = json.loads(runner.invoke(app, ["runs", "--home", str(home), "--json"]).output)["runs"][0]
    folder = home / run["artifact_dir"]
    metrics = pd.read_csv(folder / artifacts.METRICS)
    assert {"error_rate", "error_rate_group"} <= set(metrics.columns)
    groups = sorted(pd.read_csv(tiny_competition / "train.csv")["group"].astype(str).unique())
    extra = artifacts.load_predictions(folder / "test_preds_group.npz")
    main = artifacts.load_predictions(folder / artifacts.TEST_PREDS)
    assert list(extra.vocab) == groups and extra.probs.shape == (len(main.ids), len(groups))
    assert main.probs.shape[1] == 10  # the submission's classes only
    np.testing.assert_allclose(extra.probs.sum(1), 1.0, rtol=1e-5)
    valid_extra = artifacts.load_predictions(folder / "valid_preds_group.npz")
    assert set(valid_extra.labels) <= set(groups)
    out = tmp_path / "sub.csv"
    result = runner.invoke(app, ["ensemble", str(spec), "--home", str(home), "--out", str(out)])
    assert result.exit_code == 0, result.output
    submission = pd.read_csv(out)
    assert set(submission["label"]) <= set(main.vocab)
