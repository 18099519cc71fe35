"""Whether a process that left a mark (a `running` row, a temporary file) is still alive."""

from __future__ import annotations

import os


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
