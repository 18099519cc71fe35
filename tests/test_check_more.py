"""Issue 31, item 4: `ledger check` (and every command that loads the spec) catches what otherwise
fails after training, or never, in one line naming the file or key; a few things are only
suspicious and are printed as warnings. Each case edits a private copy of the tiny competition."""

import shutil

import pandas as pd
import pytest
from conftest import write_spec
from hostile_common import ONE_RUN, invoke, one_error_line


@pytest.fixture
def data(tmp_path, tiny_competition, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "data"
    shutil.copytree(tiny_competition, copy)
    return copy


def _spec(tmp_path, data, extra="", name="tiny.yaml", models=ONE_RUN):
    return write_spec(tmp_path / name, data, models, extra)


def _check(spec):
    return invoke("check", spec)


def _edit_csv(path, change):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame).to_csv(path, index=False)


def test_a_sample_submission_without_rows_or_with_an_id_twice(tmp_path, data):
    sample = data / "sample_submission.csv"
    _edit_csv(sample, lambda f: pd.concat([f, f.iloc[:1]]))
    line = one_error_line(_check(_spec(tmp_path, data)))
    assert str(sample) in line and "listed twice" in line
    _edit_csv(sample, lambda f: f.iloc[:0])
    line = one_error_line(_check(_spec(tmp_path, data)))
    assert str(sample) in line and "no rows" in line


def test_a_probability_column_for_a_class_train_does_not_have(tmp_path, data):
    train = pd.read_csv(data / "train.csv", dtype=str)
    classes = sorted(train["label"].unique())
    sample = data / "sample_submission.csv"
    _edit_csv(sample, lambda f: pd.DataFrame({"image_id": f["image_id"], **{c: "0.1" for c in classes + ["Unicorn"]}}))
    line = one_error_line(_check(_spec(tmp_path, data, "metric: log_loss\n")))
    assert str(sample) in line and "Unicorn" in line and "no class" in line


def test_labels_that_differ_only_by_spaces_or_number_format_are_a_warning(tmp_path, data):
    _edit_csv(data / "train.csv", lambda f: f.assign(label=[(v + " " if i % 2 else v) if v == "Trouser" else v
                                                            for i, v in enumerate(f["label"])]))
    result = _check(_spec(tmp_path, data))
    assert result.exit_code == 0, result.output
    assert "warning: classes 'Trouser', 'Trouser ' differ only by spaces" in result.stderr
    assert "the classes: " in result.stderr


def test_a_group_column_with_one_group_or_empty_values(tmp_path, data):
    split = "split: {folds: 2, group: group}\n"
    _edit_csv(data / "train.csv", lambda f: f.assign(group="all"))
    line = one_error_line(_check(_spec(tmp_path, data, split)))
    assert "split.group" in line and "1 group(s)" in line
    _edit_csv(data / "train.csv", lambda f: f.assign(group=["", *["g%d" % (i % 3) for i in range(len(f) - 1)]]))
    line = one_error_line(_check(_spec(tmp_path, data, split)))
    assert "split.group" in line and "empty for 1 image(s)" in line


def test_an_id_that_matches_two_image_files(tmp_path, data):
    sample = data / "sample_submission.csv"
    first = pd.read_csv(sample, dtype=str)["image_id"][0]
    shutil.copyfile(data / "test_images" / first, data / "test_images" / first.replace(".png", ".jpg"))
    _edit_csv(sample, lambda f: f.assign(image_id=[i.removesuffix(".png") if i == first else i for i in f["image_id"]]))
    line = one_error_line(_check(_spec(tmp_path, data)))
    assert repr(first.removesuffix(".png")) in line and "matches 2 image files" in line


def test_folds_beyond_the_smallest_class_are_a_warning(tmp_path, data):
    result = _check(_spec(tmp_path, data, "split: {folds: 8}\n"))  # 6 images a class
    assert result.exit_code == 0, result.output
    assert "warning: split.folds 8, but class" in result.stderr and "has 6 image(s)" in result.stderr


@pytest.mark.parametrize("extra, key", [
    ("tta: {n: 2, size: 0.1}\n", "tta.size"),  # 32 px entries: 3.2 px
    (f"split: {{valid_pct: 0.2, seed: {2**63 - 1}}}\n", "split.seed"),
    ("train: {batch_size: 8, epochs: 1, lr: 0}\n", "train.lr"),
])
def test_values_that_fail_only_later_are_refused_with_their_key(tmp_path, data, extra, key):
    spec = _spec(tmp_path, data)
    text = spec.read_text()
    section = extra.split(":")[0]
    text = "\n".join(line for line in text.splitlines() if not line.startswith(section + ":")) + "\n" + extra
    spec.write_text(text)
    line = one_error_line(_check(spec))
    assert str(spec) in line and key in line


def test_pseudo_label_teachers_in_a_cycle(tmp_path, data):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    split = "split: {valid_pct: 0.2, seed: 3}\n"
    _spec(tmp_path, data, split + f"pseudo: {{teacher: {b}}}\n", name="a.yaml")
    _spec(tmp_path, data, split + f"pseudo: {{teacher: {a}}}\n", name="b.yaml")
    line = one_error_line(_check(a))
    assert "cycle" in line and "a.yaml -> b.yaml -> a.yaml" in line


def test_a_zero_budget_and_a_numbered_cpu(tmp_path, data):
    spec = _spec(tmp_path, data)
    line = one_error_line(invoke("probe-memory", spec, "--budget", "0", "--home", tmp_path / "home"))
    assert "--budget" in line and "holds nothing" in line
    line = one_error_line(invoke("train", spec, "--device", "cpu:1", "--home", tmp_path / "home"))
    assert "--device cpu:1" in line
