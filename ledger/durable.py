"""Writes that are whole or not there: Ctrl-C and SIGTERM held back while a file that a resume
depends on is written, then delivered; and a folder replaced by a newly built one in one rename.

A KeyboardInterrupt raised inside torch.save's C++ writer comes back as a RuntimeError ("file
write failed"): the checkpoint write then looked like a full disk, the run was marked failed, its
checkpoint deleted, and the interrupt itself was lost, so `train` went on to the next run. Held
back, the signal arrives a moment later, between two Python statements, where it is what it is:
the write is whole, the run is recorded as interrupted and resumes from that checkpoint, and the
command stops.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held(signals: tuple[int, ...] = HELD) -> Iterator[None]:
    """Run the block with `signals` held; any that arrived are delivered again, once each, to the
    handlers that were in place (Ctrl-C's KeyboardInterrupt, the command line's SIGTERM handler,
    or the default that ends a worker process), as soon as the block ends, whether it ended well
    or not. A signal this process ignores stays ignored. Signal handlers belong to the main
    thread: elsewhere (a Ray actor's thread) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum, frame) -> None:
        if signum not in arrived:
            arrived.append(signum)

    previous = {}
    for number in signals:
        handler = signal.getsignal(number)
        if handler is not signal.SIG_IGN:
            previous[number] = handler
            signal.signal(number, hold)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in arrived:
            signal.raise_signal(number)  # the handler restored above runs now


def replace_folder(built: Path, target: Path) -> None:
    """`built` (a finished folder beside `target`) becomes `target`. An old `target` is moved aside
    first and removed only once the new one stands, so a failure at any point leaves one whole
    folder there, the old or the new."""
    if not target.exists():
        os.replace(built, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, retired / target.name)
    try:
        os.replace(built, target)
    except OSError:
        os.replace(retired / target.name, target)  # put the old one back (kept aside if even that fails)
        retired.rmdir()
        raise
    shutil.rmtree(retired, ignore_errors=True)
