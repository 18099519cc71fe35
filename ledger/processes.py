"""Whether a process that left a mark (a `running` row, a temporary file) is still alive, and children
that die with their parent."""

from __future__ import annotations

import os
import signal
import threading
import time


def process_alive(pid: int) -> bool:
    """True for this process, a live one, or one we may not ask about (another user's, a pid out of
    range): only a process known to be gone has its marks cleared."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def die_with_parent(parent_pid: int) -> None:
    """A child (a probe trial, a `--jobs` worker) must not outlive a parent killed with SIGKILL
    (nothing runs in the parent then): the kernel kills this child when the parent dies (Linux), and a
    watcher thread covers the rest."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def exit_reason(who: str, exitcode: int | None) -> str:
    """Why a child ended without a result, in words: `who` killed by which signal (SIGKILL, on Linux
    the out-of-memory killer's when nobody else would stop it), or its exit code."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
        return f"{who} killed by {name}" + (" (out of memory?)" if number == signal.SIGKILL else "")
    return f"{who} exited with code {exitcode} without a result"
