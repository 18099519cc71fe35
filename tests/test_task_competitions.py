"""The multi-label and regression competitions drawn from the embedded Fashion-MNIST: their files,
targets that say what the images hold, the same bytes for a seed, and no test item seen in training."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from ledger.cli import app
from ledger.data import task_competitions as tasks
from ledger.data.task_competitions import (GRADES, SIZE_ITEM_SIDES, TAGS, grade_of, write_size_competition,
                                           write_tags_competition)
from ledger.errors import LedgerError

SMALL = dict(train=60, test=20)
CSVS = ("train.csv", "sample_submission.csv", "solution.csv")


def _read(path):
    return pd.read_csv(path, keep_default_na=False)  # an empty tags cell stays "", not NaN


def _folder_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    out = tmp_path_factory.mktemp("tags") / "competition"
    return out, write_tags_competition(out, seed=3, **SMALL)


@pytest.fixture(scope="module")
def size(tmp_path_factory):
    out = tmp_path_factory.mktemp("size") / "competition"
    return out, write_size_competition(out, seed=3, **SMALL)


def test_the_tags_folder_is_laid_out_like_planet(tags):
    out, summary = tags
    train, sample, solution = (_read(out / name) for name in CSVS)
    assert list(train.columns) == list(solution.columns) == list(sample.columns) == ["image_id", "tags"]
    assert len(train) == 60 and len(solution) == 20
    assert sorted(p.name for p in (out / "train_images").iterdir()) == sorted(train.image_id)
    assert sorted(p.name for p in (out / "test_images").iterdir()) == sorted(solution.image_id)
    assert list(sample.image_id) == list(solution.image_id) != sorted(solution.image_id)  # shuffled, same order
    assert set(sample.tags) == {tasks.PLACEHOLDER_TAGS}
    assert not set(train.image_id) & set(solution.image_id)
    image = Image.open(out / "train_images" / train.image_id[0])
    assert image.mode == "RGB" and image.size == (tasks.TAGS_CANVAS, tasks.TAGS_CANVAS)
    assert summary["train_images"] == 60 and summary["test_images"] == 20


def test_tags_are_sorted_distinct_class_words_and_a_tenth_of_images_have_none(tags):
    out, _ = tags
    cells = list(_read(out / "train.csv").tags) + list(_read(out / "solution.csv").tags)
    for cell in cells:
        words = cell.split()
        assert words == sorted(set(words)) and set(words) <= set(TAGS) and len(words) <= 3, cell
    assert sum(cell == "" for cell in cells) == round(0.1 * 60) + round(0.1 * 20)
    assert {len(cell.split()) for cell in cells} == {0, 1, 2, 3}
    assert all(" " not in tag and tag.islower() for tag in TAGS) and len(TAGS) == 10


def test_tags_are_the_classes_of_the_pasted_items_and_test_items_never_come_from_training(tags):
    out, summary = tags
    items = summary["items"]
    for name, split in (("train.csv", "train"), ("solution.csv", "t10k")):
        table = _read(out / name)
        assert set(items[items.image_id.isin(table.image_id)].split) == {split}
        pasted = items.groupby("image_id").tag.apply(lambda tags: " ".join(sorted(tags)))
        assert all(pasted.get(image_id, "") == cell for image_id, cell in zip(table.image_id, table.tags))
    # No source image twice: an item is in one scene of one split only.
    assert not items.duplicated(["split", "row"]).any()


def test_the_columns_layout_holds_the_same_images_and_the_same_information(tags, tmp_path):
    out, _ = tags
    columns = tmp_path / "columns"
    write_tags_competition(columns, seed=3, layout="columns", **SMALL)
    assert {k: v for k, v in _folder_bytes(out).items() if k.endswith(".png")} == \
           {k: v for k, v in _folder_bytes(columns).items() if k.endswith(".png")}
    for name in ("train.csv", "solution.csv"):
        words, flags = _read(out / name), _read(columns / name)
        assert list(flags.columns) == ["image_id", *TAGS] and list(flags.image_id) == list(words.image_id)
        assert set(np.unique(flags[list(TAGS)])) <= {0, 1}
        as_words = [" ".join(sorted(tag for tag in TAGS if row[tag])) for _, row in flags.iterrows()]
        assert as_words == list(words.tags)
    sample = _read(columns / "sample_submission.csv")
    assert list(sample.columns) == ["image_id", *TAGS] and (sample[list(TAGS)] == 0.5).all().all()


def test_the_size_folder_has_one_float_column_in_range(size):
    out, summary = size
    train, sample, solution = (_read(out / name) for name in CSVS)
    assert list(train.columns) == list(sample.columns) == list(solution.columns) == ["image_id", "size"]
    low, high = SIZE_ITEM_SIDES
    for table in (train, solution):
        assert table["size"].between(low, high).all() and table["size"].nunique() > len(table) // 2
    assert (sample["size"] == 0.0).all() and list(sample.image_id) == list(solution.image_id)
    items = summary["items"]
    assert items.groupby("image_id").size().eq(1).all()  # one item per image
    assert set(items[items.image_id.isin(train.image_id)].split) == {"train"}
    assert set(items[items.image_id.isin(solution.image_id)].split) == {"t10k"}
    assert dict(zip(items.image_id, items.side)) == {**dict(zip(train.image_id, train["size"])),
                                                     **dict(zip(solution.image_id, solution["size"]))}


def test_the_size_is_what_the_image_shows(size):
    # The pixels that stand out from the background span about `size` pixels along the item's longest edge.
    out, _ = size
    train = _read(out / "train.csv")
    errors = []
    for image_id, side in zip(train.image_id, train["size"]):
        pixels = np.asarray(Image.open(out / "train_images" / image_id), dtype=float)
        background = np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]), axis=0)
        differs = np.abs(pixels - background).max(axis=2) > 60
        rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
        extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 if len(rows) else 0
        assert extent <= side + 2
        errors.append(extent - side)
    assert abs(np.median(errors)) <= 1.5  # a faint edge of an item can fall under the threshold


def test_grades_are_the_size_in_five_bins(tmp_path, size):
    out, _ = size
    graded = tmp_path / "graded"
    write_size_competition(graded, seed=3, grades=True, **SMALL)
    for name in ("train.csv", "solution.csv"):
        sizes, grades = _read(out / name), _read(graded / name)
        assert list(grades.columns) == ["image_id", "grade"]
        assert grades.grade.between(0, GRADES - 1).all()
        assert list(grades.grade) == list(grade_of(sizes["size"]))
    assert list(grade_of([12.0, 16.79, 16.81, 35.99, 36.0])) == [0, 0, 1, 4, 4]


@pytest.mark.parametrize("write", [write_tags_competition, write_size_competition])
def test_a_seed_gives_the_same_bytes_and_another_seed_other_ones(write, tmp_path):
    write(tmp_path / "a", seed=5, train=12, test=6)
    write(tmp_path / "b", seed=5, train=12, test=6)
    write(tmp_path / "c", seed=6, train=12, test=6)
    assert _folder_bytes(tmp_path / "a") == _folder_bytes(tmp_path / "b")
    assert _folder_bytes(tmp_path / "a") != _folder_bytes(tmp_path / "c")


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(LedgerError, match="--test 1200: its images hold 2160 items .* at most 1111$"):
        write_tags_competition(out, train=10, test=1200)
    with pytest.raises(LedgerError, match="--test 2001: the embedded set has only 2000"):
        write_size_competition(out, train=10, test=2001)
    with pytest.raises(LedgerError, match="--train must be at least 1"):
        write_size_competition(out, train=0)
    with pytest.raises(LedgerError, match="--layout must be one of tags, columns"):
        write_tags_competition(out, layout="rows", **SMALL)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_commands_write_and_refuse_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "fashion-tags", str(tmp_path / "t"), "--train", "8", "--test", "4",
                                 "--layout", "columns"])
    assert result.exit_code == 0, result.output
    assert list(_read(tmp_path / "t" / "train.csv").columns) == ["image_id", *TAGS]
    result = runner.invoke(app, ["data", "fashion-size", str(tmp_path / "s"), "--train", "8", "--test", "4",
                                 "--grades"])
    assert result.exit_code == 0, result.output
    assert list(_read(tmp_path / "s" / "solution.csv").columns) == ["image_id", "grade"]

    result = runner.invoke(app, ["data", "fashion-size", str(tmp_path / "s"), "--train", "8", "--test", "4"])
    assert result.exit_code == 1 and "--force" in result.output and len(result.output.strip().splitlines()) == 1
    assert runner.invoke(app, ["data", "fashion-size", str(tmp_path / "s"), "--train", "8", "--test", "4",
                               "--force"]).exit_code == 0
    result = runner.invoke(app, ["data", "fashion-tags", str(tmp_path / "x"), "--test", "5000"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "--test 5000" in lines[0]
    assert not (tmp_path / "x").exists()
