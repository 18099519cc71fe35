"""A Kaggle-style competition folder -> image ids, labels and vocab, checked (the splits are in
`splits.py`, the decoded images in `images.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ledger.bag.metrics import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from ledger.errors import LedgerError
from ledger.spec.objects import DataSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Competition:
    root: Path
    vocab: tuple[str, ...]  # sorted class names; the tags (multi_label) or the target columns (regression)
    train_ids: tuple[str, ...]  # as the labels source names them (CSV id or file name)
    train_paths: tuple[Path, ...]
    # single_label: int64 index into vocab, one per train image; multi_label: float32 (N, tags) of 0/1;
    # regression: float32 (N, columns) of the numbers.
    train_labels: np.ndarray
    test_ids: tuple[str, ...]  # in sample-submission order
    test_paths: tuple[Path, ...]
    sample_submission: Path
    extra: tuple["ExtraTarget", ...] = ()  # data.extra_targets, in the spec's order
    label_csv: Path | None = None  # the label CSV (None: labels from class folders)
    task: str = SINGLE_LABEL

    @property
    def strata(self) -> np.ndarray:
        """(N,) int64: what splits and folds keep in proportion. The class; with tags, the number of
        tags an image has; with numbers, the quintile of the first target."""
        if self.task == SINGLE_LABEL:
            return self.train_labels
        if self.task == MULTI_LABEL:
            return self.train_labels.sum(axis=1).astype(np.int64)
        first = self.train_labels[:, 0]
        edges = np.quantile(first, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(edges, first, side="right").astype(np.int64)

    @property
    def head_sizes(self) -> tuple[int, ...]:
        """Classes of each target, the submission's first: one head holds them all, in this order."""
        return (len(self.vocab), *(len(t.vocab) for t in self.extra))

    def train_column(self, column: str, key: str = "split.group") -> np.ndarray:
        """Another column of the label CSV, one value per train image (in `train_ids` order): what
        `key` names, e.g. the group each image belongs to."""
        if self.label_csv is None:
            raise LedgerError(f"{key}: {column!r} needs a label CSV (data.labels), not class folders")
        table = _read_csv(self.label_csv)
        if column not in table.columns:
            raise LedgerError(f"{self.label_csv}: no column {column!r} ({key}; columns: {', '.join(table.columns)})")
        return table[column].to_numpy()  # load_competition keeps the CSV's row order

    def target_labels(self) -> np.ndarray:
        """(N,) int64 for one target; (N, 1 + extra) with the extra targets' columns after it."""
        if not self.extra:
            return self.train_labels
        return np.stack([self.train_labels, *(t.labels for t in self.extra)], axis=1)


@dataclass(frozen=True)
class ExtraTarget:
    """Another label column trained alongside the submission's target (Road to the Top part 4)."""

    name: str
    vocab: tuple[str, ...]
    labels: np.ndarray  # int64 index into vocab, one per train image


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise LedgerError(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LedgerError(f"{path}: unreadable CSV ({str(e).strip().splitlines()[0]})") from None


def _hidden(name: str) -> bool:
    """`.ipynb_checkpoints`, `.DS_Store`, `._x.png` (macOS resource forks): tool droppings, never
    classes or images."""
    return name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not _hidden(p.name) and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _unique_names(paths: list[Path], what: Path) -> dict[str, Path]:
    """File name -> path. Ids are file names, so one name in two folders would be two images with
    one id (and, from folders, perhaps two labels for it): refuse rather than pick one."""
    by_name: dict[str, Path] = {}
    for path in paths:
        other = by_name.setdefault(path.name, path)
        if other != path:
            raise LedgerError(
                f"{what}: image {path.name!r} is in two folders, {other.parent} and {path.parent}; ids must be unique"
            )
    return by_name


def _resolve(ids: list[str], files: dict[str, Path], what: Path) -> list[Path]:
    """Ids may carry the file extension or not (both are common on Kaggle). An id without one that
    two files answer to (a.png and a.jpg) is refused: either could be the image it means."""
    stems: dict[str, list[Path]] = {}
    for file in files.values():
        stems.setdefault(file.stem, []).append(file)
    paths, missing = [], []
    for image_id in ids:
        path = files.get(image_id)
        if path is None and len(stems.get(image_id, ())) > 1:
            both = ", ".join(sorted(p.name for p in stems[image_id]))
            raise LedgerError(f"{what}: id {image_id!r} matches {len(stems[image_id])} image files ({both}); "
                              f"name the file in the id, or keep one of them")
        path = path or (stems[image_id][0] if image_id in stems else None)
        if path is None:
            missing.append(image_id)
        paths.append(path)
    if missing:
        shown = ", ".join(missing[:5])
        raise LedgerError(f"{what}: {len(missing)} id(s) with no image in the image folder (e.g. {shown})")
    return paths


def load_competition(data: DataSpec) -> Competition:
    root = data.root
    if not root.is_dir():
        raise LedgerError(f"{root}: data folder not found (data.root)")
    train_dir, test_dir = root / data.train_dir, root / data.test_dir
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise LedgerError(f"{folder}: folder not found")

    if data.labels == "folders":
        class_dirs = sorted(p for p in train_dir.iterdir() if p.is_dir() and not _hidden(p.name))
        if not class_dirs:
            raise LedgerError(f"{train_dir}: no class folders (data.labels is 'folders')")
        ids, paths, names = [], [], []
        for class_dir in class_dirs:
            files = image_files(class_dir)
            if not files:
                raise LedgerError(f"{class_dir}: class {class_dir.name!r} has no images")
            ids += [p.name for p in files]
            paths += files
            names += [class_dir.name] * len(files)
        _unique_names(paths, train_dir)
    else:
        csv_path = root / data.labels
        table = _read_csv(csv_path)
        label_cols = (data.label_col,) if isinstance(data.label_col, str) else data.label_col
        for column in (data.id_col, *label_cols, *data.extra_targets):
            if column not in table.columns:
                raise LedgerError(f"{csv_path}: missing column {column!r} (columns: {', '.join(table.columns)})")
        ids = list(table[data.id_col])
        names = list(table[data.label_col]) if isinstance(data.label_col, str) else []
        if not ids:
            raise LedgerError(f"{csv_path}: no rows under its header; the label file lists no training image")
        repeated = list(dict.fromkeys(table[data.id_col][table[data.id_col].duplicated()]))
        if repeated:
            raise LedgerError(
                f"{csv_path}: {len(repeated)} id(s) in more than one row of {data.id_col!r} (e.g. {', '.join(repeated[:5])})"
            )
        if data.task == SINGLE_LABEL:
            _refuse_missing(csv_path, data.label_col, ids, names)
        # Images may sit flat in train_dir or in class subfolders (as Paddy ships them).
        found = sorted(
            p for p in train_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            and not any(_hidden(part) for part in p.relative_to(train_dir).parts)
        )
        files = _unique_names(found, train_dir)
        paths = _resolve(ids, files, csv_path)
    if data.task != SINGLE_LABEL:
        vocab, labels = targets_of(data, table, csv_path, ids)
    else:
        vocab, labels = _encode(names)
    if data.task == SINGLE_LABEL and len(vocab) < 2:
        where = csv_path if data.labels != "folders" else train_dir
        raise LedgerError(f"{where}: every training image has the label {vocab[0]!r}; a classifier needs two "
                          f"classes or more")
    extra = []
    for column in data.extra_targets:
        values = list(table[column])
        _refuse_missing(csv_path, column, ids, values)
        extra.append(ExtraTarget(column, *_encode(values)))

    sample_path = root / data.sample_submission
    sample = _read_csv(sample_path)
    if sample.shape[1] < 2:
        raise LedgerError(f"{sample_path}: expected an id column and a label column, found {list(sample.columns)}")
    test_ids = list(sample.iloc[:, 0])
    if not test_ids:
        raise LedgerError(f"{sample_path}: no rows under its header; the sample submission lists no test image")
    repeated = sorted({str(i) for i in test_ids if test_ids.count(i) > 1}) if len(set(test_ids)) < len(test_ids) else []
    if repeated:
        raise LedgerError(f"{sample_path}: {len(repeated)} id(s) listed twice (e.g. {', '.join(repeated[:5])}); "
                          f"a submission has one row per test image")
    test_files = {p.name: p for p in image_files(test_dir)}
    stems = {p.stem: p for p in test_files.values()}
    missing = [i for i in test_ids if i not in test_files and i not in stems]
    if missing:
        raise LedgerError(
            f"{test_dir}: no test image for {len(missing)} sample-submission id(s) (e.g. {', '.join(missing[:5])})"
        )
    test_paths = _resolve(test_ids, test_files, sample_path)
    return Competition(
        root=root,
        vocab=vocab,
        train_ids=tuple(ids),
        train_paths=tuple(paths),
        train_labels=labels,
        test_ids=tuple(test_ids),
        test_paths=tuple(test_paths),
        sample_submission=sample_path,
        extra=tuple(extra),
        label_csv=None if data.labels == "folders" else root / data.labels,
        task=data.task,
    )


# What spreadsheets and pandas write for a missing value: never a class (lower-cased).
MISSING_LABELS = {"", "nan", "-nan", "null", "none", "na", "n/a", "#n/a", "#na", "<na>", "1.#ind", "1.#qnan"}


def _refuse_missing(csv_path: Path, column: str, ids: list[str], values: list[str]) -> None:
    missing = [(i, value) for i, value in zip(ids, values) if value.strip().lower() in MISSING_LABELS]
    if missing:
        shown = ", ".join(f"{i} ({value!r})" for i, value in missing[:5])
        raise LedgerError(f"{csv_path}: {len(missing)} row(s) with a missing {column!r} (empty, NaN, null or "
                          f"N/A), e.g. {shown}; label them or drop the rows")


def targets_of(data: DataSpec, table: pd.DataFrame, csv_path: Path, ids: list[str]
               ) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, float32 (N, T)) of a multi_label or regression label CSV: the sorted tags of a column
    of space-separated tags (an empty cell: no tag) or the 0/1 columns as listed; the numbers of
    the listed columns."""
    columns = [data.label_col] if isinstance(data.label_col, str) else list(data.label_col)
    if data.task == MULTI_LABEL and isinstance(data.label_col, str):
        tags = [cell.split() for cell in table[data.label_col]]
        vocab = tuple(sorted({tag for row in tags for tag in row}))
        if not vocab:
            raise LedgerError(f"{csv_path}: column {data.label_col!r} holds no tag at all; nothing to learn")
        index = {tag: i for i, tag in enumerate(vocab)}
        labels = np.zeros((len(ids), len(vocab)), dtype=np.float32)
        for row, row_tags in enumerate(tags):
            labels[row, [index[t] for t in row_tags]] = 1.0
        return vocab, labels
    values = np.zeros((len(ids), len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        numbers = pd.to_numeric(table[column].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        if data.task == MULTI_LABEL:
            bad |= ~np.isin(numbers, (0.0, 1.0))
        if bad.any():
            shown = ", ".join(f"{ids[i]} ({table[column].iloc[i]!r})" for i in np.flatnonzero(bad)[:5])
            expected = "0 or 1 (a tag's column)" if data.task == MULTI_LABEL else "a finite number"
            raise LedgerError(f"{csv_path}: {int(bad.sum())} row(s) of column {column!r} not {expected}, e.g. {shown}")
        values[:, j] = numbers
    if data.task == REGRESSION and (values.std(axis=0) == 0).any():
        column = columns[int(np.argmax(values.std(axis=0) == 0))]
        raise LedgerError(f"{csv_path}: column {column!r} holds one value for every image; nothing to learn")
    return tuple(columns), values


def _encode(names: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted vocab and each name's index in it."""
    vocab = tuple(sorted(set(names)))
    index = {name: i for i, name in enumerate(vocab)}
    return vocab, np.array([index[n] for n in names], dtype=np.int64)


# ---------------------------------------------------------------- decoding and the image cache
