"""Competition folders -> ids, labels, vocab; splits; the smallest class; decoded images and their cache.

Every competition here is built by hand in tmp_path from a few tiny PNG/JPEG files, so each test
says exactly which layout it checks. Errors are one line naming the file or folder at fault.
"""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ledger.data.images
from ledger.data.competition import load_competition
from ledger.data.images import decode_image, load_images
from ledger.data.splits import fold_indices, smallest_class_indices, split_indices
from ledger.errors import LedgerError
from ledger.spec.loader import DataSpec


def _image(path: Path, size=(12, 10), color=(200, 30, 30)) -> Path:
    """A solid-colour image; size is (width, height) as PIL takes it; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _sample_submission(root: Path, ids: list[str]) -> Path:
    return _csv(root / "sample_submission.csv", "image_id,label\n" + "".join(f"{i},x\n" for i in ids))


TEST_IDS = ["t3.png", "t1.png", "t2.png"]  # deliberately not sorted


def _folder_competition(root: Path, classes: dict[str, list[str]] | None = None) -> Path:
    """train_images/<label>/<id>, test_images/<id>, sample_submission.csv (labels from folders)."""
    classes = classes or {"dog": ["d1.png", "d2.jpg"], "cat": ["c1.png", "c2.png", "c3.png"], "ant": ["a1.png"]}
    for label, ids in classes.items():
        for image_id in ids:
            _image(root / "train_images" / label / image_id)
    for image_id in TEST_IDS:
        _image(root / "test_images" / image_id)
    _sample_submission(root, TEST_IDS)
    return root


def _csv_competition(root: Path, with_extension: bool, nested: bool = False) -> Path:
    """Images flat in train_images (or in class subfolders, as Paddy ships them) and labels in train.csv."""
    rows = [("img_b.png", "zebra"), ("img_a.jpg", "horse"), ("img_c.png", "zebra"), ("img_d.png", "horse")]
    for image_id, label in rows:
        _image(root / "train_images" / (label if nested else "") / image_id)
    shown = [(image_id if with_extension else Path(image_id).stem, label) for image_id, label in rows]
    _csv(root / "train.csv", "image_id,label,group\n" + "".join(f"{i},{label},g\n" for i, label in shown))
    for image_id in TEST_IDS:
        _image(root / "test_images" / image_id)
    _sample_submission(root, TEST_IDS)
    return root


# ---------------------------------------------------------------- load_competition


def test_labels_from_class_folders(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    comp = load_competition(DataSpec(root=root))
    assert comp.root == root
    assert comp.vocab == ("ant", "cat", "dog")  # sorted
    assert comp.train_ids == ("a1.png", "c1.png", "c2.png", "c3.png", "d1.png", "d2.jpg")
    assert comp.train_paths[0] == root / "train_images" / "ant" / "a1.png"
    assert all(p.is_file() for p in comp.train_paths)
    assert comp.train_labels.dtype == np.int64
    assert comp.train_labels.tolist() == [0, 1, 1, 1, 2, 2]
    for path, label in zip(comp.train_paths, comp.train_labels):
        assert path.parent.name == comp.vocab[label]
    assert comp.sample_submission == root / "sample_submission.csv"


def test_test_ids_follow_the_sample_submission_order(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    comp = load_competition(DataSpec(root=root))
    assert comp.test_ids == tuple(TEST_IDS)
    assert comp.test_paths == tuple(root / "test_images" / i for i in TEST_IDS)


def test_non_image_files_in_class_folders_are_ignored(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    (root / "train_images" / "cat" / "notes.txt").write_text("not an image")
    (root / "train_images" / "cat" / ".DS_Store").write_bytes(b"\0")
    comp = load_competition(DataSpec(root=root))
    assert len(comp.train_ids) == 6


@pytest.mark.parametrize("with_extension", [True, False], ids=["ids-with-extension", "ids-without-extension"])
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "in-class-folders"])
def test_labels_from_csv(tmp_path, with_extension, nested):
    root = _csv_competition(tmp_path / "comp", with_extension=with_extension, nested=nested)
    comp = load_competition(DataSpec(root=root, labels="train.csv"))
    assert comp.vocab == ("horse", "zebra")
    # Ids as the CSV writes them, in CSV order.
    stems = ["img_b", "img_a", "img_c", "img_d"]
    assert comp.train_ids == tuple(f"{s}{'.jpg' if s == 'img_a' else '.png'}" if with_extension else s for s in stems)
    assert [p.name for p in comp.train_paths] == ["img_b.png", "img_a.jpg", "img_c.png", "img_d.png"]
    assert all(p.is_file() for p in comp.train_paths)
    assert comp.train_labels.tolist() == [1, 0, 1, 0]
    assert comp.test_ids == tuple(TEST_IDS)


def test_csv_with_other_column_names_and_folders(tmp_path):
    root = tmp_path / "comp"
    _image(root / "train" / "x.png")
    _image(root / "train" / "y.png")
    _csv(root / "labels.csv", "file,disease\ny,blast\nx,normal\n")
    _image(root / "test" / "q.png")
    _csv(root / "sub.csv", "file,disease\nq,normal\n")
    data = DataSpec(root=root, labels="labels.csv", id_col="file", label_col="disease",
                    train_dir="train", test_dir="test", sample_submission="sub.csv")
    comp = load_competition(data)
    assert comp.vocab == ("blast", "normal")
    assert comp.train_ids == ("y", "x")
    assert comp.train_labels.tolist() == [0, 1]
    assert comp.test_ids == ("q",)
    assert comp.test_paths == (root / "test" / "q.png",)


def _one_line_error(data: DataSpec) -> str:
    with pytest.raises(LedgerError) as caught:
        load_competition(data)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_data_root(tmp_path):
    root = tmp_path / "nowhere"
    message = _one_line_error(DataSpec(root=root))
    assert message.startswith(f"{root}: ")
    assert "data.root" in message


@pytest.mark.parametrize("folder", ["train_images", "test_images"])
def test_missing_train_or_test_folder(tmp_path, folder):
    root = _folder_competition(tmp_path / "comp")
    (root / folder).rename(root / f"{folder}-moved")
    assert _one_line_error(DataSpec(root=root)).startswith(f"{root / folder}: folder not found")


def test_no_class_folders(tmp_path):
    root = _csv_competition(tmp_path / "comp", with_extension=True)  # images flat, labels: folders
    message = _one_line_error(DataSpec(root=root))
    assert message.startswith(f"{root / 'train_images'}: no class folders")


def test_class_folder_with_no_images(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    empty = root / "train_images" / "eel"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    message = _one_line_error(DataSpec(root=root))
    assert message.startswith(f"{empty}: ")
    assert "'eel' has no images" in message


def test_missing_labels_csv(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    message = _one_line_error(DataSpec(root=root, labels="train.csv"))
    assert message == f"{root / 'train.csv'}: file not found"


def test_missing_sample_submission(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    (root / "sample_submission.csv").unlink()
    assert _one_line_error(DataSpec(root=root)) == f"{root / 'sample_submission.csv'}: file not found"


def test_csv_id_with_no_image(tmp_path):
    root = _csv_competition(tmp_path / "comp", with_extension=False)
    with open(root / "train.csv", "a") as f:
        f.write("ghost_17,zebra\n")
    message = _one_line_error(DataSpec(root=root, labels="train.csv"))
    assert message.startswith(f"{root / 'train.csv'}: 1 id(s) with no image")
    assert "ghost_17" in message


@pytest.mark.parametrize("column", ["image_id", "label"])
def test_csv_missing_column(tmp_path, column):
    root = _csv_competition(tmp_path / "comp", with_extension=True)
    other = "label" if column == "image_id" else "image_id"
    _csv(root / "train.csv", f"{other},group\nimg_a.jpg,g\n")
    message = _one_line_error(DataSpec(root=root, labels="train.csv"))
    assert message.startswith(f"{root / 'train.csv'}: missing column '{column}'")


def test_csv_row_with_empty_label(tmp_path):
    root = _csv_competition(tmp_path / "comp", with_extension=True)
    _csv(root / "train.csv", "image_id,label\nimg_a.jpg,horse\nimg_b.png,\n")
    message = _one_line_error(DataSpec(root=root, labels="train.csv"))
    assert message.startswith(f"{root / 'train.csv'}: 1 row(s) with a missing 'label' (empty, NaN, null or N/A)")
    assert "img_b.png" in message


@pytest.mark.parametrize("missing", ["NaN", "nan", "null", "N/A", "NA", "None", " #N/A"])
def test_csv_labels_that_mean_missing_are_never_classes(tmp_path, missing):
    root = _csv_competition(tmp_path / "comp", with_extension=True)
    _csv(root / "train.csv", f"image_id,label\nimg_a.jpg,horse\nimg_b.png,{missing}\nimg_c.png,zebra\n")
    message = _one_line_error(DataSpec(root=root, labels="train.csv"))
    assert message.startswith(f"{root / 'train.csv'}: 1 row(s) with a missing 'label'")
    assert f"img_b.png ({missing!r})" in message


def test_a_single_class_is_refused_from_a_csv_or_folders(tmp_path):
    root = _csv_competition(tmp_path / "comp", with_extension=True)
    _csv(root / "train.csv", "image_id,label\nimg_a.jpg,horse\nimg_b.png,horse\n")
    message = _one_line_error(DataSpec(root=root, labels="train.csv"))
    assert message == f"{root / 'train.csv'}: every training image has the label 'horse'; a classifier needs two " \
                      f"classes or more"
    folders = _folder_competition(tmp_path / "folders", {"cat": ["c1.png", "c2.png"]})
    assert _one_line_error(DataSpec(root=folders)).startswith(f"{folders / 'train_images'}: every training image")


def test_an_empty_label_csv_says_so(tmp_path):
    root = _csv_competition(tmp_path / "comp", with_extension=True)
    _csv(root / "train.csv", "image_id,label\n")
    assert _one_line_error(DataSpec(root=root, labels="train.csv")) == \
        f"{root / 'train.csv'}: no rows under its header; the label file lists no training image"


def test_test_image_missing_for_a_sample_submission_id(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    (root / "test_images" / "t2.png").unlink()
    message = _one_line_error(DataSpec(root=root))
    assert message.startswith(f"{root / 'test_images'}: no test image for 1 sample-submission id(s)")
    assert "t2.png" in message


def test_sample_submission_ids_without_extension(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    _sample_submission(root, ["t2", "t3", "t1"])
    comp = load_competition(DataSpec(root=root))
    assert comp.test_ids == ("t2", "t3", "t1")
    assert [p.name for p in comp.test_paths] == ["t2.png", "t3.png", "t1.png"]


# ---------------------------------------------------------------- decoding errors


def _noisy_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_garbage_png_names_its_path(tmp_path):
    good = _image(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a PNG at all" * 10)
    with pytest.raises(LedgerError) as caught:
        decode_image(bad, (8, 8), "squish")
    assert str(caught.value).startswith(f"{bad}: unreadable or truncated image")
    # The same through load_images, whose decoding runs in worker threads.
    with pytest.raises(LedgerError, match=f"^{bad}: unreadable"):
        load_images((good, bad), (8, 8), "squish", threads=2)


def test_truncated_jpeg_names_its_path(tmp_path):
    whole = _noisy_jpeg(tmp_path / "whole.jpg")
    assert decode_image(whole, (16, 16), "squish").shape == (3, 16, 16)
    cut = tmp_path / "cut.jpg"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LedgerError) as caught:
        decode_image(cut, (16, 16), "squish")
    message = str(caught.value)
    assert message.startswith(f"{cut}: unreadable or truncated image")
    assert "\n" not in message
    with pytest.raises(LedgerError, match=f"^{cut}: "):
        load_images((whole, cut), (16, 16), "crop", cache_dir=tmp_path / "cache")
    assert not list(tmp_path.glob("cache/*.npy"))  # nothing half-decoded was cached


def test_missing_image_file_names_its_path(tmp_path):
    gone = tmp_path / "gone.png"
    with pytest.raises(LedgerError, match=f"^{gone}: image file not found"):
        decode_image(gone, (8, 8), "squish")
    with pytest.raises(LedgerError, match=f"^{gone}: image file not found"):
        load_images((gone,), (8, 8), "squish", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- splits and the smallest class

LABELS = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3] * 1 + [4] * 40)


def test_split_is_stratified_disjoint_and_covering():
    train, valid = split_indices(LABELS, 0.2, seed=1)
    assert len(np.intersect1d(train, valid)) == 0
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(len(LABELS)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(valid) > 0)  # sorted, no repeats
    for cls, count in zip(*np.unique(LABELS, return_counts=True)):
        in_train, in_valid = np.sum(LABELS[train] == cls), np.sum(LABELS[valid] == cls)
        if count >= 2:
            assert in_train >= 1 and in_valid >= 1, cls
        else:
            assert (in_train, in_valid) == (1, 0)  # a lone image is for training
    assert np.sum(LABELS[valid] == 4) == 8 and np.sum(LABELS[valid] == 0) == 2  # 20% of each


def test_split_fraction_is_about_valid_pct():
    labels = np.random.default_rng(0).integers(0, 7, 1000)
    for pct in (0.1, 0.2, 0.5):
        _, valid = split_indices(labels, pct, seed=3)
        assert abs(len(valid) / len(labels) - pct) < 0.01


def test_split_is_deterministic_per_seed_and_differs_across_seeds():
    a_train, a_valid = split_indices(LABELS, 0.2, seed=7)
    b_train, b_valid = split_indices(LABELS, 0.2, seed=7)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_valid, b_valid)
    others = [split_indices(LABELS, 0.2, seed=s)[1] for s in range(8, 12)]
    assert all(not np.array_equal(a_valid, o) for o in others)


def test_split_with_zero_valid_pct_keeps_everything_for_training():
    train, valid = split_indices(LABELS, 0.0, seed=0)
    assert len(valid) == 0
    assert train.tolist() == list(range(len(LABELS)))


def test_smallest_class_indices():
    labels = np.array([2, 0, 1, 2, 0, 2, 0, 1])  # class 1 has 2 images
    np.testing.assert_array_equal(smallest_class_indices(labels), [2, 7])
    np.testing.assert_array_equal(smallest_class_indices(LABELS), [17])  # class 3, its single image
    # A tie goes to the first class in vocab order.
    np.testing.assert_array_equal(smallest_class_indices(np.array([1, 1, 0, 0, 2, 2, 2])), [2, 3])


# ---------------------------------------------------------------- load_images and its cache


def _stripes(path: Path, width=60, height=20) -> Path:
    """Left third red, middle third green, right third blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    pixels[:, :third, 0] = 255
    pixels[:, third : 2 * third, 1] = 255
    pixels[:, 2 * third :, 2] = 255
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("method", ["squish", "crop", "pad"])
def test_load_images_shape_and_dtype(tmp_path, method):
    paths = (
        _image(tmp_path / "a.png", (40, 20)),
        _image(tmp_path / "b.jpg", (20, 40)),
        _image(tmp_path / "c.png", (5, 5)),
    )
    Image.new("L", (30, 30), 128).save(tmp_path / "gray.png")  # grayscale becomes 3 channels
    out = load_images((*paths, tmp_path / "gray.png"), (16, 24), method, threads=2)
    assert out.shape == (4, 3, 16, 24)
    assert out.dtype == np.uint8
    assert np.all(out[3, :, :, 4:20] == 128)  # the square gray image, wherever padding leaves it


def test_squish_keeps_everything_and_crop_keeps_the_centre(tmp_path):
    path = _stripes(tmp_path / "stripes.png")
    squish = decode_image(path, (16, 16), "squish")
    assert squish[:, 8, 0].tolist() == [255, 0, 0]  # red on the left
    assert squish[:, 8, 15].tolist() == [0, 0, 255]  # blue on the right
    crop = decode_image(path, (16, 16), "crop")
    inner = crop[:, :, 1:-1]  # the outermost columns blend a little with the neighbouring stripes
    assert np.all(inner[1] == 255) and np.all(inner[0] == 0) and np.all(inner[2] == 0)  # only the green middle
    assert np.all(crop[0] < 32) and np.all(crop[2] < 32)


def test_pad_of_a_wide_image_adds_black_rows_top_and_bottom(tmp_path):
    path = _image(tmp_path / "wide.png", (40, 20), (255, 255, 255))
    (out,) = load_images((path,), (32, 32), "pad")
    # 40x20 fits as 32x16, centred: 8 black rows above and below, the image between.
    assert np.all(out[:, :8, :] == 0)
    assert np.all(out[:, 24:, :] == 0)
    assert np.all(out[:, 8:24, :] == 255)


def test_disk_cache_is_hit_the_second_time(tmp_path, monkeypatch):
    paths = tuple(_image(tmp_path / f"{i}.png", (10, 10), (i * 40, 0, 0)) for i in range(4))
    cache = tmp_path / "cache"
    first = load_images(paths, (8, 8), "squish", cache_dir=cache)
    assert len(list(cache.glob("images-*.npy"))) == 1
    assert not list(cache.glob("*.tmp-*"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these images")

    monkeypatch.setattr(ledger.data.images, "decode_image", no_decoding)
    second = load_images(paths, (8, 8), "squish", cache_dir=cache)
    np.testing.assert_array_equal(first, second)
    assert second.shape == (4, 3, 8, 8) and second.dtype == np.uint8

    # Another size or method is another cache entry, so it decodes.
    with pytest.raises(AssertionError, match="decoded"):
        load_images(paths, (8, 8), "crop", cache_dir=cache)
    with pytest.raises(AssertionError, match="decoded"):
        load_images(paths, (6, 8), "squish", cache_dir=cache)


def test_touched_file_misses_the_cache(tmp_path, monkeypatch):
    paths = tuple(_image(tmp_path / f"{i}.png", (10, 10), (200, 0, 0)) for i in range(3))
    cache = tmp_path / "cache"
    load_images(paths, (8, 8), "squish", cache_dir=cache)
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    calls = []
    real = ledger.data.images.decode_image
    monkeypatch.setattr(ledger.data.images, "decode_image", lambda *a: calls.append(a[0]) or real(*a))
    load_images(paths, (8, 8), "squish", cache_dir=cache)
    assert sorted(calls) == sorted(paths)  # everything decoded again
    assert len(list(cache.glob("images-*.npy"))) == 2


def test_rewritten_file_gives_its_new_pixels(tmp_path):
    paths = tuple(_image(tmp_path / f"{i}.png", (10, 10), (200, 0, 0)) for i in range(3))
    cache = tmp_path / "cache"
    before = np.array(load_images(paths, (8, 8), "squish", cache_dir=cache))
    stat = paths[2].stat()
    _image(paths[2], (10, 10), (0, 0, 200))
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # even on coarse clocks
    after = load_images(paths, (8, 8), "squish", cache_dir=cache)
    np.testing.assert_array_equal(after[:2], before[:2])
    assert after[2, :, 4, 4].tolist() == [0, 0, 200]


def test_damaged_cache_file_is_rebuilt(tmp_path):
    paths = (_image(tmp_path / "a.png"),)
    cache = tmp_path / "cache"
    first = np.array(load_images(paths, (8, 8), "squish", cache_dir=cache))
    (cache_file,) = cache.glob("images-*.npy")
    cache_file.write_bytes(b"not numpy")
    np.testing.assert_array_equal(load_images(paths, (8, 8), "squish", cache_dir=cache), first)


def test_images_in_memory_without_a_cache_dir(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
    path = tmp_path / "tiny.png"
    path.write_bytes(buffer.getvalue())
    out = load_images((path,), (4, 4), "squish")
    assert out[0, :, 0, 0].tolist() == [1, 2, 3]
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- hidden files, repeated ids and names


def test_hidden_folders_and_files_are_never_classes_or_images(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    _image(root / "train_images" / ".ipynb_checkpoints" / "c1-checkpoint.png")  # not a class
    _image(root / "train_images" / "cat" / ".c9.png")  # not an image
    _image(root / "train_images" / "cat" / ".ipynb_checkpoints" / "c1.png")
    _image(root / "test_images" / ".t9.png")
    comp = load_competition(DataSpec(root=root))
    assert comp.vocab == ("ant", "cat", "dog")
    assert comp.train_ids == ("a1.png", "c1.png", "c2.png", "c3.png", "d1.png", "d2.jpg")


def test_hidden_copies_in_a_csv_competition_are_not_duplicates(tmp_path):
    root = _csv_competition(tmp_path / "comp", with_extension=True, nested=True)
    _image(root / "train_images" / ".ipynb_checkpoints" / "img_a.jpg")  # a notebook's copy
    comp = load_competition(DataSpec(root=root, labels="train.csv"))
    assert comp.train_paths[1] == root / "train_images" / "horse" / "img_a.jpg"


def test_csv_with_repeated_ids(tmp_path):
    root = _csv_competition(tmp_path / "comp", with_extension=True)
    with open(root / "train.csv", "a") as f:
        f.write("img_a.jpg,zebra,g\nimg_c.png,zebra,g\nimg_a.jpg,horse,g\n")
    message = _one_line_error(DataSpec(root=root, labels="train.csv"))
    assert message == f"{root / 'train.csv'}: 2 id(s) in more than one row of 'image_id' (e.g. img_a.jpg, img_c.png)"


def test_one_file_name_in_two_class_folders(tmp_path):
    root = _folder_competition(tmp_path / "comp")
    _image(root / "train_images" / "dog" / "c2.png")  # also in cat/
    message = _one_line_error(DataSpec(root=root))
    train = root / "train_images"
    assert message == f"{train}: image 'c2.png' is in two folders, {train / 'cat'} and {train / 'dog'}; ids must be unique"


def test_one_file_name_in_two_folders_of_a_csv_competition(tmp_path):
    root = _csv_competition(tmp_path / "comp", with_extension=True, nested=True)
    _image(root / "train_images" / "zebra" / "img_a.jpg")  # also in horse/
    message = _one_line_error(DataSpec(root=root, labels="train.csv"))
    assert "'img_a.jpg' is in two folders" in message
    assert str(root / "train_images" / "horse") in message and str(root / "train_images" / "zebra") in message


# ---------------------------------------------------------------- 16-bit and oversized images


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    pixels = np.full((8, 8), 0x8080, dtype=np.uint16)  # mid-grey: 32896 of 65535
    pixels[0, :] = 65535
    pixels[1, :] = 0
    Image.fromarray(pixels).save(path)
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I")  # PIL really wrote and reads a 16-bit PNG
    out = decode_image(path, (8, 8), "squish")
    assert np.all(out[:, 4, :] == 128)  # mid-grey stays mid-grey (clipping would make it 255)
    assert np.all(out[:, 0, :] == 255) and np.all(out[:, 1, :] == 0)


@pytest.mark.parametrize("side", [12, 20], ids=["over-the-limit-pil-warns", "over-twice-the-limit-pil-refuses"])
def test_decompression_bomb_is_a_one_line_error(tmp_path, monkeypatch, recwarn, side):
    path = _image(tmp_path / "huge.png", (side, side))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(LedgerError) as caught:
        load_images((path,), (8, 8), "squish")
    message = str(caught.value)
    assert message.startswith(f"{path}: image too large to decode safely")
    assert f"{side}x{side}" in message or str(side * side) in message
    assert "\n" not in message
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


# ---------------------------------------------------------------- room for the image cache


def _never_decode(*args, **kwargs):
    raise AssertionError("decoded although the cache cannot fit")


def test_cache_larger_than_free_disk(tmp_path, monkeypatch):
    paths = (_image(tmp_path / "a.png"), _image(tmp_path / "b.png"))
    monkeypatch.setattr(ledger.data.images, "_free_disk_bytes", lambda folder: 20 * 1024**3)
    monkeypatch.setattr(ledger.data.images, "_memory_bytes", lambda: 2**60)
    monkeypatch.setattr(ledger.data.images, "decode_image", _never_decode)
    cache = tmp_path / "cache"
    with pytest.raises(LedgerError) as caught:
        load_images(paths, (100000, 100000), "squish", cache_dir=cache, label="models[0].size")
    # 2 x 3 x 100000 x 100000 bytes
    assert str(caught.value) == (
        f"models[0].size 100000: the image cache needs 55.9 GiB, more than the 20.0 GiB free on {cache}; "
        f"use a smaller size or free some space"
    )
    assert not cache.exists()


def test_cache_larger_than_memory(tmp_path, monkeypatch):
    paths = (_image(tmp_path / "a.png"),)
    monkeypatch.setattr(ledger.data.images, "_memory_bytes", lambda: 1024**2)
    monkeypatch.setattr(ledger.data.images, "decode_image", _never_decode)
    with pytest.raises(LedgerError, match=r"^size 1000x800: the image cache needs 2.3 MiB, more than the 1.0 MiB of memory"):
        load_images(paths, (1000, 800), "squish")  # no cache folder: memory is still checked


def test_free_disk_is_read_where_the_cache_will_be(tmp_path):
    assert ledger.data.images._free_disk_bytes(tmp_path / "not" / "made" / "yet") == ledger.data.images.shutil.disk_usage(tmp_path).free
    assert ledger.data.images._memory_bytes() > 2**20


# ---------------------------------------------------------------- k-fold splits


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_partition_every_class(folds):
    valids = []
    for fold in range(folds):
        train, valid = fold_indices(LABELS, folds, fold, seed=4)
        assert len(np.intersect1d(train, valid)) == 0
        assert sorted(np.concatenate([train, valid]).tolist()) == list(range(len(LABELS)))
        assert np.all(np.diff(train) > 0) and np.all(np.diff(valid) > 0)
        valids.append(valid)
    # Every index is in exactly one valid set.
    assert sorted(np.concatenate(valids).tolist()) == list(range(len(LABELS)))
    sizes = [len(v) for v in valids]
    assert max(sizes) - min(sizes) <= 1
    for cls in np.unique(LABELS):
        per_fold = [int(np.sum(LABELS[v] == cls)) for v in valids]
        assert max(per_fold) - min(per_fold) <= 1, (cls, per_fold)


def test_folds_depend_on_the_seed_only():
    a = [fold_indices(LABELS, 5, f, seed=1)[1] for f in range(5)]
    b = [fold_indices(LABELS, 5, f, seed=1)[1] for f in range(5)]
    c = [fold_indices(LABELS, 5, f, seed=2)[1] for f in range(5)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("folds, fold", [(1, 0), (3, 3), (3, -1)])
def test_fold_arguments_out_of_range(folds, fold):
    with pytest.raises(ValueError, match="folds"):
        fold_indices(LABELS, folds, fold, seed=0)
