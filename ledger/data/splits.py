"""How a competition's training images are split: a random stratified split, stratified K folds
(kept whole by group with `split.group`), and the smallest class the memory probe trains on.
Pure functions of the labels and a seed, so every run of a spec agrees on them."""

from __future__ import annotations

import numpy as np

from ledger.errors import LedgerError


def split_indices(labels: np.ndarray, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random split, stratified by class so that every class with 2+ images is in both parts."""
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_valid = int(round(len(members) * valid_pct))
        if valid_pct > 0 and len(members) >= 2:
            n_valid = min(max(n_valid, 1), len(members) - 1)
        valid.append(members[:n_valid])
        train.append(members[n_valid:])
    # Sorted so the order does not depend on the class loop; training shuffles anyway.
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


def fold_indices(labels: np.ndarray, folds: int, fold: int, seed: int,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fold `fold` of a stratified K-fold split: (train, valid) indices, sorted.

    Each class's members, permuted with `seed`, are dealt round-robin into the K folds, continuing
    from class to class, so every fold has each class's share to within one image (and the folds'
    sizes differ by at most one). Over fold = 0..K-1 every index is in exactly one valid set.

    With `groups` (one value per image), every group lies inside one fold, so a model is never
    validated on a source (patient, plant, photographer) it trained on; scikit-learn's
    StratifiedGroupKFold keeps the folds' class shares as close as whole groups allow.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"need folds >= 2 and 0 <= fold < folds, got folds={folds}, fold={fold}")
    if groups is not None:
        return _group_fold_indices(labels, folds, fold, seed, groups)
    rng = np.random.default_rng(seed)
    dealt = np.concatenate([rng.permutation(np.flatnonzero(labels == cls)) for cls in np.unique(labels)])
    in_fold = np.arange(len(dealt)) % folds == fold
    return np.sort(dealt[~in_fold]), np.sort(dealt[in_fold])


def _group_fold_indices(labels: np.ndarray, folds: int, fold: int, seed: int,
                        groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.model_selection import StratifiedGroupKFold
    except ImportError:
        raise LedgerError("split.group needs scikit-learn (pip install scikit-learn)") from None
    distinct = len(set(groups))
    if distinct < folds:
        raise LedgerError(f"split.group: {distinct} group(s) cannot fill {folds} folds (split.folds)")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, valid = list(splitter.split(np.zeros(len(labels)), labels, groups))[fold]
    return np.sort(train), np.sort(valid)


def smallest_class_indices(labels: np.ndarray) -> np.ndarray:
    """The images of the least populated class (ties: the first in vocab order) for the memory
    probe: same image size and batch size as the real run, so the same memory, in a fraction of
    the time."""
    classes, counts = np.unique(labels, return_counts=True)
    return np.flatnonzero(labels == classes[np.argmin(counts)])
