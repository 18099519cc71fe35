"""Regenerate the embedded Fashion-MNIST subset in this folder (stdlib + numpy only).

Keeps the first 1000 images of each class from the train set (10,000 images, in their original
order) and the first 2000 images of the t10k set, written in the same gzipped IDX format and file
names as upstream. gzip headers carry no timestamp or file name, so reruns are byte-identical.

    python ledger/embedded/fashion-mnist/make_subset.py [SOURCE_DIR] [OUT_DIR]

SOURCE_DIR defaults to Debian's /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist),
OUT_DIR to the folder holding this script.
"""

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

TRAIN_PER_CLASS = 1000
TEST_COUNT = 2000
# IDX type code 0x08 is unsigned byte, the only type Fashion-MNIST uses.
UNSIGNED_BYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    zero, type_code, n_dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code != UNSIGNED_BYTE:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{n_dims}I", data[4 : 4 + 4 * n_dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, UNSIGNED_BYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw:
        # filename="" and mtime=0 keep the gzip header free of anything that changes between runs.
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as zipped:
            zipped.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/usr/share/datasets/fashion-mnist")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
    train_images = read_idx(source / "train-images-idx3-ubyte.gz")
    train_labels = read_idx(source / "train-labels-idx1-ubyte.gz")
    test_images = read_idx(source / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")

    # The first TRAIN_PER_CLASS of each class, then sorted back so the original order is kept.
    keep = np.sort(np.concatenate([np.flatnonzero(train_labels == c)[:TRAIN_PER_CLASS] for c in range(10)]))
    write_idx(out / "train-images-idx3-ubyte.gz", train_images[keep])
    write_idx(out / "train-labels-idx1-ubyte.gz", train_labels[keep])
    write_idx(out / "t10k-images-idx3-ubyte.gz", test_images[:TEST_COUNT])
    write_idx(out / "t10k-labels-idx1-ubyte.gz", test_labels[:TEST_COUNT])
    print(f"wrote {len(keep)} train and {TEST_COUNT} test images to {out}")


if __name__ == "__main__":
    main()
