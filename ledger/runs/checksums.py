"""The sha256 of a run's files, taken when the run finishes, and checked by every command that
reads them: `ensemble` (predictions), `predict` and `export` (weights).

A file damaged later (a disk error, a copy cut short, an edit by hand) is then refused in one line
that names the run and the file, instead of being bagged, predicted with or shipped in a bundle
whose manifest would vouch for it with a fresh hash of the damage. The sums live in the run's
ledger row (`checksums`, JSON) and in the folder as `checksums.json`, which `ledger runs
--rebuild` reads when the ledger itself was lost. Runs recorded before the sums have none and are
read as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ledger.errors import LedgerError
from ledger.runs import artifacts
from ledger.runs.artifacts import sha256_file

CHECKSUMS = "checksums.json"


def _summed(folder: Path) -> list[Path]:
    """What a later command reads from a run folder: its weights and every predictions file."""
    files = [folder / artifacts.WEIGHTS] + sorted(folder.glob("*_preds*.npz"))
    return [path for path in files if path.is_file()]


def write_checksums(folder: Path) -> dict[str, str]:
    """Sum the run's files and keep the sums in the folder; returns them (file name -> sha256)."""
    sums = {path.name: sha256_file(path) for path in _summed(Path(folder))}
    (Path(folder) / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums


def read_checksums(folder: Path) -> dict[str, str] | None:
    """The sums a run folder keeps, or None when it has none (a run from before them)."""
    try:
        return json.loads((Path(folder) / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return None


def recorded(row) -> dict[str, str]:
    """The sums a ledger row carries ({} for a run recorded before them)."""
    text = getattr(row, "checksums", None)
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def verify(row, folder: Path, names: Iterable[str]) -> dict[str, str]:
    """Check the files `names` of a run against the sums recorded when it finished; returns those
    recorded (name -> sha256). A file recorded but gone, or changed, is refused."""
    sums = recorded(row)
    checked = {}
    for name in names:
        if name not in sums:
            continue
        path = Path(folder) / name
        if not path.is_file():
            raise LedgerError(f"run {row.id}: {path} is gone since the run finished; train the run again "
                              f"(`ledger train`), or restore the file")
        if sha256_file(path) != sums[name]:
            raise LedgerError(f"run {row.id}: {path} changed since the run finished (damaged? its sha256 no "
                              f"longer matches the one recorded); restore it, or train the run again")
        checked[name] = sums[name]
    return checked
