"""Pseudo-labels that keep the out-of-bag estimate honest.

`pseudo: {teacher: TEACHER.yaml, threshold: 0.9, weight: 1.0}` adds the test images a teacher bag
predicts confidently (its mean probability's top class at `threshold` or above) to each run's
training images, labelled with that class.

The leak it must not open: a teacher run that trained on image i's label predicts the test images
with that knowledge, so a student validated on i would be scored on a label it learned second-hand,
and the out-of-bag estimate would rise without the submission doing so. So a student run takes its
pseudo-labels only from the teacher runs that held out exactly its own validation images: the
teacher's split must be the student's (same folds, seed, group column, or the same fixed random
split), the plan picks the teacher runs of the student's fold, and before training the teacher
runs' held-out ids are checked to contain every one of the student's (`pseudo_labels`).

No torch here. The `pseudo:` section itself is parsed in `spec/pseudo_section.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ledger.store.rows import RunStatus
from ledger.errors import LedgerError
from ledger.spec.fingerprint import teacher_fingerprints
from ledger.spec.pseudo_section import PseudoSpec

# A confidence within this of the threshold counts as reaching it: the choice must not depend on the
# last bits a CPU or BLAS build leaves in a probability.
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class TeacherRun:
    run_id: str
    folder: Path  # its artifact folder
    folds: int | None
    fold: int | None
    split_seed: int | None


@dataclass(frozen=True)
class PseudoPlan:
    """What one student run takes its pseudo-labels from."""

    teachers: tuple[TeacherRun, ...]
    threshold: float
    weight: float


def teacher_spec(pseudo: PseudoSpec):
    from ledger.spec.loader import load_spec

    return load_spec(pseudo.teacher, check_models=False)


def teacher_runs(spec, store) -> list[TeacherRun]:
    """The teacher bag: done runs of the teacher's experiment whose fingerprint an entry of the
    teacher's spec has (as `ledger ensemble TEACHER.yaml` would bag them)."""
    if spec.pseudo is None:
        return []
    taught = teacher_spec(spec.pseudo)
    current = set(teacher_fingerprints(spec.pseudo))
    runs = []
    for row in store.runs(taught.name):
        if row.status == RunStatus.DONE and row.fingerprint in current and row.artifact_dir:
            runs.append(TeacherRun(row.id, store.artifact_path(row), row.folds, row.fold, row.split_seed))
    return runs


def pseudo_plan(pseudo: PseudoSpec, split, teachers: Sequence[TeacherRun]) -> PseudoPlan:
    """The teacher runs that held out the student's split (`split`, a SplitPlan): same fold of the
    same assignment, or the same fixed random split."""
    mine = tuple(t for t in teachers if (t.folds, t.fold, t.split_seed) == (split.folds, split.fold, split.seed))
    if not mine:
        raise LedgerError(f"pseudo.teacher {pseudo.teacher}: no done teacher run held out {split.describe()}; "
                          f"train the teacher on it first (ledger train {pseudo.teacher})")
    return PseudoPlan(mine, pseudo.threshold, pseudo.weight)


def pseudo_labels(plan: PseudoPlan, competition, valid_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(test image indices, their labels): the test images whose teacher-bag confidence reaches the
    threshold. Refuses a teacher run that trained on any of the student's validation images."""
    from ledger.runs import artifacts

    student_valid = set(np.asarray(competition.train_ids)[valid_idx])
    probs = []
    for teacher in plan.teachers:
        held_out = artifacts.load_predictions(teacher.folder / artifacts.VALID_PREDS)
        trained_on = student_valid - set(held_out.ids)
        if trained_on:
            raise LedgerError(f"pseudo.teacher: run {teacher.run_id} trained on {len(trained_on)} of this run's "
                              f"validation images (e.g. {sorted(trained_on)[0]}); its pseudo-labels would leak them")
        test = artifacts.load_predictions(teacher.folder / artifacts.TEST_PREDS)
        if tuple(test.vocab) != tuple(competition.vocab) or tuple(test.ids) != tuple(competition.test_ids):
            raise LedgerError(f"pseudo.teacher: run {teacher.run_id} predicted other classes or test images "
                              f"({teacher.folder})")
        probs.append(test.probs)
    bag = np.mean(probs, axis=0)
    chosen = np.flatnonzero(bag.max(axis=1) >= plan.threshold - _TOLERANCE)
    return chosen, bag[chosen].argmax(axis=1).astype(np.int64)


class JoinedImages:
    """The training cache followed by the chosen test images, indexed as one (N, 3, H, W) array
    without copying the (possibly memory-mapped) training cache."""

    def __init__(self, train: np.ndarray, extra: np.ndarray):
        self.train, self.extra = train, extra
        self.shape = (len(train) + len(extra), *train.shape[1:])
        self.dtype = train.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        first = rows < len(self.train)
        out[first] = self.train[rows[first]]
        out[~first] = self.extra[rows[~first] - len(self.train)]
        return out


def training_set(images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, test_images: np.ndarray,
                 chosen: np.ndarray, chosen_labels: np.ndarray, weight: float, classes: int, smoothing: float = 0.0):
    """(images, labels, indices) for the training batches: the split's training images, then the
    pseudo-labelled test images. With a weight other than 1 the labels are soft rows, label smoothing
    applied ((1 - eps) one-hot + eps / classes, torch's smoothed cross-entropy) and the pseudo-labelled
    rows scaled by the weight: the loss's soft-target branch, sum(-target * log p), then weighs each
    image's cross-entropy by it."""
    joined = JoinedImages(images, np.asarray(test_images[chosen]))
    indices = np.concatenate([train_idx, len(images) + np.arange(len(chosen))])
    if abs(weight - 1.0) < _TOLERANCE:
        return joined, np.concatenate([labels, chosen_labels]), indices
    every = np.concatenate([labels, chosen_labels])
    soft = np.full((len(every), classes), smoothing / classes, dtype=np.float32)
    soft[np.arange(len(every)), every] += 1.0 - smoothing
    soft[len(labels):] *= weight
    return joined, soft, indices
