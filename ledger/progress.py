"""What the command line shows while runs train: on a terminal, one live display with an
experiment bar (run k of N, ETA for the whole experiment, counted in epochs) above the bar of the
epoch in progress, and a transient bar for each other long step (decoding, validation, TTA);
elsewhere (CI, `| tee`) plain lines, one per epoch, stage and run, never redraws. Probe trials get
a spinner each (`ProbeDisplay`).

These objects are the only place training output is drawn; the library reports to them.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ledger.units import format_size
from ledger.train import EpochMetrics


def epoch_line(label: str, m: EpochMetrics) -> str:
    valid = "" if m.valid_loss is None else f"  valid_loss {m.valid_loss:.4f}  accuracy {m.accuracy:.4f}"
    return (f"{label} {m.phase} epoch {m.epoch}: train_loss {m.train_loss:.4f}{valid}"
            f"  lr {m.lr:.2e}  {m.images_per_s:.0f} img/s  {m.train_seconds:.1f}s")


class RunProgress:
    """One run's epochs, drawn into the shared live display (or as lines)."""

    def __init__(self, events: "ConsoleEvents", label: str):
        self.events, self.label = events, label
        self.stages: dict[str, object] = {}  # stage name -> its bar's task, while it runs

    def resumed(self, epochs: int) -> None:
        self.events.console.print(f"{self.label}: resuming after epoch {epochs} from its checkpoint")

    def start(self, phase: str, epoch: int, epochs: int, steps: int) -> None:
        bar = self.events.bar
        if bar is not None:
            description = f"{self.label} {phase} epoch {epoch + 1}/{epochs}"
            if self.events.epoch_task is None:
                self.events.epoch_task = bar.add_task(description, total=steps, info="")
            bar.reset(self.events.epoch_task, total=steps, description=description, info="")

    def step(self, step: int, loss: float, images_per_s: float) -> None:
        bar = self.events.bar
        if bar is not None and self.events.epoch_task is not None:
            bar.update(self.events.epoch_task, completed=step, info=f"{loss:.4f} loss  {images_per_s:.0f} img/s")

    def stage(self, name: str, done: int, total: int) -> None:
        """A transient bar for the stage on a terminal; otherwise one line when it ends (none for
        validation, which the epoch's line reports)."""
        bar = self.events.bar
        if bar is None:
            if done >= total and name != "validation":
                self.events.console.print(f"{self.label} {name}: {total} done")
            return
        task = self.stages.get(name)
        if task is None:
            task = self.stages[name] = bar.add_task(f"{self.label} {name}", total=total, info="")
        bar.update(task, completed=done, total=total)
        if done >= total:
            bar.remove_task(self.stages.pop(name))

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
                                TextColumn("{task.fields[info]}"),
                                TimeRemainingColumn(), console=self.console, transient=True, refresh_per_second=4)
            total_epochs = sum(p.model.epochs + (p.model.freeze_epochs if p.model.finetune else 0) for p in self.plans)
            self.experiment_task = self.bar.add_task(f"experiment: run 1/{len(self.plans)}", total=total_epochs,
                                                     info="")
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


class ProbeDisplay:
    """What `probe-memory` (and `accum: auto` probing first) shows: a spinner with the elapsed time
    while a trial's child process runs, a bar while the smallest class is decoded, and one kept
    line per trial. Without a terminal only the lines."""

    def __init__(self, console: Console):
        self.console = console
        self.bar: Progress | None = None
        self.task = None

    def _show(self, description: str, total: int | None) -> None:
        if not self.console.is_terminal:
            return
        if self.bar is None:
            # refresh_per_second=4: the spinner and clock move while the child process works.
            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=self.console, transient=True, refresh_per_second=4)
            self.bar.start()
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(description, total=total)

    def _hide(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.task = None, None

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def decoding(self, model: str, done: int, total: int) -> None:
        if self.task is None or done == 1:
            self._show(f"{model}: decoding the smallest class", total)
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
        if done >= total:
            self._hide()

    def trial_started(self, model: str, k: int, micro_batch: int) -> None:
        self._show(f"{model}: trial k = {k} (micro-batch {micro_batch})", None)

    def trial_finished(self, model: str, text: str) -> None:
        self._hide()
        self.say(text)


class StageDisplay:
    """A transient bar per named stage on a terminal (one line when a stage ends otherwise); called
    as `display(name, done, total)`. Use as a context manager: the screen is left clean."""

    def __init__(self, console: Console):
        self.console = console
        self.bar: Progress | None = None
        self.tasks: dict[str, object] = {}

    def __enter__(self) -> "StageDisplay":
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=self.console, transient=True, refresh_per_second=4)
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __call__(self, name: str, done: int, total: int) -> None:
        if self.bar is None:
            if done >= total:
                self.console.print(f"{name}: {total} done", highlight=False, markup=False)
            return
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total)
        self.bar.update(self.tasks[name], completed=done, total=total)
        if done >= total:
            self.bar.remove_task(self.tasks.pop(name))
