"""The leaderboard in the ledger: the scores Kaggle gave a submission, and handing a submission's
file to the `kaggle` command.

Kaggle is not a dependency: `submit` looks for its command on PATH and, without it, says how to
install it. Nothing here prints; the caller shows what kaggle said.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
import subprocess
from dataclasses import dataclass

from ledger.errors import LedgerError
from ledger.store.database import now
from ledger.bag.submission import resolve_submission_id
from ledger.store.rows import SubmissionRow

INSTALL_KAGGLE = ("the kaggle command is not on PATH: install it with `pip install kaggle` and put your API token "
                  "(kaggle.com > Settings > API > Create New Token) in ~/.kaggle/kaggle.json")


def _score(name: str, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise LedgerError(f"{name} score {value}: expected a finite number, as the leaderboard shows it")
    return value


def record_scores(store, submission: str, public: float, private: float | None = None) -> SubmissionRow:
    """Keep the public (and, after the deadline, private) leaderboard score of a submission, named
    by id or unique id prefix, beside its out-of-bag estimate. Returns the updated row."""
    row = resolve_submission_id(store, submission)
    changes = {"public_score": _score("public", public)}
    if private is not None:
        changes["private_score"] = _score("private", private)
    store.update_submission(row.id, changes)
    return dataclasses.replace(row, **changes)


@dataclass(frozen=True)
class Handed:
    """What came of one `kaggle competitions submit`."""

    submission: SubmissionRow  # the ledger row, as updated
    command: list[str]
    exit_code: int
    output: str  # kaggle's stdout and stderr, for the user to read


SUBMIT_TIMEOUT_S = 300  # an upload of a few MB; kaggle waiting on a dead network would wait forever
TIMED_OUT, INTERRUPTED = 124, 130  # what `kaggle_exit` records when kaggle was stopped (timeout(1)'s codes)


def submit(store, submission: str, message: str, competition: str | None,
           timeout_s: float = SUBMIT_TIMEOUT_S) -> Handed:
    """Run `kaggle competitions submit -c SLUG -f FILE -m MSG` for a recorded submission and keep
    the message, the competition and kaggle's exit status in its row, whatever that status is. A
    kaggle that does not answer within `timeout_s`, or a Ctrl-C while it runs, stops it; the
    attempt is recorded (exit 124 or 130) before the one-line error, since Kaggle may have
    received the file all the same."""
    row = resolve_submission_id(store, submission)
    if not competition:
        raise LedgerError(f"submission {row.id}: --competition SLUG is needed (the name in the competition's "
                          f"address, e.g. paddy-disease-classification)")
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        raise LedgerError(INSTALL_KAGGLE)
    path = store.submission_path(row)
    if not path.is_file():
        raise LedgerError(f"submission {row.id}: its file {path} is gone")
    if row.sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != row.sha256:
        raise LedgerError(f"submission {row.id}: {path} has changed since it was written (sha256 "
                          f"{row.sha256[:12]} on record); nothing was handed to kaggle")
    command = [kaggle, "competitions", "submit", "-c", competition, "-f", str(path), "-m", message]
    attempt = {"message": message, "competition": competition, "submitted_at": now()}
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout_s)
    except OSError as e:
        raise LedgerError(f"{kaggle}: cannot run it ({e})") from None
    except subprocess.TimeoutExpired:  # run() has killed kaggle
        store.update_submission(row.id, attempt | {"kaggle_exit": TIMED_OUT})
        raise LedgerError(f"submission {row.id}: kaggle did not finish within {timeout_s:g} s and was stopped; "
                          f"the attempt is recorded: see `kaggle competitions submissions -c {competition}` "
                          f"before submitting again") from None
    except KeyboardInterrupt:
        store.update_submission(row.id, attempt | {"kaggle_exit": INTERRUPTED})
        error = LedgerError(f"submission {row.id}: interrupted while kaggle ran; the attempt is recorded: see "
                            f"`kaggle competitions submissions -c {competition}` before submitting again")
        error.exit_code = INTERRUPTED
        raise error from None
    changes = attempt | {"kaggle_exit": done.returncode}
    store.update_submission(row.id, changes)
    return Handed(dataclasses.replace(row, **changes), command, done.returncode, (done.stdout + done.stderr).strip())
