"""A run's checkpoint, a callback on the `Learner`: everything the loop needs to go on after a kill
as if it never stopped, restored before the fit and saved after every epoch.

Saved after every epoch into the run's partial folder (written to a temporary name, then renamed,
so a kill during the save leaves the previous checkpoint whole) and deleted when the run commits.
It holds the model, optimizer, grad-scaler and weight-average states, the optimizer steps taken
(which the average's warm-up counts), the epochs' metrics, and every random generator the loop
draws from: batch order (numpy), augmentation (a torch generator), the global torch generator
(dropout, drop-path), numpy's and Python's global generators (timm's Mixup), and CUDA's. On CPU
a resumed run therefore ends with bitwise the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
from pathlib import Path

import numpy as np
import torch

from ledger.errors import LedgerError, first_line
from ledger.durable import signals_held
from ledger.training.callbacks import Callback, EpochMetrics
from ledger.training.step import LoopParts

CHECKPOINT = "checkpoint.pt"


def _numpy_global_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=pos, has_gauss=has_gauss, cached=cached)


def _restore_numpy_global(state: dict) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


def _write_failure(error: BaseException) -> str:
    """'disk full' when the error, or one it came from, is ENOSPC or EDQUOT."""
    seen = error
    while seen is not None:
        if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return "disk full"
        seen = seen.__context__ or seen.__cause__
    if "inline_container" in str(error):
        return "the write failed (is the disk full?)"
    return first_line(error)


class Checkpoint(Callback):
    """List it after the weight average (the learner puts that first), whose state it holds, and
    before the progress display, which reports the epochs it restored."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / CHECKPOINT
        self.restored_epochs = 0  # set by restore(): how many epochs the loop did not train again

    def before_fit(self, learner) -> None:
        if self.exists():
            learner.history = self.restore(learner.parts, learner.average)

    def after_epoch(self, learner) -> None:
        self.save(learner.parts, learner.history, learner.average)

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, parts: LoopParts, history: list[EpochMetrics], average=None) -> None:
        """`average`: the weight average (timm's ModelEmaV3), when the fit keeps one."""
        version, state, gauss = random.getstate()
        data = dict(
            model=parts.net.state_dict(), optimizer=parts.optimizer.state_dict(), scaler=parts.scaler.state_dict(),
            ema=None if average is None else average.state_dict(), steps=parts.steps,
            history=[dataclasses.asdict(m) for m in history],
            batch_order=parts.batches.state(), augmentation=parts.generator.get_state(),
            torch_global=torch.get_rng_state(), numpy_global=_numpy_global_state(),
            python_global=dict(version=version, state=list(state), gauss=gauss),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        # Ctrl-C and SIGTERM wait for the write and the rename (signals_held): inside torch's writer
        # an interrupt would come back as a RuntimeError, a failed run with a lost checkpoint.
        with signals_held():
            try:
                # Through a Python file, so that a full disk comes back as OSError ENOSPC instead of
                # torch's "enforce fail at inline_container.cc".
                with open(temporary, "wb") as file:
                    torch.save(data, file)
            except (OSError, RuntimeError) as error:
                temporary.unlink(missing_ok=True)
                raise LedgerError(f"{self.path}: cannot save the checkpoint: {_write_failure(error)}") from None
            os.replace(temporary, self.path)

    def restore(self, parts: LoopParts, average=None) -> list[EpochMetrics]:
        """Load every state into `parts`, `average` and the global generators; returns the epochs done."""
        # weights_only: a checkpoint is data, never code, even one left in a shared folder. Its
        # errors are never shown: torch's advice to retry with weights_only=False would run
        # whatever code a tampered file holds.
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is the same to the user
            raise LedgerError(f"{self.path}: corrupt checkpoint ({type(error).__name__}), so the run cannot "
                              f"resume; the next train starts it again") from None
        parts.net.load_state_dict(data["model"])
        parts.optimizer.load_state_dict(data["optimizer"])
        parts.scaler.load_state_dict(data["scaler"])
        if average is not None and data.get("ema") is not None:
            average.load_state_dict(data["ema"])
        parts.steps = data.get("steps", 0)
        parts.batches.restore(data["batch_order"])
        parts.generator.set_state(data["augmentation"])
        torch.set_rng_state(data["torch_global"])
        _restore_numpy_global(data["numpy_global"])
        python = data["python_global"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
        if data["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(data["cuda"])
        self.restored_epochs = len(data["history"])
        return [EpochMetrics(**m) for m in data["history"]]

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
