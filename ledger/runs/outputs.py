"""Where a command may write: one guard for every `--out` (ensemble, predict, export, report,
lr-find), and a reservation of the name while it writes.

An output never replaces, nor lands inside, what ledger reads or records:
  - a ledger home's ledger.db (and its -wal and -shm files) and its run folders, in the home the
    command uses and in any home the path lies in (a folder holding a ledger.db);
  - the spec file, the spec's data folder and everything in it (train.csv, the sample submission,
    the images), and any input the command reads (predict's images);
  - a submission file recorded in the ledger (its row keeps the sha256 that `submit` checks).
A folder output may not hold any of them either: replacing it would delete them. Nor does a home
itself take an output, though ledger's own places inside it (submissions/, lr_find/) do.
An existing output is replaced only with `force`, and only when it is ledger's own output of the
same kind: a file for a file, a bundle folder (its manifest.json) for a bundle; a report goes only
into an empty folder or an earlier report's (its report.html). A user's folder is never replaced.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ledger.errors import LedgerError, SpecError
from ledger.processes import process_alive
from ledger.runs import artifacts
from ledger.store.lost_ledger import LEDGER_FILE, RUN_MARKS, run_folders
from ledger.store.migrations import path_from_home

FILE, BUNDLE, REPORT = "file", "bundle", "report"  # the kinds of output
_OWN_MARK = {BUNDLE: "manifest.json", REPORT: "report.html"}  # what ledger's own folder of a kind holds
# A guard errs wide: any file a run writes marks its folder (a lost ledger needs surer signs).
_RUN_FILES = (*RUN_MARKS, artifacts.TEST_PREDS, artifacts.VALID_PREDS, artifacts.WEIGHTS)
_RESERVATION_GRACE_S = 60  # a reservation without a pid yet is a writer starting, unless older than this


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _homes(out: Path, given: Sequence[Path]) -> list[Path]:
    """The homes to protect: those given, the default ones ($LEDGER_HOME, ./runs) and every folder
    above `out` that holds a ledger.db. (A ledger elsewhere cannot be known from here.)"""
    defaults = [Path(os.environ["LEDGER_HOME"])] if os.environ.get("LEDGER_HOME") else []
    candidates = [*given, *defaults, Path("runs"), *out.parents]
    found = [Path(h).resolve() for h in given]
    found += [Path(h).resolve() for h in candidates if (Path(h) / LEDGER_FILE).is_file()]
    return list(dict.fromkeys(found))


def _recorded_submissions(home: Path) -> list[Path]:
    """Submission files a home's ledger records, read without writing to it (read-only, so a
    ledger this user may not write, or an older schema, is read all the same)."""
    try:
        db = sqlite3.connect(f"{(home / LEDGER_FILE).as_uri()}?mode=ro", uri=True)
        try:
            paths = [Path(row[0]) for row in db.execute("SELECT path FROM submissions")]
        finally:
            db.close()
    except sqlite3.Error:
        return []  # no such table yet, or unreadable: the home's own parts are guarded all the same
    return [path_from_home(str(p), home).resolve() for p in paths]


def protected(out: Path, spec=None, homes: Sequence[Path] = (), reads: Sequence[Path] = ()) -> list[tuple[Path, str]]:
    """(path, what it is) for everything an output at `out` must stay clear of."""
    found: list[tuple[Path, str]] = []
    for home in _homes(out, homes):
        found.append((home, "the ledger home"))
        found += [((home / f"{LEDGER_FILE}{suffix}").resolve(), "the ledger") for suffix in ("", "-wal", "-shm")]
        found += [(run.resolve(), "the run folder") for run in run_folders(home, _RUN_FILES)]
        found += [(path, "a recorded submission") for path in _recorded_submissions(home)]
    if spec is not None:
        if spec.path is not None:
            found.append((Path(spec.path).resolve(), "the spec"))
        found.append((Path(spec.data.root).resolve(), "the competition data folder"))
        if getattr(spec, "pseudo", None) is not None:
            found.append((Path(spec.pseudo.teacher).resolve(), "the teacher's spec"))
    found += [(Path(path).resolve(), "an input of this command") for path in reads]
    return found


def guard_output(out: Path, kind: str = FILE, *, spec=None, homes: Sequence[Path] = (), reads: Sequence[Path] = (),
                 force: bool = False, option: str = "--out") -> Path:
    """`out` made absolute, or one line (a `SpecError`: the option's value is at fault) that names
    it and what it would replace. `kind`: FILE, BUNDLE (a folder replaced whole) or REPORT (a folder
    written into)."""
    out = Path(out).absolute()
    resolved = out.resolve()
    if kind == FILE and out.is_dir():  # first: the plainest thing to say about it
        raise SpecError(f"{option} {out}: is a folder; give a file name")
    for path, what in protected(resolved, spec, homes, reads):
        if what == "the ledger home":
            if resolved == path:  # inside it is fine where nothing else below objects (submissions/, lr_find/)
                raise SpecError(f"{option} {out}: is a ledger home; write outputs elsewhere, or in a file or "
                                f"folder of their own inside it")
            continue
        if _inside(resolved, path):
            where = "is" if resolved == path else "lies inside"
            raise SpecError(f"{option} {out}: {where} {what} {path}; ledger never writes over what it reads or "
                            f"records: choose another path")
        if _inside(path, resolved):
            raise SpecError(f"{option} {out}: holds {what} {path}, which writing there could replace or mix "
                            f"with; choose another path")
    if out.exists() or out.is_symlink():
        _check_existing(out, kind, force, option)
    return out


def _check_existing(out: Path, kind: str, force: bool, option: str) -> None:
    if kind == FILE:
        if not force:
            raise SpecError(f"{option} {out}: already exists; give another name, or --force to replace it")
        return
    if not out.is_dir():
        raise SpecError(f"{option} {out}: is a file; {option} takes a folder")
    mark = _OWN_MARK[kind]
    if (out / mark).is_file():
        if kind == BUNDLE and not force:
            raise SpecError(f"{option} {out}: already exists; give another --out, or --force to replace it")
        return
    if kind == REPORT and not any(out.iterdir()):
        return  # an empty folder: nothing to mix with
    raise SpecError(f"{option} {out}: a folder ledger did not write (no {mark} in it); ledger replaces only its "
                    f"own {kind} folders, even with --force: choose a new folder")


# ---------------------------------------------------------------- reserving the name


def reservation(out: Path) -> Path:
    """The file that holds `out`'s name while a command writes it."""
    return out.with_name(f".{out.name}.writing")


@contextmanager
def reserved(out: Path) -> Iterator[Path]:
    """Hold `out`'s name while this process writes it: a second writer of the same name (another
    `ensemble --out` at the same moment) is refused in one line instead of replacing the first's
    file after both recorded it. The reservation is a file made with O_EXCL (atomic on every local
    filesystem) holding the writer's pid; one left by a dead process is taken over."""
    marker = reservation(Path(out))
    marker.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(marker)
            if holder is not None:
                who = f" (pid {holder})" if holder > 0 else ""
                raise LedgerError(f"{out}: another ledger command{who} is writing it right now; "
                                  f"wait for it, or choose another name") from None
            marker.unlink(missing_ok=True)  # its writer is gone
            continue
        except OSError as e:
            raise LedgerError(f"{out}: cannot write here ({e.strerror or e})") from None
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(os.getpid()))
        break
    else:
        raise LedgerError(f"{out}: another ledger command is writing it right now; wait for it, or choose another name")
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)


def _holder(marker: Path) -> int | None:
    """The live pid holding a reservation, or None when its writer is gone."""
    try:
        text = marker.read_text().strip()
        age = time.time() - marker.stat().st_mtime
    except OSError:
        return None
    if not text.isdigit():
        return 0 if age < _RESERVATION_GRACE_S else None  # its pid is being written this instant
    pid = int(text)
    return pid if process_alive(pid) else None
