"""What the command line shows while runs train: on a terminal, one live display with an
experiment bar (run k of N, ETA for the whole experiment, counted in epochs) above the bar of the
epoch in progress, and a transient bar for each other long step (decoding, validation, TTA);
elsewhere (CI, `| tee`) plain lines, one per epoch, stage and run, never redraws. Probe trials get
a spinner each (`ProbeDisplay`).

These objects are the only place training output is drawn; the library reports to them.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ledger.store.rows import RunStatus
from ledger.training.callbacks import EpochMetrics
from ledger.cli.tables import duration, trial_verdict
from ledger.units import format_size


# Off a terminal a long stage prints a line at most this often (and when it ends).
STAGE_LINE_SECONDS = 30.0


def epoch_line(label: str, m: EpochMetrics, epochs: int | None = None, eta: str = "") -> str:
    valid = "" if m.valid_loss is None else f"  valid_loss {m.valid_loss:.4f}" + (
        "" if m.accuracy is None else f"  accuracy {m.accuracy:.4f}")  # numbers have no accuracy
    if m.metric is not None and m.metric_name not in (None, "accuracy"):
        valid += f"  {m.metric_name} {m.metric:.4f}"  # the competition's metric, beside the loss
    of = "" if epochs is None else f"/{epochs}"
    return (f"{label} {m.phase} epoch {m.epoch}{of}: train_loss {m.train_loss:.4f}{valid}"
            f"  lr {m.lr:.2e}  {m.images_per_s:.0f} img/s  {m.train_seconds:.1f}s{eta}")


def stage_unit(name: str) -> str:
    """What a stage counts: images while decoding, batches in validation and TTA."""
    return "images" if name.startswith("decoding") else "batches"


class RunProgress:
    """One run's epochs, drawn into the shared live display (or as lines)."""

    def __init__(self, events: "ConsoleEvents", label: str, entry: str | None = None):
        self.events, self.label = events, label
        self.entry = entry or label  # the spec entry it is a run of: its epochs time alike
        self.stages: dict[str, object] = {}  # stage name -> its bar's task, while it runs
        self.epochs: int | None = None  # the run's epochs over all phases, once the loop says
        self.stage_lines: dict[str, float] = {}  # off a terminal: stage -> when its last line was printed

    def _count_down(self, epochs: int) -> None:
        left = self.events.epochs_left
        left[self.entry] = max(0, left.get(self.entry, 0) - epochs)

    def resumed(self, epochs: int) -> None:
        self.events.console.print(f"{self.label}: resuming after epoch {epochs} from its checkpoint")
        self._count_down(epochs)  # not trained again: out of the estimate

    def start(self, phase: str, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
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
            now = time.monotonic()
            started = self.stage_lines.setdefault(name, now)
            if name != "validation" and (done >= total or now - started >= STAGE_LINE_SECONDS):
                self.events.console.print(f"{self.label} {name}: {done}/{total} {stage_unit(name)}",
                                          highlight=False, markup=False)
                self.stage_lines[name] = now
            if done >= total:
                self.stage_lines.pop(name, None)
            return
        task = self.stages.get(name)
        if task is None:
            task = self.stages[name] = bar.add_task(f"{self.label} {name}", total=total, info="")
        bar.update(task, completed=done, total=total)
        if done >= total:
            bar.remove_task(self.stages.pop(name))

    def end(self, metrics: EpochMetrics) -> None:
        events = self.events
        self._count_down(1)
        events.epoch_seconds.setdefault(self.entry, []).append(metrics.train_seconds)
        eta, left = "", sum(events.epochs_left.values())
        if events.bar is None and left > 0:  # a terminal's bar shows its own
            eta = f"  ETA {duration(events.seconds_left())} ({left} epochs left)"
        events.console.print(epoch_line(self.label, metrics, self.epochs, eta), highlight=False, markup=False,
                             soft_wrap=True)
        bar = self.events.bar
        if bar is not None:
            bar.advance(self.events.experiment_task)


def _run_epochs(plan) -> int:
    return plan.model.epochs + (plan.model.freeze_epochs if plan.model.finetune else 0)


class ConsoleEvents:
    """ExperimentEvents for the command line. Use as a context manager around training."""

    def __init__(self, console: Console, plans, at_once: int = 1):
        self.console, self.plans = console, list(plans)
        self.at_once = at_once  # runs side by side (train --jobs): the ETA divides by it
        self.live = console.is_terminal
        self.bar: Progress | None = None
        self.epoch_task = self.experiment_task = None
        # For the ETA off a terminal: by spec entry, the epochs still to train and those timed, since
        # one entry's epochs can take ten times another's.
        self.epochs_left: dict[str, int] = {}
        for plan in self.plans:
            self.epochs_left[plan.model.name] = self.epochs_left.get(plan.model.name, 0) + _run_epochs(plan)
        self.epoch_seconds: dict[str, list[float]] = {}

    def seconds_left(self) -> float:
        """Each entry's epochs left at its own mean epoch (an entry not timed yet: the mean of all
        timed epochs), over the runs that train at once."""
        timed = [s for seconds in self.epoch_seconds.values() for s in seconds]
        overall = sum(timed) / len(timed) if timed else 0.0
        total = sum(left * (sum(self.epoch_seconds[entry]) / len(self.epoch_seconds[entry])
                            if self.epoch_seconds.get(entry) else overall)
                    for entry, left in self.epochs_left.items())
        return total / self.at_once

    def __enter__(self) -> "ConsoleEvents":
        if self.live and self.plans:
            # A 1-second refresh at least: bars never look stuck between epochs.
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"),
                                TimeRemainingColumn(), console=self.console, transient=True, refresh_per_second=4)
            total_epochs = sum(_run_epochs(p) for p in self.plans)
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
        return RunProgress(self, label, plan.model.name)

    def run_finished(self, index: int, total: int, plan, result) -> None:
        label = f"[{index + 1}/{total}] {plan.model.name}"
        if result.status == RunStatus.DONE:
            s = result.summary
            accuracy = "-" if s.accuracy is None else f"{s.accuracy:.4f}"
            tta = "-" if s.tta_accuracy is None else f"{s.tta_accuracy:.4f}"
            metric = "" if s.metric == "accuracy" or s.tta_metric is None else f"  TTA {s.metric} {s.tta_metric:.4f}"
            # Labelled: the last epoch's accuracy has no TTA; `report` shows the TTA'd one.
            self.console.print(f"{label}: done {plan.run_id}  accuracy {accuracy} (last epoch, no TTA)  TTA accuracy "
                               f"{tta}{metric}  {s.images_per_s:.0f} img/s  peak {format_size(s.peak_bytes)}")
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

    def trial_finished(self, model: str, trial, limit_bytes: int) -> None:
        """One kept line per trial: its factor, peak, whether it fits (as the probe table says) and time."""
        self._hide()
        peak = "-" if trial.peak_bytes is None else format_size(trial.peak_bytes)
        error = f" ({trial.error})" if trial.error else ""
        self.say(f"{model}: k = {trial.k} (micro-batch {trial.micro_batch}) peak {peak}: fits "
                 f"{trial_verdict(trial, limit_bytes)}{error}  {trial.seconds + trial.startup_seconds:.1f}s")


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
                self.console.print(f"{name}: {done}/{total} {stage_unit(name)}", highlight=False, markup=False)
            return
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total)
        self.bar.update(self.tasks[name], completed=done, total=total)
        if done >= total:
            self.bar.remove_task(self.tasks.pop(name))
