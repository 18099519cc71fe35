"""score_submission: accuracy by id, per-class figures, and one-line errors naming the culprit."""

import math

import pytest

from ledger.errors import LedgerError
from ledger.bag.score import score_submission


def _csv(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def solution(tmp_path):
    return _csv(tmp_path / "solution.csv", "image_id,label\na.png,Bag\nb.png,Bag\nc.png,Coat\nd.png,Bag\ne.png,Dress\n")


def test_accuracy_and_per_class(tmp_path, solution):
    # Rows in another order and an extra column: matching is by id, extra columns are ignored.
    submission = _csv(
        tmp_path / "sub.csv",
        "image_id,label,note\ne.png,Coat,x\nd.png,Bag,x\nc.png,Coat,x\nb.png,Coat,x\na.png,Bag,x\n",
    )
    report = score_submission(submission, solution)
    assert report.n == 5
    assert report.accuracy == pytest.approx(3 / 5)
    assert report.per_class.columns.tolist() == ["label", "n", "correct", "accuracy"]
    assert report.per_class.label.tolist() == ["Bag", "Coat", "Dress"]
    assert report.per_class.n.tolist() == [3, 1, 1]
    assert report.per_class.correct.tolist() == [2, 1, 0]
    assert report.per_class.accuracy.tolist() == pytest.approx([2 / 3, 1.0, 0.0])


def test_ids_kept_as_text(tmp_path):
    solution = _csv(tmp_path / "solution.csv", "id,label\n007,NA\n7,x\n")
    submission = _csv(tmp_path / "sub.csv", "id,label\n7,x\n007,NA\n")
    assert score_submission(submission, solution).accuracy == 1.0


def test_ids_missing_either_way_are_named(tmp_path, solution):
    submission = _csv(tmp_path / "sub.csv", "image_id,label\na.png,Bag\nb.png,Bag\nc.png,Coat\nz.png,Bag\n")
    with pytest.raises(LedgerError) as caught:
        score_submission(submission, solution)
    message = str(caught.value)
    assert f"1 ids in {submission} are not in {solution} (e.g. z.png)" in message
    assert f"2 ids in {solution} are not in {submission} (e.g. d.png, e.png)" in message
    assert "\n" not in message


def test_at_most_five_ids_named(tmp_path, solution):
    rows = "".join(f"x{i}.png,Bag\n" for i in range(8))
    submission = _csv(tmp_path / "sub.csv", "image_id,label\n" + rows)
    named = r"\(e\.g\. x0\.png, x1\.png, x2\.png, x3\.png, x4\.png\)"
    with pytest.raises(LedgerError, match=r"8 ids in .* are not in .* " + named):
        score_submission(submission, solution)


def test_duplicate_ids_named(tmp_path, solution):
    submission = _csv(tmp_path / "sub.csv", "image_id,label\na.png,Bag\na.png,Coat\nb.png,Bag\n")
    with pytest.raises(LedgerError, match=r"sub\.csv: 1 duplicate ids in column 'image_id' \(e\.g\. a\.png\)"):
        score_submission(submission, solution)


def test_missing_column_names_column_and_file(tmp_path, solution):
    submission = _csv(tmp_path / "sub.csv", "image_id,prediction\na.png,Bag\n")
    with pytest.raises(LedgerError, match=r"sub\.csv: no column 'label'"):
        score_submission(submission, solution)


def test_missing_file_named(tmp_path, solution):
    with pytest.raises(LedgerError, match=r"nope\.csv: file not found"):
        score_submission(tmp_path / "nope.csv", solution)
    with pytest.raises(LedgerError, match=r"gone\.csv: file not found"):
        score_submission(solution, tmp_path / "gone.csv")


def test_unreadable_file_named(tmp_path, solution):
    empty = _csv(tmp_path / "empty.csv", "")
    with pytest.raises(LedgerError, match=r"empty\.csv: cannot read as CSV"):
        score_submission(empty, solution)


# ---------------------------------------------------------------- other metrics and probability submissions


def test_f1_of_a_label_submission(tmp_path, solution):
    # Truth Bag Bag Coat Bag Dress; submitted Bag Coat Coat Bag Coat (a..e).
    submission = _csv(tmp_path / "sub.csv", "image_id,label\na.png,Bag\nb.png,Coat\nc.png,Coat\nd.png,Bag\ne.png,Coat\n")
    report = score_submission(submission, solution, "f1_macro")
    # Bag: TP 2, FP 0, FN 1 -> F1 4/5.  Coat: TP 1, FP 2, FN 0 -> 1/2.  Dress: TP 0 -> 0.  Macro 13/30.
    assert (report.metric, report.shape) == ("f1_macro", "label")
    assert report.score == pytest.approx((4 / 5 + 1 / 2 + 0) / 3) and report.accuracy == pytest.approx(3 / 5)


PER_CLASS = "image_id,Bag,Coat,Dress\na.png,0.5,0.25,0.25\nb.png,0.2,0.8,0\nc.png,0.8,0.1,0.1\nd.png,0.5,0.5,0\n"


def test_log_loss_of_one_probability_column_per_class(tmp_path):
    solution = _csv(tmp_path / "solution.csv", "image_id,label\nd.png,Dress\nb.png,Coat\na.png,Bag\nc.png,Bag\n")
    submission = _csv(tmp_path / "sub.csv", PER_CLASS)
    report = score_submission(submission, solution)  # probabilities: log_loss by default
    # -ln 0.5 (a), -ln 0.8 (b), -ln 0.8 (c), and d's Dress 0 clipped to 2^-52: 52 ln 2.
    assert (report.metric, report.shape) == ("log_loss", "per_class")
    assert report.score == pytest.approx((53 * math.log(2) + 2 * math.log(1.25)) / 4, rel=1e-12)
    # argmax: a Bag, b Coat, c Bag right; d ties Bag and Coat at 0.5, the first (Bag) wins: wrong.
    assert report.accuracy == pytest.approx(3 / 4)


def test_auc_and_log_loss_of_a_positive_class_column(tmp_path):
    solution = _csv(tmp_path / "solution.csv", "id,label\n1,cat\n2,dog\n3,dog\n4,cat\n")
    dog = _csv(tmp_path / "dog.csv", "id,label\n1,0.2\n2,0.7\n3,0.4\n4,0.6\n")  # P(dog), the second class
    # Pairs (cat, dog): 0.2 < 0.7, 0.2 < 0.4, 0.6 < 0.7 ranked right, 0.6 > 0.4 wrong: 3/4.
    assert score_submission(dog, solution, "roc_auc").score == pytest.approx(0.75)
    report = score_submission(dog, solution)
    assert (report.metric, report.shape) == ("log_loss", "positive")
    assert report.score == pytest.approx(-(math.log(0.8) + math.log(0.7) + 2 * math.log(0.4)) / 4)
    assert report.accuracy == pytest.approx(2 / 4)  # argmax cat dog cat dog against cat dog dog cat
    # A column named as a class holds that class's probability.
    cat = _csv(tmp_path / "cat.csv", "id,cat\n1,0.8\n2,0.3\n3,0.6\n4,0.4\n")
    assert score_submission(cat, solution, "roc_auc").score == pytest.approx(0.75)
    assert score_submission(cat, solution).score == pytest.approx(report.score)


@pytest.mark.parametrize("text, metric, message", [
    ("image_id,label\na.png,Bag\n", "log_loss", "holds labels in 'label'; metric log_loss scores probabilities"),
    (PER_CLASS, "accuracy", "holds probabilities; metric accuracy scores labels"),
    (PER_CLASS.replace("0.5,0.25,0.25", "0.5,0.5,0.25"), None, "the probabilities of id a.png sum to 1.25, not 1"),
    (PER_CLASS.replace("0.8,0.1,0.1", "high,0.1,0.1"), None, "id c.png: Bag is 'high', not a probability in [0, 1]"),
    ("image_id,label\na.png,Bag\n", "auc", "unknown metric 'auc'; choices: accuracy"),
])
def test_a_submission_the_metric_cannot_score_is_one_line(tmp_path, text, metric, message):
    solution = _csv(tmp_path / "solution.csv", "image_id,label\na.png,Bag\nb.png,Coat\nc.png,Bag\nd.png,Dress\n")
    rows = text if text.count("\n") > 2 else text + "b.png,Coat\nc.png,Bag\nd.png,Dress\n"
    submission = _csv(tmp_path / "sub.csv", rows)
    with pytest.raises(LedgerError) as caught:
        score_submission(submission, solution, metric)
    assert message in str(caught.value) and "\n" not in str(caught.value)
