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

No torch here: the spec side is imported by the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ledger.errors import LedgerError, SpecError
from ledger.spec_checks import Checker, resolve_path, spec_error

# A confidence within this of the threshold counts as reaching it: the choice must not depend on the
# last bits a CPU or BLAS build leaves in a probability.
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PseudoSpec:
    teacher: Path  # the teacher's spec file: its done runs, of its current entries, are the teacher bag
    threshold: float = 0.9  # the teacher bag's top probability a test image needs
    weight: float = 1.0  # each pseudo-labelled image's share of the loss, a labelled image's being 1


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


def parse_pseudo(file: Path, raw: Any, data, split) -> PseudoSpec | None:
    """The `pseudo:` section, checked against the teacher's spec: same data, same split."""
    if raw is None:
        return None
    c = Checker(file, "pseudo", raw)
    c.reject_unknown({"teacher", "threshold", "weight"})
    teacher = resolve_path(file, c.get("teacher", "str"))
    pseudo = PseudoSpec(teacher=teacher, threshold=c.get("threshold", "float", 0.9, min=0.0, max=1.0),
                        weight=c.get("weight", "float", 1.0, above=0.0))
    if not teacher.is_file():
        c.fail(f"{teacher}: spec file not found", "teacher")
    if teacher.resolve() == Path(file).resolve():
        c.fail("a spec cannot be its own teacher", "teacher")
    from ledger.spec import load_spec

    try:
        taught = load_spec(teacher, check_models=False)
    except SpecError as error:
        c.fail(f"the teacher's spec is invalid ({error})", "teacher")
    if taught.pseudo is not None:
        c.fail(f"{teacher} has pseudo-labels of its own; one round of pseudo-labelling is supported", "teacher")
    if (Path(taught.data.root).resolve(), taught.data.labels) != (Path(data.root).resolve(), data.labels):
        c.fail(f"{teacher} trains on {taught.data.root} ({taught.data.labels}), not this spec's data", "teacher")
    if data.extra_targets:
        c.fail("is not supported with data.extra_targets", "teacher")
    if split.folds is None and split.seed is None:
        c.fail("needs a fixed split (split.folds, or split.seed): a fresh random split per run has no teacher "
               "that held out the same images", "teacher")
    if taught.split != split:
        c.fail(f"{teacher} splits as {taught.split}, this spec as {split}: a student needs teacher runs that held "
               f"out its own validation images, so the splits must be the same", "teacher")
    return pseudo


def check_pseudo_models(file: Path, pseudo: PseudoSpec | None, models) -> None:
    """A weight other than 1 is carried by soft targets, which timm's Mixup cannot take."""
    if pseudo is None or abs(pseudo.weight - 1.0) < _TOLERANCE:
        return
    for i, model in enumerate(models):
        if model.mixup or model.cutmix:
            raise spec_error(file, "pseudo.weight", f"a weight other than 1 cannot be used with mixing "
                                                    f"(models[{i}].{'mixup' if model.mixup else 'cutmix'})")


def teacher_spec(pseudo: PseudoSpec):
    from ledger.spec import load_spec

    return load_spec(pseudo.teacher, check_models=False)


def teacher_fingerprints(pseudo: PseudoSpec) -> list[str]:
    """The teacher's current entries' fingerprints: a changed teacher changes its students'."""
    from ledger.fingerprint import run_fingerprint

    taught = teacher_spec(pseudo)
    return sorted(run_fingerprint(taught, model) for model in taught.models)


def teacher_runs(spec, store) -> list[TeacherRun]:
    """The teacher bag: done runs of the teacher's experiment whose fingerprint an entry of the
    teacher's spec has (as `ledger ensemble TEACHER.yaml` would bag them)."""
    if spec.pseudo is None:
        return []
    taught = teacher_spec(spec.pseudo)
    current = set(teacher_fingerprints(spec.pseudo))
    runs = []
    for row in store.runs(taught.name):
        if row.status == "done" and row.fingerprint in current and row.artifact_dir:
            folder = Path(row.artifact_dir)
            runs.append(TeacherRun(row.id, folder if folder.is_absolute() else store.home / folder, row.folds,
                                   row.fold, row.split_seed))
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
    from ledger import artifacts

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
