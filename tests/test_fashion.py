"""The embedded Fashion-MNIST competition: IDX reading and the folder write_competition builds."""

import gzip
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ledger.data import fashion_mnist as fashion
from ledger.errors import LedgerError
from ledger.data.fashion_mnist import CLASS_NAMES, GROUPS, read_idx, write_competition

SMALL = dict(train_per_class=5, test=20)


def _write_idx(path, array, type_code=0x08):
    header = struct.pack(">HBB", 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)


def _csvs(folder):
    return {name: (folder / name).read_bytes() for name in ("train.csv", "sample_submission.csv", "solution.csv")}


@pytest.mark.parametrize("name", ["tiny.gz", "tiny"])
def test_read_idx_round_trip(tmp_path, name):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / name, images)
    assert np.array_equal(read_idx(tmp_path / name), images)
    assert read_idx(tmp_path / name).shape == (2, 3, 4)


def test_read_idx_wider_types_come_back_native(tmp_path):
    values = np.array([1, -2, 70000], dtype=np.int32)
    _write_idx(tmp_path / "ints.gz", values, type_code=0x0C)
    assert read_idx(tmp_path / "ints.gz").tolist() == [1, -2, 70000]


def test_read_idx_errors_name_the_file(tmp_path):
    with pytest.raises(LedgerError, match="nothing.gz: file not found"):
        read_idx(tmp_path / "nothing.gz")
    (tmp_path / "garbage.gz").write_bytes(b"not gzip at all")
    with pytest.raises(LedgerError, match="garbage.gz"):
        read_idx(tmp_path / "garbage.gz")
    _write_idx(tmp_path / "short.gz", np.zeros((2, 2), np.uint8))
    truncated = gzip.decompress((tmp_path / "short.gz").read_bytes())[:-1]
    (tmp_path / "short.gz").write_bytes(gzip.compress(truncated))
    with pytest.raises(LedgerError, match="short.gz: corrupt"):
        read_idx(tmp_path / "short.gz")


def test_embedded_subset_is_what_the_readme_says():
    assert np.bincount(read_idx(fashion.EMBEDDED_SOURCE / "train-labels-idx1-ubyte.gz")).tolist() == [1000] * 10
    assert read_idx(fashion.EMBEDDED_SOURCE / "t10k-images-idx3-ubyte.gz").shape == (2000, 28, 28)


def test_groups_cover_every_class():
    assert set(GROUPS) == set(CLASS_NAMES) and len(CLASS_NAMES) == 10
    assert set(GROUPS.values()) == {"top", "bottom", "footwear", "bag"}
    assert GROUPS["Dress"] == "top" and GROUPS["Trouser"] == "bottom"


def test_competition_layout_and_counts(tmp_path):
    out = tmp_path / "comp"
    summary = write_competition(out, **SMALL)
    assert summary["train_images"] == 50 and summary["test_images"] == 20

    train = pd.read_csv(out / "train.csv", dtype=str)
    assert list(train.columns) == ["image_id", "label", "group"]
    assert train.label.value_counts().to_dict() == {name: 5 for name in CLASS_NAMES}
    assert (train.group == train.label.map(GROUPS)).all()
    assert train.image_id.str.fullmatch(r"[1-9]\d{5}\.png").all()
    # Every train.csv row is a PNG in its label's folder, and no other files are there.
    on_disk = sorted(str(p.relative_to(out / "train_images")) for p in (out / "train_images").rglob("*.png"))
    assert on_disk == sorted(f"{label}/{image_id}" for label, image_id in zip(train.label, train.image_id))

    sample = pd.read_csv(out / "sample_submission.csv", dtype=str)
    solution = pd.read_csv(out / "solution.csv", dtype=str)
    assert list(sample.columns) == list(solution.columns) == ["image_id", "label"]
    assert sample.image_id.tolist() == solution.image_id.tolist()
    assert sample.image_id.tolist() != sorted(sample.image_id)  # shuffled, so order bugs show
    assert sample.label.isin(CLASS_NAMES).all() and solution.label.isin(CLASS_NAMES).all()
    assert sorted(p.name for p in (out / "test_images").iterdir()) == sorted(solution.image_id)
    assert not set(train.image_id) & set(solution.image_id)

    image = Image.open(out / "test_images" / solution.image_id[0])
    assert image.size == (28, 28) and image.mode == "L"
    # No leftover temporary folders beside the result.
    assert [p.name for p in tmp_path.iterdir()] == ["comp"]


def _label_by_pixels(prefix):
    images = read_idx(fashion.EMBEDDED_SOURCE / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(fashion.EMBEDDED_SOURCE / f"{prefix}-labels-idx1-ubyte.gz")
    return {image.tobytes(): CLASS_NAMES[label] for image, label in zip(images, labels)}


def test_images_match_their_labels(tmp_path):
    """Each PNG is a source image whose true label is the one its CSV (and folder) gives."""
    out = tmp_path / "comp"
    write_competition(out, **SMALL)
    test_lookup, train_lookup = _label_by_pixels("t10k"), _label_by_pixels("train")
    solution = pd.read_csv(out / "solution.csv", dtype=str)
    for image_id, label in zip(solution.image_id, solution.label):
        assert test_lookup[np.asarray(Image.open(out / "test_images" / image_id)).tobytes()] == label
    train = pd.read_csv(out / "train.csv", dtype=str)
    for image_id, label in zip(train.image_id, train.label):
        assert train_lookup[np.asarray(Image.open(out / "train_images" / label / image_id)).tobytes()] == label


def test_same_seed_same_csvs_other_seed_different(tmp_path):
    write_competition(tmp_path / "a", seed=3, **SMALL)
    write_competition(tmp_path / "b", seed=3, **SMALL)
    write_competition(tmp_path / "c", seed=4, **SMALL)
    assert _csvs(tmp_path / "a") == _csvs(tmp_path / "b")
    different = _csvs(tmp_path / "c")
    assert all(different[name] != content for name, content in _csvs(tmp_path / "a").items())


def test_non_empty_folder_refused_unless_force(tmp_path):
    out = tmp_path / "comp"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(LedgerError, match="exists and is not empty; pass --force"):
        write_competition(out, **SMALL)
    assert (out / "keep.txt").read_text() == "precious"

    with pytest.raises(LedgerError, match="not a competition written by `ledger data`"):
        write_competition(out, force=True, **SMALL)  # --force replaces only a competition ledger wrote
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    (out / "keep.txt").unlink()
    write_competition(out, **SMALL)
    write_competition(out, force=True, seed=5, **SMALL)
    assert (out / "train.csv").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["comp"]


def test_empty_folder_is_used_without_force(tmp_path):
    (tmp_path / "comp").mkdir()
    write_competition(tmp_path / "comp", **SMALL)
    assert (tmp_path / "comp" / "solution.csv").is_file()


def test_too_many_images_refused_naming_the_option(tmp_path):
    with pytest.raises(LedgerError, match="--train-per-class 1001"):
        write_competition(tmp_path / "comp", train_per_class=1001, test=20)
    with pytest.raises(LedgerError, match="--test 2001"):
        write_competition(tmp_path / "comp", train_per_class=5, test=2001)
    assert not (tmp_path / "comp").exists()


def test_full_without_debian_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "DEBIAN_SOURCE", tmp_path / "absent")
    with pytest.raises(LedgerError, match="absent: not found; --full needs"):
        write_competition(tmp_path / "comp", full=True, **SMALL)


def test_failure_midway_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "comp"
    write_competition(out, seed=1, **SMALL)
    before = _csvs(out)

    def broken_save(path, image):
        raise OSError("disk full")

    monkeypatch.setattr(fashion, "_save_png", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_competition(out, seed=2, force=True, **SMALL)
    assert _csvs(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["comp"]
