"""One training command per ledger home and experiment at a time.

Two `ledger train` of one experiment would plan the same owed runs (the same run numbers, splits
and seeds) and both train them, or after a kill both resume one run and start a fresh copy. The
lock is an advisory `flock` on `<home>/.train-<experiment>.lock`: the kernel releases it when the
process ends, however it ends (`kill -9` included), so a stale lock never blocks anyone. The file
keeps the holder's pid, host and start time for the message a second command prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from ledger.errors import LedgerError


def lock_path(home: Path, experiment: str) -> Path:
    return Path(home) / f".train-{experiment}.lock"


@contextlib.contextmanager
def experiment_lock(home: Path, experiment: str, started: str) -> Iterator[None]:
    """Hold the experiment's lock for the block, or refuse at once with who holds it."""
    path = lock_path(home, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LedgerError(f"experiment {experiment!r} in {home} is being trained by {holder}; wait for it to "
                              f"finish (a second train would repeat its runs)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def training_now(home: Path, experiment: str) -> str | None:
    """Who holds the experiment's lock ('pid N on HOST since T'), or None when no train runs: a
    shared lock taken and dropped at once. (A train starting in that very instant is refused as if
    a second train ran; it can be started again at once.)"""
    path = lock_path(home, experiment)
    if not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        except OSError:
            return None  # a filesystem without locks: nothing to learn here
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
