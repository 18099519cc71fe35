"""`train --jobs N`: the runs of an experiment N at a time on this machine's CPU, each in its own process
with its share of the cores.

A small network's step does not keep two cores busy, so the runs of a bag finish sooner side by side
(`bench/bench_jobs.py` times the embedded default both ways; docs/executors.md).

Each run gets a fresh 'spawn' process, as a probe trial does, so its peak memory is its own and
comparable with the probe's, and a run the kernel kills fails alone. An entry's first run decodes its
images into the disk cache (its display shows it) and the entry's later runs read them from there;
two runs of one entry that start together both decode, side by side, each writing the cache
atomically, rather than leave a slot idle while the driver decodes.
Workers ignore Ctrl-C: the driver kills them and records their runs interrupted; each resumes from
its last finished epoch, as after any kill. A worker dies with the driver, even after `kill -9`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue as queues
import signal
import socket
from pathlib import Path

import torch

from ledger.store.rows import RunStatus
from ledger.training.device import threads_per_job
from ledger.errors import LedgerError, describe
from ledger.training.callbacks import Progress, RelayProgress
from ledger.processes import die_with_parent, exit_reason
from ledger.runs.recording import RunResult


def check_jobs(jobs: int, device: torch.device) -> None:
    """--jobs N shares CPU cores. On a GPU each run's memory budget (the probe's) assumes the card is
    its alone, so runs side by side there could run it out of memory."""
    if jobs > 1 and device.type != "cpu":
        raise LedgerError(f"--jobs {jobs}: runs side by side share the CPU's cores; on {device.type} each run's "
                          "memory budget assumes the card is its alone (use --jobs 1, or the Ray executor "
                          "with --gpus-per-run)")


def _worker_main(plan, home: str, threads: int, events, sender, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C, and stops this process
    torch.set_num_threads(threads)
    from ledger.data.competition import load_competition
    from ledger.runs.execution import execute, worker_images

    progress = RelayProgress(events, plan.run_id)
    # The first event starts the queue's feeder thread: now, not inside the run's memory meter.
    progress.placed(socket.gethostname(), os.getpid(), "local")
    try:
        competition = load_competition(plan.data)
        images = worker_images(competition, plan.model, Path(home) / "cache", progress)
        result = execute(plan, competition, images, Path(home), torch.device("cpu"), progress)
    except Exception as error:  # noqa: BLE001 - raised before `execute` took over: the run fails with the reason
        result = RunResult(plan.run_id, RunStatus.FAILED, error=describe(error))
    sender.send(result)
    sender.close()


class ProcessPool:
    """Local worker processes as a `dispatch.WorkerPool`; a run's handle is its id."""

    def __init__(self, home: Path, jobs: int):
        self.context = multiprocessing.get_context("spawn")
        self.home, self.slots = str(home), jobs
        self.threads = threads_per_job(jobs)
        self.queue = self.context.Queue()  # every worker's progress events
        self.workers: dict[str, tuple] = {}  # run id -> (process, the end its result comes out of)
        self.results: dict[str, RunResult] = {}  # ended runs' results, until `result` hands them over

    def submit(self, plan, progress: Progress) -> str:
        receiver, sender = self.context.Pipe(duplex=False)
        # Not daemonic: a daemonic process may not start its own children (DataLoader workers).
        process = self.context.Process(target=_worker_main, name=f"ledger-run-{plan.run_id}",
                                       args=(plan, self.home, self.threads, self.queue, sender, os.getpid()))
        process.start()
        sender.close()  # only the worker's end stays open, so that its death reads as end-of-file here
        self.workers[plan.run_id] = (process, receiver)
        return plan.run_id

    def wait(self, handles: list, timeout: float) -> list:
        by_end = {self.workers[run_id][1]: run_id for run_id in handles}
        ended = [by_end[end] for end in multiprocessing.connection.wait(list(by_end), timeout)]
        for run_id in ended:
            self.results[run_id] = self._collect(run_id)
        return ended

    def _collect(self, run_id: str) -> RunResult:
        """An ended worker's result (a failed one, saying how it ended, if it died without one), once
        its process has exited: by then every progress event it sent is in the queue, so the run's
        display ends before its result."""
        process, receiver = self.workers.pop(run_id)
        try:
            result = receiver.recv()
        except EOFError:
            result = None
        process.join(timeout=60)
        if process.is_alive():  # hung while exiting
            process.kill()
            process.join()
        receiver.close()
        return result or RunResult(run_id, RunStatus.FAILED, error=exit_reason("worker process", process.exitcode))

    def result(self, handle: str, plan) -> RunResult:
        return self.results.pop(handle)

    def events(self) -> list[tuple[str, str, tuple]]:
        drawn = []
        while True:
            try:
                drawn.append(self.queue.get_nowait())
            except queues.Empty:
                return drawn

    def stop(self, handles: list) -> None:
        for run_id in handles:
            process, receiver = self.workers.pop(run_id)
            process.kill()
            process.join()
            receiver.close()

    def close(self) -> None:
        """Whatever still runs (only after an error in the driver) goes; the queue's thread ends."""
        self.stop(list(self.workers))
        self.queue.close()
        self.queue.join_thread()
