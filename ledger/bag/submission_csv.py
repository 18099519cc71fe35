"""The submission CSV: the sample submission read as strings, and the bag written in its columns,
ids and order, atomically, the ledger row committed with the rename."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ledger.bag.ensemble import BagResult
from ledger.errors import LedgerError
from ledger.bag.matching import IdMatcher, as_str, check_unique, few
from ledger.processes import process_alive
from ledger.bag.submission_shape import LABEL, Shape, fill


def read_sample_submission(
    path: Path, id_col: str | None = None, label_col: str | None = None
) -> tuple[pd.DataFrame, str, str]:
    """The sample submission as strings (ids like "001" or "NA" kept verbatim), with its id and
    label column names: the first and second columns unless named."""
    try:
        # index_col=False: never let pandas turn the first column into the index.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except FileNotFoundError:
        raise LedgerError(f"{path}: sample submission not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise LedgerError(f"{path}: unreadable sample submission ({e})") from None
    columns = list(frame.columns)
    id_col = id_col if id_col is not None else columns[0]
    if label_col is None:
        if len(columns) < 2:
            raise LedgerError(f"{path}: sample submission has no label column (columns: {columns})")
        label_col = columns[1]
    for name in (id_col, label_col):
        if name not in columns:
            raise LedgerError(f"{path}: no column {name!r} in the sample submission ({columns})")
    if id_col == label_col:
        raise LedgerError(f"{path}: id and label column are both {id_col!r}")
    return frame, id_col, label_col


def write_submission(
    sample_submission: Path,
    result: BagResult,
    out: Path,
    id_col: str | None = None,
    label_col: str | None = None,
    commit: Callable[[str], object] | None = None,
    shape: Shape | None = None,
    decision=None,
) -> pd.DataFrame:
    """Write `out`: the sample submission's columns, header, ids and order, with the columns that
    `shape` names filled (default: the label column holding the predicted class names).

    Written to `.<name>.tmp-<pid>` and renamed, so `out` is the old file or the whole new one, never
    half written. `commit(sha256)` (the ledger row) runs right after the rename: if it fails, the
    new file is removed and the old one put back, so a CSV only stands once its row exists. Stale
    temporary files of dead processes next to `out` are removed first."""
    frame, id_col, label_col = read_sample_submission(sample_submission, id_col, label_col)
    sample_ids = frame[id_col].to_numpy(str)
    check_unique(sample_ids, f"{sample_submission}")
    positions = IdMatcher(sample_ids).positions(as_str(result.ids))
    if (positions < 0).any():
        raise LedgerError(
            f"{sample_submission}: {(positions < 0).sum()} ids have no prediction: "
            f"{few(sample_ids[positions < 0])}"
        )
    fill(frame, shape or Shape(LABEL, (label_col,)), result.vocab, result.probs[positions], decision)

    out = Path(out)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    previous = out.with_name(f".{out.name}.tmp-{os.getpid()}.old")  # the old file, until the commit holds
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        frame.to_csv(temporary, index=False)
        sha256 = hashlib.sha256(temporary.read_bytes()).hexdigest()
        _unlink(previous)  # left by a dead process whose pid was ours
        if out.exists():
            os.link(out, previous)  # a second name for the old file: the rename below replaces only `out`
        os.replace(temporary, out)
    except OSError as e:
        _unlink(previous)
        raise LedgerError(f"{out}: cannot write submission ({e})") from None
    finally:
        _unlink(temporary)  # after a successful replace it is already gone; also on Ctrl-C
    try:
        if commit is not None:
            commit(sha256)
    except BaseException:
        # No row, no file: put the old file back (or remove the new one) before the error goes on.
        if previous.exists():
            os.replace(previous, out)
        else:
            _unlink(out)
        raise
    _unlink(previous)
    return frame


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # e.g. the parent could not be created: there is no file either


_TEMPORARY = re.compile(r"^\.?(?P<name>.+)\.tmp-(?P<pid>\d+)(\.old)?$")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove temporary files that a killed `ledger ensemble` (SIGKILL, power loss: no `finally`
    runs) left next to `out`: `.<name>.csv.tmp-<pid>[.old]` whose process is gone. Files of live
    processes are another command writing right now and are left alone."""
    removed = []
    for path in Path(out).parent.glob("*.csv.tmp-*"):
        match = _TEMPORARY.match(path.name)
        if match and not process_alive(int(match["pid"])):
            _unlink(path)
            removed.append(path)
    return removed
