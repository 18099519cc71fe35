"""Training progress: a rich bar (epoch, batch, loss, images/s, ETA) on a terminal, plain lines
otherwise, so logs and CI output stay readable."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.train import EpochMetrics


def _epoch_line(label: str, m: EpochMetrics) -> str:
    valid = "" if m.valid_loss is None else f"  valid_loss {m.valid_loss:.4f}  error_rate {m.error_rate:.4f}"
    return (f"{label} {m.phase} epoch {m.epoch + 1}: train_loss {m.train_loss:.4f}{valid}"
            f"  {m.images_per_s:.0f} img/s  {m.train_seconds:.1f}s")


class ConsoleProgress:
    def __init__(self, console: Console, label: str):
        self.console, self.label = console, label
        self.live = console.is_terminal
        self.bar: Progress | None = None
        self.task = None

    def start(self, phase: str, epoch: int, epochs: int, steps: int) -> None:
        if not self.live:
            return
        self.bar = Progress(
            TextColumn(f"{self.label} {phase} {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.0f} img/s"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("", total=steps, loss=float("nan"), speed=0.0)

    def step(self, step: int, loss: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, speed=images_per_s)

    def end(self, metrics: EpochMetrics) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        self.console.print(_epoch_line(self.label, metrics), highlight=False, soft_wrap=True)
