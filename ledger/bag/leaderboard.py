"""The leaderboard in the ledger: the scores Kaggle gave a submission, and handing a submission's
file to the `kaggle` command.

Kaggle is not a dependency: `submit` looks for its command on PATH and, without it, says how to
install it. Nothing here prints; the caller shows what kaggle said.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
from dataclasses import dataclass

from ledger.errors import LedgerError
from ledger.store.database import now
from ledger.bag.submission import resolve_submission_id

INSTALL_KAGGLE = ("the kaggle command is not on PATH: install it with `pip install kaggle` and put your API token "
                  "(kaggle.com > Settings > API > Create New Token) in ~/.kaggle/kaggle.json")


def _score(name: str, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise LedgerError(f"{name} score {value}: expected a finite number, as the leaderboard shows it")
    return value


def record_scores(store, submission: str, public: float, private: float | None = None) -> dict:
    """Keep the public (and, after the deadline, private) leaderboard score of a submission, named
    by id or unique id prefix, beside its out-of-bag estimate. Returns the updated row."""
    row = resolve_submission_id(store, submission)
    changes = {"public_score": _score("public", public)}
    if private is not None:
        changes["private_score"] = _score("private", private)
    store.update_submission(row["id"], changes)
    return row | changes


@dataclass(frozen=True)
class Handed:
    """What came of one `kaggle competitions submit`."""

    submission: dict  # the ledger row, as updated
    command: list[str]
    exit_code: int
    output: str  # kaggle's stdout and stderr, for the user to read


def submit(store, submission: str, message: str, competition: str | None) -> Handed:
    """Run `kaggle competitions submit -c SLUG -f FILE -m MSG` for a recorded submission and keep
    the message, the competition and kaggle's exit status in its row, whatever that status is."""
    row = resolve_submission_id(store, submission)
    if not competition:
        raise LedgerError(f"submission {row['id']}: --competition SLUG is needed (the name in the competition's "
                          f"address, e.g. paddy-disease-classification)")
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        raise LedgerError(INSTALL_KAGGLE)
    path = store.submission_path(row)
    if not path.is_file():
        raise LedgerError(f"submission {row['id']}: its file {path} is gone")
    if row.get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
        raise LedgerError(f"submission {row['id']}: {path} has changed since it was written (sha256 "
                          f"{row['sha256'][:12]} on record); nothing was handed to kaggle")
    command = [kaggle, "competitions", "submit", "-c", competition, "-f", str(path), "-m", message]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
        raise LedgerError(f"{kaggle}: cannot run it ({e})") from None
    changes = {"message": message, "competition": competition, "submitted_at": now(), "kaggle_exit": done.returncode}
    store.update_submission(row["id"], changes)
    return Handed(row | changes, command, done.returncode, (done.stdout + done.stderr).strip())
