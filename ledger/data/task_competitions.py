"""Multi-label and regression competitions drawn from the embedded Fashion-MNIST, to try `task:` offline.

`fashion-tags` (Planet-style, multi-label): a 48x48 RGB scene holding 0 to 3 items of different
classes, tinted and pasted on a noisy light or dark background; the tags are the classes present.
`fashion-size` (regression, or APTOS-style grades): one item on a 40x40 scene at a random scale; the
target is the item's longest edge in pixels (a Fashion-MNIST item fills its 28x28 frame along its
longest edge, so that is the side of the square the frame was scaled to).

    train_images/<image_id>           RGB PNGs, image_id like "100330.png" (the fashion-mnist id scheme)
    train.csv                         image_id,tags | image_id,<one 0/1 column per tag> | image_id,size | image_id,grade
    test_images/<image_id>
    sample_submission.csv             the test ids in shuffled order, placeholder answers
    solution.csv                      the true answers, in the sample's order

Train scenes are made of the embedded train images and test scenes of the embedded test images, and
no source image is used twice, so nothing of a test scene was seen in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ledger.errors import SpecError
# The fashion-mnist writer's plumbing, shared so both kinds of folder follow one set of rules
# (ids, the --force marker, threaded PNG writes).
from ledger.data.fashion_mnist import (_FIRST_ID, _ID_COUNT, EMBEDDED_SOURCE, _check_destination, _read_split,
                                       write_folder)

# Index = the class number in the IDX files. Single words, since a `tags` cell splits on spaces.
TAGS = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
LAYOUTS = ("tags", "columns")
# Planet's sample submission repeats one tag string on every row; several words show the format.
PLACEHOLDER_TAGS = "dress shirt tshirt"

TAGS_CANVAS, SIZE_CANVAS = 48, 40
EMPTY_SHARE = 0.1  # images with no item, so an empty prediction has to be learnt too
TAG_ITEM_SIDES = (20.0, 26.0)
SIZE_ITEM_SIDES = (12.0, 36.0)
GRADES = 5  # the side range cut into equal bins, graded 0..4 as APTOS grades retinopathy
_QUADRANT_JITTER = 3.0  # px around a quadrant's centre: items overlap by a few pixels at most
_NOISE_SD = 8.0
_SUPERSAMPLE = 4  # items are drawn 4x larger, then box-filtered: a smooth edge at a fractional size


def _background(rng: np.random.Generator, canvas: int) -> tuple[np.ndarray, bool]:
    """A light or dark greyish colour with Gaussian noise; returns it (float HxWx3) and whether it is dark."""
    dark = bool(rng.random() < 0.5)
    level = rng.uniform(10, 70) if dark else rng.uniform(180, 245)
    colour = level + rng.uniform(-10, 10, size=3)
    return colour + rng.normal(0, _NOISE_SD, size=(canvas, canvas, 3)), dark


def _tint(rng: np.random.Generator, dark_background: bool) -> np.ndarray:
    # Bright items on dark ground and dark items on light ground, so every item stands out.
    return rng.uniform(140, 255, size=3) if dark_background else rng.uniform(0, 110, size=3)


def _paste(scene: np.ndarray, item: np.ndarray, side: float, left: float, top: float, tint: np.ndarray) -> None:
    """Blend a 28x28 item into `scene` as a `side`-pixel square at (left, top), its grey level as opacity."""
    big, scale = scene.shape[0] * _SUPERSAMPLE, side * _SUPERSAMPLE / item.shape[0]
    # AFFINE maps each output pixel back to the item's coordinates: x_item = (x - left) / scale.
    coefficients = (1 / scale, 0, -left * _SUPERSAMPLE / scale, 0, 1 / scale, -top * _SUPERSAMPLE / scale)
    layer = Image.fromarray(item).transform((big, big), Image.Transform.AFFINE, coefficients,
                                            resample=Image.Resampling.BILINEAR, fillcolor=0)
    opacity = np.asarray(layer.reduce(_SUPERSAMPLE), dtype=np.float64)[..., None] / 255
    scene *= 1 - opacity
    scene += opacity * tint


def _as_pixels(scene: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(scene), 0, 255).astype(np.uint8)


def _items_per_image(count: int) -> np.ndarray:
    """Exactly EMPTY_SHARE of the images empty, the rest holding 1, 2 and 3 items in turn (unshuffled)."""
    empty = round(EMPTY_SHARE * count)
    return np.concatenate([np.zeros(empty, int), np.resize([1, 2, 3], count - empty)])


def _tag_scenes(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, count: int, option: str):
    """`count` scenes from one split's images: (pixels, source rows per scene), no source row twice."""
    per_image = rng.permutation(_items_per_image(count))
    if per_image.sum() > len(labels):
        most = max(n for n in range(count + 1) if _items_per_image(n).sum() <= len(labels))
        raise SpecError(f"{option} {count}: its images hold {per_image.sum()} items and the embedded set has "
                        f"{len(labels)} to draw from; ask for at most {most}")
    unused = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(len(TAGS))]
    scenes, sources = np.empty((count, TAGS_CANVAS, TAGS_CANVAS, 3), np.uint8), []
    for index, items in enumerate(per_image):
        left_over = np.array([len(rows) for rows in unused], float)
        if np.count_nonzero(left_over) < items:
            raise SpecError(f"{option} {count}: the embedded set runs out of classes to draw from; ask for fewer")
        # Classes drawn in proportion to what is left of them, so no class runs out before the others.
        classes = rng.choice(len(TAGS), items, replace=False, p=left_over / left_over.sum())
        rows = [int(unused[c].pop()) for c in classes]
        scene, dark = _background(rng, TAGS_CANVAS)
        quadrants = rng.choice(4, items, replace=False)  # one item per quadrant: they overlap only slightly
        for row, quadrant in zip(rows, quadrants):
            side = rng.uniform(*TAG_ITEM_SIDES)
            centre = TAGS_CANVAS / 4 * (1 + 2 * np.array([quadrant % 2, quadrant // 2]))
            left, top = np.clip(centre + rng.uniform(-_QUADRANT_JITTER, _QUADRANT_JITTER, 2) - side / 2,
                                0, TAGS_CANVAS - side)
            _paste(scene, images[row], side, left, top, _tint(rng, dark))
        scenes[index] = _as_pixels(scene)
        sources.append(rows)
    return scenes, sources


def _size_scenes(rng: np.random.Generator, images: np.ndarray, count: int, option: str):
    """`count` one-item scenes: (pixels, source rows, item sides rounded to 0.01 px, as drawn)."""
    if count > len(images):
        raise SpecError(f"{option} {count}: the embedded set has only {len(images)} images to draw from")
    rows = rng.choice(len(images), count, replace=False)
    scenes, sides = np.empty((count, SIZE_CANVAS, SIZE_CANVAS, 3), np.uint8), np.empty(count)
    for index, row in enumerate(rows):
        # Rounded before drawing, so the CSV's value is exactly the size drawn.
        side = round(float(rng.uniform(*SIZE_ITEM_SIDES)), 2)
        left, top = rng.uniform(0, SIZE_CANVAS - side, 2)
        scene, dark = _background(rng, SIZE_CANVAS)
        _paste(scene, images[row], side, left, top, _tint(rng, dark))
        scenes[index], sides[index] = _as_pixels(scene), side
    return scenes, rows, sides


def grade_of(side: np.ndarray) -> np.ndarray:
    """The side's grade 0..GRADES-1: SIZE_ITEM_SIDES cut into GRADES equal bins."""
    low, high = SIZE_ITEM_SIDES
    return np.clip(((np.asarray(side) - low) / (high - low) * GRADES).astype(int), 0, GRADES - 1)


def _check_counts(train: int, test: int) -> None:
    if train < 1:
        raise SpecError(f"--train must be at least 1, not {train}")
    if test < 1:
        raise SpecError(f"--test must be at least 1, not {test}")


def _image_ids(rng: np.random.Generator, train: int, test: int) -> tuple[list[str], list[str]]:
    # Test ids come out in random order, and the sample keeps it: a shuffled, unsorted test order.
    ids = [f"{number}.png" for number in _FIRST_ID + rng.permutation(_ID_COUNT)[: train + test]]
    return ids[:train], ids[train:]


def _tag_columns(sources: list[list[int]], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The tags layout's cells (sorted words, '' for none) and the columns layout's 0/1 matrix."""
    present = np.zeros((len(sources), len(TAGS)), np.int64)
    for index, rows in enumerate(sources):
        present[index, labels[rows]] = 1
    cells = [" ".join(sorted(TAGS[c] for c in np.flatnonzero(flags))) for flags in present]
    return cells, present


def write_tags_competition(out_dir: Path, *, seed: int = 0, train: int = 4000, test: int = 1000,
                           layout: str = "tags", force: bool = False) -> dict:
    """Write a Planet-style multi-label competition (`layout="columns"`: CheXpert-style, a 0/1 column
    per tag) to `out_dir`; return what was written. Both layouts of one seed hold the same images.
    Same arguments, same bytes."""
    out_dir = Path(out_dir)
    _check_counts(train, test)
    if layout not in LAYOUTS:
        raise SpecError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    _check_destination(out_dir, force)
    train_images, train_labels = _read_split(EMBEDDED_SOURCE, "train")
    test_images, test_labels = _read_split(EMBEDDED_SOURCE, "t10k")

    rng = np.random.default_rng(seed)  # one generator for every choice: `seed` alone fixes the folder
    train_scenes, train_sources = _tag_scenes(rng, train_images, train_labels, train, "--train")
    test_scenes, test_sources = _tag_scenes(rng, test_images, test_labels, test, "--test")
    train_ids, test_ids = _image_ids(rng, train, test)
    train_cells, train_present = _tag_columns(train_sources, train_labels)
    test_cells, test_present = _tag_columns(test_sources, test_labels)
    if layout == "tags":
        train_table = pd.DataFrame({"image_id": train_ids, "tags": train_cells})
        solution = pd.DataFrame({"image_id": test_ids, "tags": test_cells})
        sample_submission = solution.assign(tags=PLACEHOLDER_TAGS)
    else:
        train_table = pd.DataFrame(train_present, columns=list(TAGS)).assign(image_id=train_ids)
        train_table = train_table[["image_id", *TAGS]]
        solution = pd.DataFrame(test_present, columns=list(TAGS)).assign(image_id=test_ids)[["image_id", *TAGS]]
        sample_submission = solution.assign(**{tag: 0.5 for tag in TAGS})
    write_folder(out_dir, force, f"fashion-tags --layout {layout} (seed {seed})", train_ids, train_scenes,
                 test_ids, test_scenes, train_table, sample_submission, solution)
    items = _provenance(train_ids, train_sources, train_labels, test_ids, test_sources, test_labels)
    return _summary(out_dir, seed, train, test, target=f"tags ({layout} layout)", items=items,
                    empty_share=float(np.mean([cell == "" for cell in train_cells + test_cells])))


def write_size_competition(out_dir: Path, *, seed: int = 0, train: int = 4000, test: int = 1000,
                           grades: bool = False, force: bool = False) -> dict:
    """Write a regression competition (`size`, the item's longest edge in pixels, a float from 12 to 36)
    to `out_dir`, or with `grades` an ordinal one (`grade`, that size in five equal bins, 0..4);
    return what was written. Same arguments, same bytes."""
    out_dir = Path(out_dir)
    _check_counts(train, test)
    _check_destination(out_dir, force)
    train_images, train_labels = _read_split(EMBEDDED_SOURCE, "train")
    test_images, test_labels = _read_split(EMBEDDED_SOURCE, "t10k")

    rng = np.random.default_rng(seed)
    train_scenes, train_rows, train_sides = _size_scenes(rng, train_images, train, "--train")
    test_scenes, test_rows, test_sides = _size_scenes(rng, test_images, test, "--test")
    train_ids, test_ids = _image_ids(rng, train, test)
    column = "grade" if grades else "size"
    as_target = grade_of if grades else (lambda sides: sides)
    train_table = pd.DataFrame({"image_id": train_ids, column: as_target(train_sides)})
    solution = pd.DataFrame({"image_id": test_ids, column: as_target(test_sides)})
    sample_submission = solution.assign(**{column: 0 if grades else 0.0})
    write_folder(out_dir, force, f"fashion-size{' --grades' if grades else ''} (seed {seed})", train_ids,
                 train_scenes, test_ids, test_scenes, train_table, sample_submission, solution)
    items = _provenance(train_ids, [[r] for r in train_rows], train_labels, test_ids, [[r] for r in test_rows],
                        test_labels).assign(side=np.concatenate([train_sides, test_sides]))
    return _summary(out_dir, seed, train, test, target=column, items=items,
                    test_target_sd=float(np.std(solution[column])))


def _provenance(train_ids, train_sources, train_labels, test_ids, test_sources, test_labels) -> pd.DataFrame:
    """Which embedded image each pasted item is (split, row, class), for tests and the curious."""
    rows = [(image_id, split, row, TAGS[labels[row]])
            for split, ids, sources, labels in (("train", train_ids, train_sources, train_labels),
                                                ("t10k", test_ids, test_sources, test_labels))
            for image_id, source_rows in zip(ids, sources) for row in source_rows]
    return pd.DataFrame(rows, columns=["image_id", "split", "row", "tag"])


def _summary(out_dir: Path, seed: int, train: int, test: int, **details) -> dict:
    return {"out_dir": str(out_dir), "source": str(EMBEDDED_SOURCE), "seed": seed, "train_images": train,
            "test_images": test, **details, "train_csv": str(out_dir / "train.csv"),
            "sample_submission": str(out_dir / "sample_submission.csv"), "solution": str(out_dir / "solution.csv")}


