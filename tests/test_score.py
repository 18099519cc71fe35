"""score_submission: accuracy by id, per-class figures, and one-line errors naming the culprit."""

import pytest

from ledger.errors import LedgerError
from ledger.score import score_submission


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
