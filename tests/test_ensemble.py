"""Bagging invariants on hand-made numbers: no files but the CSVs, no torch."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ledger.bag import matching
from ledger.runs.artifacts import Predictions
from ledger.bag.ensemble import RunInput, align, bag, normalise_weights
from ledger.bag.submission_csv import remove_stale_temporaries, write_submission
from ledger.errors import LedgerError
from ledger.bag.metrics import metric_by_name
from ledger.bag.submission_shape import submission_shape

VOCAB = ["cat", "dog"]


def run(run_id, model, ids, probs, vocab=VOCAB, valid=None):
    test = Predictions(ids=np.array(ids), probs=np.array(probs, dtype=np.float32), vocab=np.array(vocab))
    return RunInput(run_id=run_id, model=model, test=test, valid=valid)


def valid(ids, probs, labels, vocab=VOCAB):
    return Predictions(
        ids=np.array(ids), probs=np.array(probs, dtype=np.float32), vocab=np.array(vocab), labels=np.array(labels)
    )


# ---------------------------------------------------------------- weights


def test_weights_are_per_entry_and_its_runs_share_them():
    runs = [run("a", "convnext", ["x"], [[1, 0]]), run("b", "convnext", ["x"], [[1, 0]]), run("c", "vit", ["x"], [[1, 0]])]
    # Entries weigh 1 each by default, whatever their run count: convnext 1/2 split over a and b.
    assert normalise_weights(runs, {}) == pytest.approx({"a": 1 / 4, "b": 1 / 4, "c": 1 / 2})
    assert sum(normalise_weights(runs, {}).values()) == pytest.approx(1)
    # vit 2 : convnext 1 -> 2/3 and 1/3, convnext's third shared by its two runs.
    assert normalise_weights(runs, {"vit": 2}) == pytest.approx({"a": 1 / 6, "b": 1 / 6, "c": 2 / 3})


def test_weight_override_is_a_merged_dict():
    runs = [run("a", "convnext", ["x"], [[1, 0]]), run("c", "vit", ["x"], [[1, 0]])]
    spec_weights, cli_weights = {"convnext": 1.0, "vit": 3.0}, {"vit": 0.0}
    # The caller merges: --weight NAME=W wins over the spec's weight for that name.
    assert normalise_weights(runs, {**spec_weights, **cli_weights}) == {"a": 1.0, "c": 0.0}


@pytest.mark.parametrize(
    "weights, message",
    [({"swin": 2}, "swin"), ({"vit": -1}, "vit=-1"), ({"vit": 0, "convnext": 0}, "zero"), ({"vit": float("nan")}, "vit")],
)
def test_bad_weights_are_refused(weights, message):
    runs = [run("a", "convnext", ["x"], [[1, 0]]), run("c", "vit", ["x"], [[1, 0]])]
    with pytest.raises(LedgerError, match=message):
        normalise_weights(runs, weights)


# ---------------------------------------------------------------- bagging


def test_weighted_mean_by_hand():
    runs = [
        run("a", "convnext", ["x1", "x2"], [[0.9, 0.1], [0.2, 0.8]]),
        run("b", "vit", ["x1", "x2"], [[0.3, 0.7], [0.9, 0.1]]),
    ]
    # convnext 3 : vit 1 -> 0.75, 0.25.
    # x1: 0.75*0.9 + 0.25*0.3 = 0.75 cat;  x2: 0.75*0.2 + 0.25*0.9 = 0.375 cat -> dog.
    result = bag(runs, normalise_weights(runs, {"convnext": 3}), ["x1", "x2"])
    np.testing.assert_allclose(result.probs, [[0.75, 0.25], [0.375, 0.625]], rtol=1e-6)
    assert list(result.labels) == ["cat", "dog"]
    assert result.weights == {"a": 0.75, "b": 0.25}
    # Equal weights flip x2: 0.5*0.2 + 0.5*0.9 = 0.55 cat.
    assert list(bag(runs, normalise_weights(runs, {}), ["x1", "x2"]).labels) == ["cat", "cat"]


def test_rows_follow_the_given_id_order():
    runs = [run("a", "m", ["x1", "x2", "x3"], [[1, 0], [0, 1], [1, 0]])]
    result = bag(runs, {"a": 1.0}, ["x3", "x2", "x1"])
    assert list(result.ids) == ["x3", "x2", "x1"]
    assert list(result.labels) == ["cat", "dog", "cat"]


def test_permuted_vocab_gives_the_same_submission():
    ids = ["x1", "x2", "x3"]
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    vocab = ["ant", "bee", "cow"]
    shuffle = [2, 0, 1]  # the run lists cow, ant, bee
    plain = run("a", "m", ids, probs, vocab)
    shuffled = run("b", "m", ids, probs[:, shuffle], [vocab[i] for i in shuffle])

    alone = bag([plain], {"a": 1.0}, ids)
    other = bag([shuffled], {"b": 1.0}, ids)
    both = bag([plain, shuffled], {"a": 0.5, "b": 0.5}, ids)
    assert list(alone.vocab) == list(other.vocab) == vocab
    for result in (other, both):
        np.testing.assert_allclose(result.probs, alone.probs, rtol=1e-6)
        assert list(result.labels) == ["ant", "bee", "cow"]


def test_run_with_different_test_ids_is_refused():
    runs = [run("good", "m", ["x1", "x2"], [[1, 0], [0, 1]]), run("odd-run", "m", ["x1", "x9"], [[1, 0], [0, 1]])]
    with pytest.raises(LedgerError, match=r"odd-run.*missing 'x2'.*extra 'x9'"):
        bag(runs, {"good": 0.5, "odd-run": 0.5}, ["x1", "x2"])
    with pytest.raises(LedgerError, match="short-run"):
        align([run("short-run", "m", ["x1"], [[1, 0]])], ["x1", "x2"])


def test_run_with_different_classes_is_refused():
    runs = [run("good", "m", ["x1"], [[1, 0]]), run("odd-run", "m", ["x1"], [[1, 0]], vocab=["cat", "cow"])]
    with pytest.raises(LedgerError, match=r"odd-run.*missing 'dog'.*extra 'cow'"):
        align(runs, ["x1"])


def test_ids_match_with_extensions_stripped_only_as_a_fallback():
    runs = [run("a", "m", ["2.png", "1.png"], [[1, 0], [0, 1]])]
    result = bag(runs, {"a": 1.0}, ["1", "2"])
    assert list(result.labels) == ["dog", "cat"]
    # "1.png" and "1.jpg" are different files: two extensions must not be stripped into a match.
    with pytest.raises(LedgerError, match="missing '1.jpg'"):
        bag(runs, {"a": 1.0}, ["1.jpg", "2.png"])
    # Extension on the sample side, and an id without extension that holds a dot.
    assert list(bag(runs, {"a": 1.0}, ["2.png", "1"]).labels) == ["cat", "dog"]
    dotted = [run("d", "m", ["img.001.png", "img.002.png"], [[1, 0], [0, 1]])]
    assert list(bag(dotted, {"d": 1.0}, ["img.002", "img.001"]).labels) == ["dog", "cat"]


def test_index_is_computed_once_per_distinct_id_order(monkeypatch):
    calls = []
    real_lookup = matching.lookup
    monkeypatch.setattr(matching, "lookup", lambda *args: calls.append(1) or real_lookup(*args))
    ids = ["x1", "x2"]
    runs = [run(f"r{i}", "m", ids, [[1, 0], [0, 1]]) for i in range(5)] + [run("rev", "m", ids[::-1], [[0, 1], [1, 0]])]
    result = bag(runs, {r.run_id: 1.0 for r in runs}, ids)
    assert len(calls) == 2
    assert list(result.labels) == ["cat", "dog"]


# ---------------------------------------------------------------- submission CSV


def write_sample(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_submission_keeps_the_sample_ids_order_and_header(tmp_path):
    # Sample order is not sorted, ids have no extension; the runs kept "<id>.png" in another order.
    sample = write_sample(tmp_path / "sample_submission.csv", "image_id,label\n200003,x\n100001,x\n150002,x\n")
    runs = [
        run("a", "m", ["100001.png", "150002.png", "200003.png"], [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]]),
        run("b", "m", ["200003.png", "100001.png", "150002.png"], [[0.8, 0.2], [0.7, 0.3], [0.1, 0.9]]),
    ]
    sample_ids = pd.read_csv(sample, dtype=str)["image_id"]
    result = bag(runs, normalise_weights(runs, {}), sample_ids)
    out = tmp_path / "submissions" / "fashion.csv"  # parent does not exist yet
    frame = write_submission(sample, result, out)
    # 200003: (0.4 + 0.8)/2 = 0.6 cat; 100001: 0.8 cat; 150002: 0.85 dog.
    assert out.read_text() == "image_id,label\n200003,cat\n100001,cat\n150002,dog\n"
    assert list(frame.columns) == ["image_id", "label"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["fashion.csv"]  # no temp file left


def test_submission_with_named_columns_keeps_the_others(tmp_path):
    sample = write_sample(tmp_path / "s.csv", "variety,image_id,note\n,b.jpg,001\n,a.jpg,NA\n")
    result = bag([run("a", "m", ["a.jpg", "b.jpg"], [[1, 0], [0, 1]])], {"a": 1.0}, ["b.jpg", "a.jpg"])
    write_submission(sample, result, tmp_path / "out.csv", id_col="image_id", label_col="variety")
    assert (tmp_path / "out.csv").read_text() == "variety,image_id,note\ndog,b.jpg,001\ncat,a.jpg,NA\n"


def _shape(sample: Path, metric: str, vocab=VOCAB):
    return submission_shape(sample, list(pd.read_csv(sample, nrows=0).columns), vocab, metric_by_name(metric, vocab))


def test_probability_columns_follow_the_sample_and_clip_as_log_loss_does(tmp_path):
    sample = write_sample(tmp_path / "s.csv", "image_id,dog,cat\nx2,0.5,0.5\nx1,0.5,0.5\n")
    result = bag([run("a", "m", ["x1", "x2"], [[0.75, 0.25], [0.0, 1.0]])], {"a": 1.0}, ["x2", "x1"])
    shape = _shape(sample, "log_loss")
    assert (shape.kind, shape.columns, shape.clip) == ("per_class", ("dog", "cat"), True)
    write_submission(sample, result, tmp_path / "out.csv", shape=shape)
    # x2's cat 0 is clipped to float64's epsilon 2^-52 (its dog 1 - 2^-52 prints as 1), as log_loss clips it.
    assert (tmp_path / "out.csv").read_text() == "image_id,dog,cat\nx2,1,2.22044605e-16\nx1,0.25,0.75\n"
    write_submission(sample, result, tmp_path / "auc.csv", shape=_shape(sample, "roc_auc"))  # AUC clips nothing
    assert (tmp_path / "auc.csv").read_text() == "image_id,dog,cat\nx2,1,0\nx1,0.25,0.75\n"


def test_one_probability_column_holds_the_positive_class(tmp_path):
    result = bag([run("a", "m", ["x1", "x2"], [[0.75, 0.25], [0.1, 0.9]])], {"a": 1.0}, ["x1", "x2"])
    sample = write_sample(tmp_path / "s.csv", "id,is_dog\nx1,0\nx2,0\n")
    shape = _shape(sample, "roc_auc")
    assert (shape.kind, shape.positive) == ("positive", "dog")  # the second class
    write_submission(sample, result, tmp_path / "out.csv", shape=shape)
    assert (tmp_path / "out.csv").read_text() == "id,is_dog\nx1,0.25\nx2,0.899999976\n"  # float32 0.9, exactly
    named = write_sample(tmp_path / "named.csv", "id,cat\nx1,0\nx2,0\n")  # a column named as a class: that class
    write_submission(named, result, tmp_path / "cat.csv", shape=_shape(named, "log_loss"))
    assert (tmp_path / "cat.csv").read_text() == "id,cat\nx1,0.75\nx2,0.100000001\n"


def test_written_probabilities_give_back_the_float32_values():
    from ledger.bag.submission_shape import DIGITS

    values = np.random.default_rng(0).random(1000).astype(np.float32)
    assert (np.char.mod(DIGITS, values.astype(np.float64)).astype(np.float32) == values).all()


@pytest.mark.parametrize("header, metric, vocab, message", [
    ("id,cat,dog", "log_loss", ["bird", "cat", "dog"], "columns for classes cat, dog, but none for bird"),
    ("id,label", "log_loss", ["bird", "cat", "dog"], "metric log_loss scores probabilities, but the sample "
                                                     "submission has one column 'label' for 3 classes"),
    ("id,cat,dog", "qwk", VOCAB, "one probability column per class, but metric qwk scores labels"),
])
def test_a_shape_the_metric_cannot_score_is_refused(tmp_path, header, metric, vocab, message):
    sample = write_sample(tmp_path / "s.csv", header + "\n")
    with pytest.raises(LedgerError, match=rf"s\.csv: {message}"):
        _shape(sample, metric, vocab)


def test_submission_refuses_sample_ids_without_prediction_and_keeps_the_old_file(tmp_path):
    sample = write_sample(tmp_path / "s.csv", "id,label\nx1,\nx7,\nx8,\n")
    out = write_sample(tmp_path / "out.csv", "old\n")
    result = bag([run("a", "m", ["x1"], [[1, 0]])], {"a": 1.0}, ["x1"])
    with pytest.raises(LedgerError, match=r"2 ids have no prediction: 'x7', 'x8'"):
        write_submission(sample, result, out)
    assert out.read_text() == "old\n"


def test_failed_write_leaves_no_temp_file_and_the_old_file_untouched(tmp_path, monkeypatch):
    sample = write_sample(tmp_path / "s.csv", "id,label\nx1,\n")
    out = write_sample(tmp_path / "out.csv", "old\n")
    result = bag([run("a", "m", ["x1"], [[1, 0]])], {"a": 1.0}, ["x1"])

    def half_write(self, path, **kwargs):  # a disk that fills up mid-file
        Path(path).write_text("id,lab")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_write)
    with pytest.raises(LedgerError, match="No space left"):
        write_submission(sample, result, out)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "s.csv"]


@pytest.mark.parametrize(
    "text, kwargs, message",
    [("id\nx1\n", {}, "no label column"), ("id,label\nx1,\n", {"label_col": "variety"}, "no column 'variety'")],
)
def test_bad_sample_submission_is_refused(tmp_path, text, kwargs, message):
    sample = write_sample(tmp_path / "s.csv", text)
    result = bag([run("a", "m", ["x1"], [[1, 0]])], {"a": 1.0}, ["x1"])
    with pytest.raises(LedgerError, match=message):
        write_submission(sample, result, tmp_path / "out.csv", **kwargs)


# ---------------------------------------------------------------- atomic write and its ledger row


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_commit_gets_the_sha256_of_the_file_written(tmp_path):
    import hashlib

    sample = write_sample(tmp_path / "s.csv", "id,label\nx1,\n")
    result = bag([run("a", "m", ["x1"], [[0, 1]])], {"a": 1.0}, ["x1"])
    seen = []
    write_submission(sample, result, tmp_path / "out.csv", commit=seen.append)
    assert seen == [hashlib.sha256(b"id,label\nx1,dog\n").hexdigest()]


def test_failed_commit_removes_the_new_file_and_restores_the_old(tmp_path):
    sample = write_sample(tmp_path / "s.csv", "id,label\nx1,\n")
    result = bag([run("a", "m", ["x1"], [[0, 1]])], {"a": 1.0}, ["x1"])

    def ledger_locked(sha256):
        assert (tmp_path / "new.csv").read_text() == "id,label\nx1,dog\n"  # renamed before the row
        raise LedgerError("database is locked")

    with pytest.raises(LedgerError, match="locked"):
        write_submission(sample, result, tmp_path / "new.csv", commit=ledger_locked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]  # no CSV without its row

    write_sample(tmp_path / "old.csv", "old\n")
    def refuse(sha256):
        raise LedgerError("database is locked")

    with pytest.raises(LedgerError, match="locked"):
        write_submission(sample, result, tmp_path / "old.csv", commit=refuse)
    assert (tmp_path / "old.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv", "s.csv"]


def test_interrupt_mid_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    sample = write_sample(tmp_path / "s.csv", "id,label\nx1,\n")
    result = bag([run("a", "m", ["x1"], [[1, 0]])], {"a": 1.0}, ["x1"])

    def interrupted(self, path, **kwargs):  # Ctrl-C half-way through the file
        Path(path).write_text("id,lab")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    committed = []
    with pytest.raises(KeyboardInterrupt):
        write_submission(sample, result, tmp_path / "out.csv", commit=committed.append)
    assert committed == [] and sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".out.csv.tmp-{dead}", tmp_path / f".other.csv.tmp-{dead}.old", tmp_path / f"x.csv.tmp-{dead}"]
    kept = [tmp_path / f".out.csv.tmp-{alive}", tmp_path / "notes.txt", tmp_path / f".out.csv.tmp-{os.getpid()}"]
    for path in stale + kept:
        path.write_text("half")
    assert sorted(remove_stale_temporaries(tmp_path / "out.csv")) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)

    # write_submission cleans up before it writes.
    for path in stale:
        path.write_text("half")
    sample = write_sample(tmp_path / "s.csv", "id,label\nx1,\n")
    write_submission(sample, bag([run("a", "m", ["x1"], [[1, 0]])], {"a": 1.0}, ["x1"]), tmp_path / "out.csv")
    assert not any(path.exists() for path in stale)
