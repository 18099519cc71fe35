"""A ledger.db lost beside the runs it recorded: deleted, or emptied to 0 bytes.

SQLite reads a missing or empty file as an empty database, so every command would see a ledger
with no runs: `train` would plan every run again and `ensemble` find nothing to bag, while the run
folders (each with its resolved spec, summary and checksums) sit right there. Such a home is
refused in one line naming ledger.db and the run folders found, with the two ways out: restore the
file from a copy, or `ledger runs --rebuild`, which re-records the finished runs from their folders.
"""

from __future__ import annotations

from pathlib import Path

from ledger.errors import LedgerError

LEDGER_FILE = "ledger.db"
# Files of which any one makes a folder `<home>/<experiment>/<name>/` a run's (finished or partial).
RUN_MARKS = ("summary.json", "spec.yaml", "checkpoint.pt")


def run_folders(home: Path, marks: tuple[str, ...] = RUN_MARKS) -> list[Path]:
    """Folders two levels below the home that hold one of `marks`, sorted."""
    found = []
    for experiment in _folders(Path(home)):
        found += [run for run in _folders(experiment) if any((run / mark).is_file() for mark in marks)]
    return sorted(found)


def _folders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []


def lost(home: Path) -> str | None:
    """'missing' or 'empty (0 bytes)' when the home's ledger.db is gone or blank; None otherwise.
    An empty main file beside a non-empty write-ahead log is a ledger in WAL mode, not a lost one."""
    path = Path(home) / LEDGER_FILE
    if not path.exists():
        return "missing"
    wal = path.with_name(LEDGER_FILE + "-wal")
    if path.is_file() and path.stat().st_size == 0 and not (wal.is_file() and wal.stat().st_size > 0):
        return "empty (0 bytes)"
    return None


def refuse_lost_ledger(home: Path) -> None:
    """One line when ledger.db is missing or empty while run folders stand beside it."""
    state = lost(home)
    if state is None:
        return
    folders = run_folders(home)
    if not folders:
        return  # a new home, or one with nothing to lose
    shown = ", ".join(str(f.relative_to(home)) for f in folders[:3]) + (", ..." if len(folders) > 3 else "")
    raise LedgerError(f"{Path(home) / LEDGER_FILE}: {state}, but {len(folders)} run folder(s) stand beside it "
                      f"({shown}); restore ledger.db from a copy, or re-record the finished runs from their "
                      f"folders with `ledger runs --rebuild --home {home}`")
