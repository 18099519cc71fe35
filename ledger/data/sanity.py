"""What `ledger check` finds in a competition folder that would otherwise fail only after training,
or never: refusals (one line, naming the file and key) and warnings (printed, the spec still valid).

Refused: a group column (split.group) with empty values, or with fewer groups than folds (one group
cannot be held out from itself). Warned: class labels that differ only by spaces or number format
("cat" and "cat ", "1" and "1.0": surely one class written two ways, which trains as two), and
folds beyond the smallest class's count (some folds then hold none of it out).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ledger.data.competition import MISSING_LABELS, Competition
from ledger.errors import LedgerError


def _canonical(label: str) -> str:
    """A label with its spaces folded and a number written one way."""
    text = re.sub(r"\s+", " ", str(label)).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(number) if np.isfinite(number) else text


def similar_labels(vocab: Sequence[str]) -> list[list[str]]:
    """Groups of two or more classes that are one label written differently."""
    groups: dict[str, list[str]] = {}
    for label in vocab:
        groups.setdefault(_canonical(label), []).append(str(label))
    return [names for names in groups.values() if len(names) > 1]


def check_groups(competition: Competition, split) -> None:
    """split.group's column: no empty value, and enough distinct groups to fill the folds."""
    if split.group is None:
        return
    values = [str(v) for v in competition.train_column(split.group)]
    empty = [competition.train_ids[i] for i, v in enumerate(values) if v.strip().lower() in MISSING_LABELS]
    if empty:
        raise LedgerError(f"{competition.label_csv}: split.group column {split.group!r} is empty for {len(empty)} "
                          f"image(s) (e.g. {', '.join(map(str, empty[:3]))}); every image needs its group")
    distinct = len(set(values))
    needed = max(split.folds or 2, 2)
    if distinct < needed:
        raise LedgerError(f"{competition.label_csv}: split.group column {split.group!r} holds {distinct} group(s); "
                          f"{needed} are needed to hold a group out of each of {needed} folds")


def warnings(spec, competition: Competition) -> list[str]:
    """What `ledger check` prints as a warning: the spec is valid, but probably not meant so."""
    found = []
    for names in similar_labels(competition.vocab):
        shown = ", ".join(repr(n) for n in names)
        found.append(f"classes {shown} differ only by spaces or number format, and train as {len(names)} classes; "
                     f"the classes: {', '.join(repr(str(v)) for v in competition.vocab)}")
    folds = spec.split.folds
    if folds and competition.task == "single_label":
        classes, counts = np.unique(competition.train_labels, return_counts=True)
        if counts.min() < folds:
            smallest = competition.vocab[int(classes[np.argmin(counts)])]
            found.append(f"split.folds {folds}, but class {str(smallest)!r} has {counts.min()} image(s): "
                         f"{folds - counts.min()} fold(s) hold none of it out")
    return found
