"""One spec, no code: a Planet-style multi-label competition and a regression one, each trained on
tiny data, bagged with tuned weights, scored, predicted and exported; the CSV keeps the sample's
shape, `ledger score` equals scikit-learn on it, and the offline bundle and `ledger predict`
decide as the submission did (the thresholds chosen out of bag)."""

import json

import numpy as np
import pandas as pd
import pytest
from test_export import guarded
from typer.testing import CliRunner

from ledger.cli import app
from ledger.data.task_competitions import write_size_competition, write_tags_competition

runner = CliRunner()
TINY_RESNET = "{channels: [8, 16, 16, 32], stem_width: 8}"


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
@pytest.mark.parametrize("task", ["multi_label", "regression"])
def test_a_task_trains_bags_scores_predicts_and_exports_from_a_spec(tmp_path, task):
    from sklearn.metrics import fbeta_score, root_mean_squared_error
    from sklearn.preprocessing import MultiLabelBinarizer

    root = tmp_path / "competition"
    if task == "multi_label":
        write_tags_competition(root, seed=0, train=48, test=12)
        head, metric, size = "task: multi_label\nmetric: f2_samples\n", "f2_samples", 48
        data = f"data: {{root: {root}, labels: train.csv, label_col: tags}}\n"
    else:
        write_size_competition(root, seed=0, train=48, test=12)
        head, metric, size = "task: regression\nmetric: rmse\n", "rmse", 40
        data = f"data: {{root: {root}, labels: train.csv, label_col: size}}\n"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: {task}\n{head}{data}split: {{folds: 2, seed: 0}}\n"
                    f"train: {{batch_size: 8, epochs: 1, lr: 0.002, save_weights: true}}\ntta: {{n: 1}}\n"
                    f"probe: {{budget: 4GiB, steps: 1}}\nmodels:\n"
                    f"  - {{name: a, arch: resnet18, size: {size}, accum: 1, model_kwargs: {TINY_RESNET}}}\n"
                    f"  - {{name: b, arch: resnet18, size: {size}, accum: 1, mixup: 0.4, "
                    f"model_kwargs: {TINY_RESNET}}}\n")
    home = tmp_path / "home"
    invoke("train", spec, "--home", home, "--jobs", "2" if task == "regression" else "1")  # the pool too
    out = tmp_path / "submission.csv"
    bagged = json.loads(invoke("ensemble", spec, "--home", home, "--out", out, "--tune-weights", "--json").stdout)
    assert bagged["metric"] == metric and bagged["oob_images"] == 48  # 2 folds: every image held out once
    assert set(bagged["tuned"]["weights"]) == {"a", "b"}

    sample = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written.columns) == list(sample.columns) and written.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    solution = pd.read_csv(root / "solution.csv", dtype=str, keep_default_na=False)
    score = json.loads(invoke("score", out, root / "solution.csv", "--metric", metric, "--json").stdout)["score"]
    truth = solution.set_index(solution.columns[0]).loc[written.iloc[:, 0]]
    if task == "multi_label":
        assert bagged["decision"]["kind"] == "thresholds"
        words = sorted({w for cell in pd.concat([truth.iloc[:, 0], written.iloc[:, 1]]) for w in cell.split()})
        binarize = MultiLabelBinarizer(classes=words).fit([words]).transform
        expected = fbeta_score(binarize([c.split() for c in truth.iloc[:, 0]]),
                               binarize([c.split() for c in written.iloc[:, 1]]), beta=2, average="samples",
                               zero_division=1.0)
    else:
        assert bagged["decision"] is None
        expected = root_mean_squared_error(truth.iloc[:, 0].astype(float), written.iloc[:, 1].astype(float))
    assert score == pytest.approx(expected, abs=1e-9)

    # The bundle decides with the thresholds recorded out of bag, offline: the same file.
    invoke("export", spec, "--home", home, "--out", tmp_path / "bundle")
    done = guarded(tmp_path / "bundle" / "predict.py", root / "test_images", root / "sample_submission.csv",
                   "bundle.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bundle.csv").read_bytes() == out.read_bytes()

    # The report: each tag's figures, or predicted against true and the residuals by range.
    invoke("report", spec, "--home", home, "--out", tmp_path / "report")
    made = {p.name for p in (tmp_path / "report" / "bag").iterdir()}
    assert made >= ({"per_tag.csv"} if task == "multi_label" else {"predicted_vs_true_0.png", "residuals_0.png"})

    # `ledger predict SPEC` gives the bag's predictions, decided alike, for any folder of images.
    invoke("predict", spec, root / "test_images", "--home", home, "--out", tmp_path / "predicted.csv")
    predicted = pd.read_csv(tmp_path / "predicted.csv", dtype=str, keep_default_na=False).set_index("id")
    by_id = written.set_index(written.columns[0])
    names = [f"{i}.png" if not str(i).endswith(".png") else str(i) for i in by_id.index]
    if task == "multi_label":
        assert predicted.loc[names, "tags"].tolist() == by_id.iloc[:, 0].tolist()
    else:
        np.testing.assert_allclose(predicted.loc[names, "size"].astype(float), by_id.iloc[:, 0].astype(float),
                                   rtol=1e-5)
