"""Fashion-MNIST as a Kaggle-style competition folder, so every command can be tried offline.

The source is the 12,000-image subset embedded in the package (`ledger/data/embedded/fashion-mnist/`, see its README), or with
`full=True` the complete set from Debian's `dataset-fashion-mnist` package. The folder written is
laid out like Kaggle's Paddy Disease competition, plus the held-back answers:

    train_images/<label>/<image_id>   28x28 grayscale PNGs, image_id like "100330.png"
    train.csv                         image_id,label,group
    test_images/<image_id>
    sample_submission.csv             image_id,label (placeholder labels, shuffled row order)
    solution.csv                      image_id,label (true labels, same order as the sample)
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ledger.errors import LedgerError, SpecError
from ledger.durable import replace_folder

# Package data (in the wheel too), so `ledger data fashion-mnist` works from an install, not only a checkout.
EMBEDDED_SOURCE = Path(str(files("ledger.data") / "embedded" / "fashion-mnist"))
DEBIAN_SOURCE = Path("/usr/share/datasets/fashion-mnist")

# Index = the label number in the IDX files; names are safe as folder names on every OS.
CLASS_NAMES = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
)  # fmt: skip
# A coarser label for train.csv's extra column, as Paddy's train.csv carries `variety`.
GROUPS = {
    "T-shirt_top": "top", "Trouser": "bottom", "Pullover": "top", "Dress": "top", "Coat": "top",
    "Sandal": "footwear", "Shirt": "top", "Sneaker": "footwear", "Bag": "bag", "Ankle_boot": "footwear",
}  # fmt: skip

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Six-digit ids: random-looking, so nothing can be learnt from an id, and all the same width.
_FIRST_ID, _ID_COUNT = 100_000, 900_000


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped when its name ends in .gz) into an array of its stored shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except FileNotFoundError:
        raise LedgerError(f"{path}: file not found") from None
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise LedgerError(f"{path}: cannot read ({error})") from None
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise LedgerError(f"{path}: not an IDX file (bad magic number)")
    dtype, n_dims = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header_size = 4 + 4 * n_dims
    if len(data) < header_size:
        raise LedgerError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{n_dims}I", data[4:header_size])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header_size != expected:
        found = len(data) - header_size
        raise LedgerError(f"{path}: corrupt IDX file ({found} data bytes, shape {shape} needs {expected})")
    # Native byte order, so callers never meet a big-endian array.
    return np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


def _read_split(source: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise LedgerError(f"{source}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


# Written into every competition folder: --force replaces only folders that hold it (or exactly the
# entries of a competition written before it existed), never a ledger home or anyone's files.
MARKER = ".ledger-competition"
_COMPETITION_ENTRIES = {"train_images", "test_images", "train.csv", "sample_submission.csv", "solution.csv"}


def _written_by_ledger(out_dir: Path) -> bool:
    names = {p.name for p in out_dir.iterdir()}
    return MARKER in names or names <= _COMPETITION_ENTRIES


def _check_destination(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise LedgerError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise LedgerError(f"{out_dir}: exists and is not empty; pass --force to replace it")
        if not _written_by_ledger(out_dir):
            raise LedgerError(f"{out_dir}: not a competition written by `ledger data` (no {MARKER}); --force "
                              f"replaces only those: remove the folder yourself or choose another")


def _save_png(path: Path, image: np.ndarray) -> None:
    # compress_level=1: the images are tiny and writing thousands is the slow part.
    Image.fromarray(image).save(path, compress_level=1)  # uint8 2-D array: mode "L"


def _write_pngs(paths: list[Path], images: np.ndarray) -> None:
    # PIL releases the GIL while encoding, so threads make 6,000 PNGs take about a second.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(_save_png, paths, images))


def write_folder(out_dir: Path, force: bool, written_by: str, train_files: list[str], train_images: np.ndarray,
                 test_ids: list[str], test_images: np.ndarray, train_table: pd.DataFrame,
                 sample_submission: pd.DataFrame, solution: pd.DataFrame) -> None:
    """A competition folder: `train_files` (paths under train_images/, a class folder or none) and
    the test images as PNGs, the three CSVs and the marker, built beside `out_dir` and renamed into
    place whole, so an interrupted run leaves neither half a competition nor a lost old one."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        train_paths = [building / "train_images" / name for name in train_files]
        for folder in sorted({path.parent for path in train_paths}):
            folder.mkdir(parents=True, exist_ok=True)
        (building / "test_images").mkdir()
        _write_pngs(train_paths, train_images)
        _write_pngs([building / "test_images" / image_id for image_id in test_ids], test_images)
        train_table.to_csv(building / "train.csv", index=False)
        sample_submission.to_csv(building / "sample_submission.csv", index=False)
        solution.to_csv(building / "solution.csv", index=False)
        (building / MARKER).write_text(f"written by ledger data {written_by}\n")
        os.chmod(building, 0o755)  # mkdtemp makes it private; the result is an ordinary folder.
        _check_destination(out_dir, force)  # again: something may have appeared meanwhile
        replace_folder(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def write_competition(
    out_dir: Path,
    *,
    seed: int = 0,
    train_per_class: int = 500,
    test: int = 1000,
    full: bool = False,
    force: bool = False,
) -> dict:
    """Write a Fashion-MNIST competition folder to `out_dir`; return what was written, for printing.

    The same arguments always give byte-identical CSVs and images. The folder is built beside
    `out_dir` under a temporary name and renamed into place when complete, so an interrupted run
    never leaves a half-written competition (nor destroys the one it was to replace).
    """
    out_dir = Path(out_dir)
    if train_per_class < 1:
        raise SpecError(f"--train-per-class must be at least 1, not {train_per_class}")
    if test < 1:
        raise SpecError(f"--test must be at least 1, not {test}")
    if full and not DEBIAN_SOURCE.is_dir():
        raise LedgerError(
            f"{DEBIAN_SOURCE}: not found; --full needs the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist), or leave out --full for the embedded subset"
        )
    source = DEBIAN_SOURCE if full else EMBEDDED_SOURCE
    _check_destination(out_dir, force)

    train_images, train_labels = _read_split(source, "train")
    test_images, test_labels = _read_split(source, "t10k")
    counts = np.bincount(train_labels, minlength=len(CLASS_NAMES))
    if counts.min() < train_per_class:
        scarcest = CLASS_NAMES[int(counts.argmin())]
        raise SpecError(
            f"--train-per-class {train_per_class}: the train set in {source} has only "
            f"{counts.min()} images of class {scarcest}" + ("" if full else " (--full has 6000)")
        )
    if len(test_labels) < test:
        raise SpecError(
            f"--test {test}: the test set in {source} has only {len(test_labels)} images"
            + ("" if full else " (--full has 10000)")
        )

    # One generator drives every random choice, so `seed` alone fixes the whole folder.
    rng = np.random.default_rng(seed)
    train_rows = np.concatenate([
        rng.choice(np.flatnonzero(train_labels == label), train_per_class, replace=False)
        for label in range(len(CLASS_NAMES))
    ])
    # Drawn without replacement and kept in draw order: a shuffled, unsorted test order.
    test_rows = rng.choice(len(test_labels), test, replace=False)
    ids = _FIRST_ID + rng.permutation(_ID_COUNT)[: len(train_rows) + len(test_rows)]
    image_ids = np.array([f"{number}.png" for number in ids])
    train_ids, test_ids = image_ids[: len(train_rows)], image_ids[len(train_rows) :]

    train_names = np.array(CLASS_NAMES)[train_labels[train_rows]]
    train_groups = [GROUPS[name] for name in train_names]
    train_table = pd.DataFrame({"image_id": train_ids, "label": train_names, "group": train_groups})
    # Sorted by label then id, as a listing of the train_images folders would be.
    train_order = train_table.sort_values(["label", "image_id"], kind="stable").index.to_numpy()
    train_table = train_table.loc[train_order].reset_index(drop=True)
    solution = pd.DataFrame({"image_id": test_ids, "label": np.array(CLASS_NAMES)[test_labels[test_rows]]})
    # The placeholder is a real class name, so the sample is itself a valid (poor) submission.
    sample_submission = solution.assign(label=CLASS_NAMES[0])

    write_folder(out_dir, force, f"fashion-mnist (seed {seed})",
                 [f"{label}/{image_id}" for image_id, label in zip(train_table.image_id, train_table.label)],
                 train_images[train_rows[train_order]], list(test_ids), test_images[test_rows], train_table,
                 sample_submission, solution)

    return {
        "out_dir": str(out_dir),
        "source": str(source),
        "seed": seed,
        "classes": len(CLASS_NAMES),
        "train_images": len(train_rows),
        "test_images": len(test_rows),
        "train_csv": str(out_dir / "train.csv"),
        "sample_submission": str(out_dir / "sample_submission.csv"),
        "solution": str(out_dir / "solution.csv"),
    }
