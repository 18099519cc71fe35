"""Runs handed to a pool of worker processes, no more at once than it has slots, each recorded as it ends.

Two pools share this loop: Ray tasks (`ray_executor`) and local processes (`process_pool`, `train
--jobs N`). The driver alone writes the ledger: a `running` row when it hands a run out, the result
as each run finishes, in whatever order they finish. Workers train (`execute`) and send their
progress events back through the pool; the driver draws them on each run's own display.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable, Protocol, Sequence

from ledger.store.rows import RunStatus
from ledger.training.callbacks import Progress

if TYPE_CHECKING:
    from ledger.training.callbacks import ExperimentEvents
    from ledger.runs.plan import RunPlan
    from ledger.runs.recording import RunResult
    from ledger.store.database import Store

# Workers' events are drawn, and Ctrl-C and SIGTERM seen, within this long.
POLL_S = 0.25


class WorkerPool(Protocol):
    slots: int  # runs at once

    def submit(self, plan: RunPlan, progress: Progress) -> Hashable:
        """Start the run on a worker; a handle to wait on."""

    def wait(self, handles: list, timeout: float) -> list:
        """The handles whose runs have ended, after at most `timeout` seconds."""

    def result(self, handle: Hashable, plan: RunPlan) -> RunResult:
        """An ended run's result; a worker that raised or died gives a `failed` result with the reason."""

    def events(self) -> list[tuple[str, str, tuple]]:
        """The progress events workers sent since the last call: (run id, method name, arguments)."""

    def stop(self, handles: list) -> None:
        """Ctrl-C: end the runs of `handles` now (their partial folders keep their checkpoints)."""


@dataclass(frozen=True)
class RowFacts:
    """What the driver writes in a run's `running` row, and the probe's prediction it checks the
    run's peak against (None where none is on record for the workers' device)."""

    device: str
    precision: Callable[[RunPlan], str]
    predicted_peak: Callable[[RunPlan], int | None] = lambda plan: None
    margin: float = 0.0


def longest_first(plans: Sequence[RunPlan], seconds: Callable[[RunPlan], float | None]) -> list[RunPlan]:
    """The runs in the order to hand them out: the longest first (by `seconds`, the probe's estimate),
    so that no slot is left with a long run after the others are done (on 2 slots, a spec's one
    pretrained run as long as three of its others, handed out last, would leave a slot idle for its
    whole length).
    Runs without an estimate keep their order, after the others."""
    estimates = [seconds(plan) for plan in plans]
    order = sorted(range(len(plans)), key=lambda i: (estimates[i] is None, -(estimates[i] or 0.0), i))
    return [plans[i] for i in order]


def draw_events(pool: WorkerPool, progress_of: dict) -> None:
    """Hand the workers' events to their runs' progress objects, in the order they were sent. A
    method the progress object lacks (`placed` is optional) is skipped."""
    for run_id, name, args in pool.events():
        method = getattr(progress_of.get(run_id), name, None)
        if method is not None:
            method(*args)


def dispatch(plans: Sequence[RunPlan], store: Store, events: ExperimentEvents, pool: WorkerPool,
             facts: RowFacts, host: str, pid: int) -> list[RunResult]:
    """Execute `plans` on `pool`, recording each run as it finishes. `host` and `pid` go in the
    `running` rows: the driver's, so that a dead driver ends its runs. Ctrl-C (or SIGTERM) stops the
    runs in flight, records them interrupted (their partial folders keep their checkpoints for a
    resume) and re-raises."""
    from ledger.probe.spec_probe import record_peak_check
    from ledger.runs.recording import record, record_start

    waiting = list(enumerate(plans))
    in_flight: dict = {}  # handle -> (index, plan, predicted peak)
    progress_of: dict = {}  # run id -> the Progress its events go to
    results = []
    try:
        while waiting or in_flight:
            # No more runs handed out than the pool holds at once, so a `running` row is a run
            # that is running (or about to), as with the one-at-a-time executor.
            while waiting and len(in_flight) < pool.slots:
                index, plan = waiting.pop(0)
                progress = progress_of[plan.run_id] = events.run_started(index, len(plans), plan)
                predicted = facts.predicted_peak(plan)
                record_start(store, plan, facts.device, facts.precision(plan), host, pid, predicted)
                in_flight[pool.submit(plan, progress)] = (index, plan, predicted)
            ready = pool.wait(list(in_flight), POLL_S)
            draw_events(pool, progress_of)  # a finished run's last events come before its end
            for handle in ready:
                index, plan, predicted = in_flight.pop(handle)
                result = pool.result(handle, plan)
                record(store, result)
                if result.status == RunStatus.DONE:
                    record_peak_check(store, plan.run_id, predicted, result.summary.peak_bytes, facts.margin)
                events.run_finished(index, len(plans), plan, result)
                progress_of.pop(plan.run_id, None)
                results.append(result)
    except KeyboardInterrupt:
        _interrupt(store, pool, in_flight)
        raise
    return results


def _interrupt(store: Store, pool: WorkerPool, in_flight: dict) -> None:
    """The runs in flight stopped and recorded `interrupted`, each saying whether it resumes."""
    from ledger.runs.execution import interrupted_reason, run_folders
    from ledger.runs.recording import RunResult, record

    pool.stop(list(in_flight))  # before the reasons are read: a stopped worker writes nothing more
    for _, plan, _ in in_flight.values():
        partial, _ = run_folders(store.home, plan)
        # As the one-at-a-time executor says it: whether a checkpoint is there to resume from.
        record(store, RunResult(plan.run_id, RunStatus.INTERRUPTED, error=interrupted_reason(store, plan)
                                if partial.exists() else "interrupted before it started"))
