"""What the command line shows while runs train: on a terminal, one live display with an
experiment bar (run k of N, ETA for the whole experiment, counted in epochs) above the bar of the
epoch in progress; elsewhere (CI, `| tee`) plain lines, one per epoch and run, never redraws.

These objects are the only place training output is drawn; the library reports to them.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.memory import format_size
from ledger.train import EpochMetrics


def epoch_line(label: str, m: EpochMetrics) -> str:
    valid = "" if m.valid_loss is None else f"  valid_loss {m.valid_loss:.4f}  accuracy {m.accuracy:.4f}"
    return (f"{label} {m.phase} epoch {m.epoch}: train_loss {m.train_loss:.4f}{valid}"
            f"  lr {m.lr:.2e}  {m.images_per_s:.0f} img/s  {m.train_seconds:.1f}s")


class RunProgress:
    """One run's epochs, drawn into the shared live display (or as lines)."""

    def __init__(self, events: "ConsoleEvents", label: str):
        self.events, self.label = events, label

    def resumed(self, epochs: int) -> None:
        self.events.console.print(f"{self.label}: resuming after epoch {epochs} from its checkpoint")

    def start(self, phase: str, epoch: int, epochs: int, steps: int) -> None:
        bar = self.events.bar
        if bar is not None:
            description = f"{self.label} {phase} epoch {epoch + 1}/{epochs}"
            if self.events.epoch_task is None:
                self.events.epoch_task = bar.add_task(description, total=steps, loss=float("nan"), speed=0.0)
            bar.reset(self.events.epoch_task, total=steps, description=description, loss=float("nan"), speed=0.0)

    def step(self, step: int, loss: float, images_per_s: float) -> None:
        bar = self.events.bar
        if bar is not None and self.events.epoch_task is not None:
            bar.update(self.events.epoch_task, completed=step, loss=loss, speed=images_per_s)

    def end(self, metrics: EpochMetrics) -> None:
        self.events.console.print(epoch_line(self.label, metrics))
        bar = self.events.bar
        if bar is not None:
            bar.advance(self.events.experiment_task)


class ConsoleEvents:
    """ExperimentEvents for the command line. Use as a context manager around training."""

    def __init__(self, console: Console, plans):
        self.console, self.plans = console, list(plans)
        self.live = console.is_terminal
        self.bar: Progress | None = None
        self.epoch_task = self.experiment_task = None

    def __enter__(self) -> "ConsoleEvents":
        if self.live and self.plans:
            # A 1-second refresh at least: bars never look stuck between epochs.
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[loss]:.4f} loss  {task.fields[speed]:.0f} img/s"),
                                TimeRemainingColumn(), console=self.console, transient=True, refresh_per_second=4)
            total_epochs = sum(p.model.epochs + (p.model.freeze_epochs if p.model.finetune else 0) for p in self.plans)
            self.experiment_task = self.bar.add_task(f"experiment: run 1/{len(self.plans)}", total=total_epochs,
                                                     loss=float("nan"), speed=0.0)
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()  # transient: the screen is left clean, with only the printed lines
            self.bar = None

    def run_started(self, index: int, total: int, plan) -> RunProgress:
        label = f"[{index + 1}/{total}] {plan.model.name}"
        resume = " (resuming)" if plan.resume else ""
        self.console.print(f"{label}: run {plan.run_id}, {plan.split.describe()}, accum {plan.accum}{resume}")
        if self.bar is not None:
            self.bar.update(self.experiment_task, description=f"experiment: run {index + 1}/{total}")
        return RunProgress(self, label)

    def run_finished(self, index: int, total: int, plan, result) -> None:
        label = f"[{index + 1}/{total}] {plan.model.name}"
        if result.status == "done":
            s = result.summary
            accuracy = "-" if s.get("accuracy") is None else f"{s['accuracy']:.4f}"
            self.console.print(f"{label}: done {plan.run_id}  accuracy {accuracy}  {s['images_per_s']:.0f} img/s"
                               f"  peak {format_size(s['peak_bytes'])}")
        else:
            self.console.print(f"{label}: {result.status} {plan.run_id}  {result.error}", style="red")
