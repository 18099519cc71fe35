"""ledger report: fastai's interpretation numbers on hand-made cases, the bag, run selection, the
files written, and report.html opened in a real headless browser (Debian's chromium)."""

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_spec, unique_prefix
from ledger.runs import artifacts
from ledger.runs.artifacts import Predictions
from ledger.cli import app
from ledger.data.competition import load_competition
from ledger.data.splits import split_indices
from ledger.errors import LedgerError
from ledger.report.interpretation import Interpretation, bag, interpretation, most_confused, per_class_accuracy
from ledger.report.page import write_report
from ledger.spec.loader import DataSpec, load_spec
from ledger.store.database import Store

VOCAB = np.array(["a", "b", "c"])


def _hand_interp() -> Interpretation:
    # actual  a a b b b c ; predicted a b a c a c
    actual = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 0, 2, 0, 2])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), predicted] = 0.8
    return Interpretation("r", np.array(list("uvwxyz")), VOCAB, actual, probs)


# ---------------------------------------------------------------- numbers


def test_confusion_most_confused_and_per_class_by_hand():
    interp = _hand_interp()
    matrix = interp.confusion_matrix()
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [2, 0, 1], [0, 0, 1]])
    # Off-diagonal cells >= 1: (a,b,1), (b,a,2), (b,c,1); by count, ties in row-major order.
    confused = most_confused(matrix, VOCAB, min_val=1)
    assert list(confused.itertuples(index=False, name=None)) == [("b", "a", 2), ("a", "b", 1), ("b", "c", 1)]
    assert list(most_confused(matrix, VOCAB, min_val=2).itertuples(index=False, name=None)) == [("b", "a", 2)]
    per_class = per_class_accuracy(matrix, VOCAB)
    assert per_class["images"].tolist() == [2, 3, 1] and per_class["correct"].tolist() == [1, 0, 1]
    assert per_class["accuracy"].tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert interp.accuracy == pytest.approx(2 / 6)


def test_top_losses_are_the_least_likely_actual_classes():
    interp = _hand_interp()
    # Wrong predictions give the actual class 0.1 (loss 2.30), right ones 0.8 (loss 0.22);
    # the four wrong ones come first, in id order.
    assert interp.losses[interp.top_losses(6)].tolist() == pytest.approx([-np.log(0.1)] * 4 + [-np.log(0.8)] * 2)
    assert interp.top_losses(4).tolist() == [1, 2, 3, 4]


def test_bag_averages_over_the_runs_that_held_each_image_out():
    one = Predictions(np.array(["x", "y"]), np.array([[1.0, 0.0], [0.0, 1.0]]), np.array(["p", "q"]), np.array(["p", "q"]))
    two = Predictions(np.array(["y", "z"]), np.array([[0.5, 0.5], [0.2, 0.8]]), np.array(["p", "q"]), np.array(["q", "q"]))
    bagged = bag([("r1", one), ("r2", two)])
    assert bagged.ids.tolist() == ["x", "y", "z"] and bagged.labels.tolist() == ["p", "q", "q"]
    np.testing.assert_allclose(bagged.probs, [[1.0, 0.0], [0.25, 0.75], [0.2, 0.8]])
    other = Predictions(one.ids, one.probs, np.array(["p", "r"]), one.labels)
    with pytest.raises(LedgerError, match="run r2: its classes differ from run r1"):
        bag([("r1", one), ("r2", other)])


def test_labels_outside_the_vocab_name_the_file():
    preds = Predictions(np.array(["x"]), np.array([[1.0, 0.0]]), np.array(["p", "q"]), np.array(["zebra"]))
    with pytest.raises(LedgerError, match="valid_preds.npz: labels not in the run's vocab \\(zebra\\)"):
        interpretation("r", preds, "valid_preds.npz")


# ---------------------------------------------------------------- fabricated runs


def _fabricate(tmp_path, competition_root, runs=2):
    """Runs as `ledger train` leaves them (folder + done ledger row), without training: held-out
    predictions mostly right, a metrics.csv with a frozen epoch, and an lr column in the first."""
    spec_path = write_spec(tmp_path / "spec.yaml", competition_root,
                           "  - {name: convnext, arch: convnext_atto, size: 32}\n")
    store = Store(tmp_path / "home")
    competition = load_competition(DataSpec(root=competition_root, labels="train.csv"))
    vocab = np.array(competition.vocab)
    rng = np.random.default_rng(0)
    ids = []
    for run in range(runs):
        run_id = f"20260101-00000{run}-abc{run}"
        folder = store.run_dir("tiny", run_id)
        folder.mkdir(parents=True)
        _, valid = split_indices(competition.train_labels, 0.2, seed=run)
        actual = competition.train_labels[valid]
        # Mostly right: the actual class gets half the probability, except for a third of the
        # images where the next class does.
        favoured = np.where(rng.random(len(valid)) < 0.33, (actual + 1) % len(vocab), actual)
        probs = rng.dirichlet(np.ones(len(vocab)), size=len(valid)) * 0.5
        probs[np.arange(len(valid)), favoured] += 0.5
        artifacts.save_predictions(folder / artifacts.VALID_PREDS, Predictions(
            np.array(competition.train_ids)[valid], probs, vocab, vocab[actual]))
        metrics = pd.DataFrame({"epoch": [0, 0, 1], "phase": ["frozen", "train", "train"],
                                "train_loss": [2.1, 1.5, 1.1], "valid_loss": [1.9, 1.4, 1.2],
                                "error_rate": [0.6, 0.4, 0.3]})
        if run == 0:
            metrics["lr"] = [1e-3, 4e-3, 1e-4]
        metrics.to_csv(folder / artifacts.METRICS, index=False)
        store.insert_run(dict(id=run_id, experiment="tiny", model="convnext", arch="convnext_atto", size="32",
                              status="done", started_at="2026-01-01T00:00:00+00:00", epochs=2,
                              artifact_dir=str(folder.relative_to(store.home))))
        ids.append(run_id)
    return load_spec(spec_path), store, ids


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_competition):
    """One full report (2 runs, the bag, a failed run left out), shared: drawing is the slow part."""
    tmp_path = tmp_path_factory.mktemp("report")
    spec, store, ids = _fabricate(tmp_path, tiny_competition)
    store.insert_run(dict(id="20260101-failed", experiment="tiny", model="convnext", arch="convnext_atto",
                          size="32", status="failed", started_at="2026-01-01T00:00:00+00:00"))
    return tmp_path, ids, write_report(spec, store, tmp_path / "out")


@pytest.mark.slow
def test_report_writes_every_file_for_runs_and_bag(written):
    tmp_path, ids, report = written
    assert [s.name for s in report.sections] == ["bag", *ids]  # the failed run is left out
    for name in ids:
        for file in ("confusion.png", "confusion_normalised.png", "curves.png", "top_losses.png",
                     "most_confused.csv", "per_class.csv"):
            assert (tmp_path / "out" / name / file).is_file(), (name, file)
    assert not (tmp_path / "out" / "bag" / "curves.png").exists()  # a bag has no training
    bag_section = report.sections[0]
    union = set().union(*(set(s.interp.ids) for s in report.sections[1:]))
    assert set(bag_section.interp.ids) == union
    per_class = pd.read_csv(tmp_path / "out" / "bag" / "per_class.csv")
    assert per_class["images"].sum() == len(union)
    with Image.open(tmp_path / "out" / ids[0] / "curves.png") as curves_with_lr, \
            Image.open(tmp_path / "out" / ids[1] / "curves.png") as curves_without:
        assert curves_with_lr.width > curves_without.width  # the third panel: the learning rate
    assert all(len(s.tables["most confused (actual, predicted, count; min_val 1)"]) for s in report.sections)
    page = report.html.read_text()
    assert page.count("data:image/png;base64,") == 2 * 4 + 3  # 4 pictures a run, 3 for the bag
    assert "<table" in page and "most confused" in page and "per-class accuracy" in page


def test_run_prefix_selects_one_run_and_no_bag(tmp_path, tiny_competition):
    spec, store, ids = _fabricate(tmp_path, tiny_competition)
    with pytest.raises(LedgerError, match="run '2026' is ambiguous: 2 runs match"):
        write_report(spec, store, tmp_path / "out", run="2026")
    with pytest.raises(LedgerError, match="run 'nope': no run id starts with it in .* \\(experiment 'tiny'\\)"):
        write_report(spec, store, tmp_path / "out", run="nope")
    report = write_report(spec, store, tmp_path / "out", run=unique_prefix(ids[1], ids), top_losses=0)
    assert [s.name for s in report.sections] == [ids[1]]
    assert sorted(report.sections[0].images) == ["confusion matrix (counts)", "confusion matrix (each row sums to 1)",
                                                 "training curves"]


def test_missing_predictions_and_no_runs_are_one_line_errors(tmp_path, tiny_competition):
    spec, store, ids = _fabricate(tmp_path, tiny_competition, runs=1)
    (store.run_dir("tiny", ids[0]) / artifacts.VALID_PREDS).unlink()
    with pytest.raises(LedgerError, match=f"valid_preds.npz: run {ids[0]} has no held-out predictions"):
        write_report(spec, store, tmp_path / "out")
    empty = Store(tmp_path / "empty")
    with pytest.raises(LedgerError, match="no done runs of experiment 'tiny'"):
        write_report(spec, empty, tmp_path / "out")


def test_cli_report(tmp_path, tiny_competition):
    spec, store, ids = _fabricate(tmp_path, tiny_competition)
    result = CliRunner().invoke(app, ["report", str(spec.path), "--out", str(tmp_path / "out"), "--run", ids[0],
                                      "--home", str(store.home), "--top-losses", "2"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out' / 'report.html'}" in " ".join(result.stdout.split())
    assert f"run {ids[0]}: TTA accuracy" in result.stdout and "bag" not in result.stdout
    result = CliRunner().invoke(app, ["report", str(spec.path), "--out", str(tmp_path / "out"), "--run", "x",
                                      "--home", str(store.home)])
    assert result.exit_code == 1 and result.stderr.startswith("error: run 'x': no run id starts with it") and "Traceback" not in result.output


# ---------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)")
def test_report_html_in_headless_chromium(tmp_path, written):
    _, ids, report = written
    page = report.html
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    # The browser parsed the page into the sections, tables and embedded pictures it was written with.
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == 11
    assert len(re.findall(r"<table", dom)) == 1 + 2 * 3  # the runs table, then two per section
    for section in ("bag", *ids):
        assert f'<section id="{section}">' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    # Not blank: text and pictures make a real spread of grey levels.
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50


def test_sections_show_the_spec_metric_beside_accuracy(tmp_path, tiny_competition):
    import dataclasses

    from sklearn.metrics import f1_score

    spec, store, ids = _fabricate(tmp_path, tiny_competition, runs=1)
    report = write_report(dataclasses.replace(spec, metric="f1_macro"), store, tmp_path / "out", top_losses=0)
    [section] = report.sections
    interp = section.interp
    assert section.score == pytest.approx(f1_score(interp.actual, interp.probs.argmax(axis=1), average="macro"))
    assert section.figures == f"f1_macro {section.score:.4f}, accuracy {interp.accuracy:.4f}"
    assert f"<p>{section.figures} on {len(interp.ids)} held-out images</p>" in report.html.read_text()
