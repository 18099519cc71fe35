"""Bagging invariants on hand-made numbers: no files but the CSVs, no torch."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ledger import ensemble
from ledger.artifacts import Predictions
from ledger.ensemble import RunInput, align, bag, normalise_weights, out_of_bag, write_submission
from ledger.errors import LedgerError

VOCAB = ["cat", "dog"]


def run(run_id, model, ids, probs, vocab=VOCAB, valid=None):
    test = Predictions(ids=np.array(ids), probs=np.array(probs, dtype=np.float32), vocab=np.array(vocab))
    return RunInput(run_id=run_id, model=model, test=test, valid=valid)


def valid(ids, probs, labels, vocab=VOCAB):
    return Predictions(
        ids=np.array(ids), probs=np.array(probs, dtype=np.float32), vocab=np.array(vocab), labels=np.array(labels)
    )


# ---------------------------------------------------------------- weights


def test_weights_default_to_one_per_run_and_sum_to_one():
    runs = [run("a", "convnext", ["x"], [[1, 0]]), run("b", "convnext", ["x"], [[1, 0]]), run("c", "vit", ["x"], [[1, 0]])]
    assert normalise_weights(runs, {}) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    # A model weight applies to each of its runs: 1 + 1 + 2 = 4.
    assert normalise_weights(runs, {"vit": 2}) == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5})


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
    real_lookup = ensemble._lookup
    monkeypatch.setattr(ensemble, "_lookup", lambda *args: calls.append(1) or real_lookup(*args))
    ids = ["x1", "x2"]
    runs = [run(f"r{i}", "m", ids, [[1, 0], [0, 1]]) for i in range(5)] + [run("rev", "m", ids[::-1], [[0, 1], [1, 0]])]
    result = bag(runs, {r.run_id: 1.0 for r in runs}, ids)
    assert len(calls) == 2
    assert list(result.labels) == ["cat", "dog"]


# ---------------------------------------------------------------- out-of-bag


def test_out_of_bag_by_hand():
    # True labels: x1 cat, x2 dog, x3 cat, x4 dog.
    A = valid(["x1", "x2", "x3"], [[0.6, 0.4], [0.7, 0.3], [0.2, 0.8]], ["cat", "dog", "cat"])  # right, wrong, wrong
    B = valid(["x2", "x3", "x4"], [[0.1, 0.9], [0.9, 0.1], [0.4, 0.6]], ["dog", "cat", "dog"])  # all right
    D = valid(["x4", "x1"], [[0.2, 0.8], [0.3, 0.7]], ["dog", "cat"], vocab=VOCAB)  # x4 right, x1 wrong
    runs = [
        run("A", "convnext", ["t"], [[1, 0]], valid=A),
        run("C", "convnext", ["t"], [[1, 0]]),  # no validation predictions: skipped
        run("B", "vit", ["t"], [[1, 0]], valid=B),
        run("D", "vit", ["t"], [[1, 0]], valid=D),
    ]
    weights = normalise_weights(runs, {"convnext": 3})  # A 3/8, C 3/8, B 1/8, D 1/8
    result = out_of_bag(runs, weights)
    # Ensemble, each image over the runs that held it out (A:B:D = 3:1:1 before renormalising):
    #   x1  A, D: (3*0.6 + 1*0.3)/4 = 0.525 cat   right
    #   x2  A, B: (3*0.7 + 1*0.1)/4 = 0.55  cat   wrong
    #   x3  A, B: (3*0.2 + 1*0.9)/4 = 0.375 cat   wrong (dog)
    #   x4  B, D: (0.4 + 0.2)/2     = 0.3   cat   right (dog)
    # -> 2 / 4 = 0.5 over 4 covered images.
    assert result.accuracy == 0.5 and result.covered == 4
    table = result.table.set_index("name")
    assert list(result.table.columns) == ["kind", "name", "weight", "accuracy", "covered"]
    assert list(result.table["kind"]) == ["ensemble", "model", "model", "run", "run", "run"]
    # convnext: A alone, 1/3. vit, B and D equal weights: x1 D wrong, x2 B right, x3 B right,
    # x4 (0.4 + 0.2)/2 cat -> dog right: 3/4.
    assert table.loc["convnext", "accuracy"] == pytest.approx(1 / 3) and table.loc["convnext", "covered"] == 3
    assert table.loc["vit", "accuracy"] == 0.75 and table.loc["vit", "covered"] == 4
    assert table.loc["A", "accuracy"] == pytest.approx(1 / 3)
    assert table.loc["B", "accuracy"] == 1.0 and table.loc["D", "accuracy"] == 0.5
    assert table.loc["ensemble", "weight"] == pytest.approx(5 / 8) and table.loc["B", "weight"] == 1 / 8
    assert "C" not in table.index


def test_out_of_bag_without_validation_predictions_is_empty():
    result = out_of_bag([run("a", "m", ["t"], [[1, 0]])], {"a": 1.0})
    assert result.covered == 0 and np.isnan(result.accuracy) and result.table.empty


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
