"""The files of one run folder, read and written in one place.

A run folder `runs/<experiment>/<run_id>/` holds:
  spec.yaml         the resolved model entry it was trained from
  metrics.csv       one row per epoch: epoch, phase, train_loss, valid_loss, error_rate, seconds
  valid_preds.npz   ids, probs (N x C float32), labels (true class names), vocab: the held-out images;
                    with task multi_label or regression, probs are per-tag probabilities or numbers,
                    vocab the tags or target columns, targets (N x C float32) the truth, and task
                    names the task
  test_preds.npz    ids, probs (N x C float32, TTA-blended), vocab: in sample-submission order
  *_preds_<target>.npz  the same for each of data.extra_targets (valid ones TTA'd too)
  summary.json      the figures the ledger row carries
  model.safetensors optional weights
`execute` builds the folder as `<run_id>.partial/` and renames it when complete, so a folder with
the final name is always whole.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ledger.errors import LedgerError, first_line

VALID_PREDS = "valid_preds.npz"
TEST_PREDS = "test_preds.npz"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
SPEC = "spec.yaml"
WEIGHTS = "model.safetensors"


def predictions_file(base: str, target: str | None = None) -> str:
    """`test_preds.npz` for the submission's target, `test_preds_<target>.npz` for an extra one."""
    if target is None:
        return base
    stem, suffix = base.rsplit(".", 1)
    return f"{stem}_{target}.{suffix}"


@dataclass(frozen=True)
class Predictions:
    """Predictions for a list of image ids: class probabilities (single_label), tag probabilities
    (multi_label) or numbers (regression). The truth when known: `labels` holds true class names,
    `targets` true tags (0/1) or numbers."""

    ids: np.ndarray  # str, shape (N,)
    probs: np.ndarray  # float32, shape (N, C)
    vocab: np.ndarray  # str, shape (C,): classes, tags or target columns
    labels: np.ndarray | None = None  # str, shape (N,)
    targets: np.ndarray | None = None  # float32, shape (N, C)
    task: str = "single_label"

    @property
    def truth(self) -> np.ndarray | None:
        return self.labels if self.task == "single_label" else self.targets


def _check_finite(path: Path, probs: np.ndarray) -> None:
    """NaN or infinite probabilities would bag into a CSV of one class without a word."""
    bad = ~np.isfinite(probs)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise LedgerError(f"{path}: {int(bad.any(axis=-1).sum())} of {len(probs)} rows of probabilities are not "
                          f"finite (first at row {row})")


def save_predictions(path: Path, preds: Predictions) -> None:
    _check_finite(path, np.asarray(preds.probs))
    arrays = {
        "ids": np.asarray(preds.ids, dtype=str),
        "probs": np.asarray(preds.probs, dtype=np.float32),
        "vocab": np.asarray(preds.vocab, dtype=str),
    }
    if preds.labels is not None:
        arrays["labels"] = np.asarray(preds.labels, dtype=str)
    if preds.targets is not None:
        arrays["targets"] = np.asarray(preds.targets, dtype=np.float32)
    if preds.task != "single_label":  # files of single-label runs stay as they were
        arrays["task"] = np.asarray(preds.task, dtype=str)
    # np.savez appends .npz to names without it; the caller's name already has it.
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_predictions(path: Path) -> Predictions:
    try:
        with np.load(path, allow_pickle=False) as z:
            preds = Predictions(
                ids=z["ids"],
                probs=z["probs"],
                vocab=z["vocab"],
                labels=z["labels"] if "labels" in z.files else None,
                targets=z["targets"] if "targets" in z.files else None,
                task=str(z["task"]) if "task" in z.files else "single_label",
            )
    except FileNotFoundError:
        raise LedgerError(f"{path}: missing run artifact") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        if "allow_pickle" in str(e):  # numpy's advice to allow pickles would run whatever code the file holds
            raise LedgerError(f"{path}: holds Python objects, which ledger never loads (a run artifact holds "
                              f"arrays of text and numbers only); it is damaged or not ledger's") from None
        raise LedgerError(f"{path}: unreadable run artifact ({type(e).__name__}: {first_line(e)})") from None
    if preds.probs.ndim != 2 or len(preds.probs) != len(preds.ids) or preds.probs.shape[1] != len(preds.vocab):
        raise LedgerError(f"{path}: unreadable run artifact (probs of shape {preds.probs.shape} for "
                          f"{len(preds.ids)} ids and {len(preds.vocab)} classes)")
    _check_finite(path, preds.probs)
    return preds


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def sha256_file(path: Path) -> str:
    """A file's sha256, read in 1 MiB blocks: what a run's checksums and a bundle's manifest record."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
