"""What runs on a Ray worker: the facts the driver checks before it submits anything, and one run.

A run's task resumes from the checkpoint in the shared home when it finds one: Ray retries a task
whose worker or node died (`TASK_OPTIONS`), and the retry, wherever it lands, goes on from the last
epoch the lost attempt finished. Its progress (epochs, steps, stages) goes to the driver's queue as
it happens, so the driver draws a worker's run as it draws a local one.

Ray is imported only inside functions: this module is imported by the driver too.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ledger.errors import LedgerError
from ledger.training.callbacks import RelayProgress

if TYPE_CHECKING:
    from ledger.runs.plan import RunPlan
    from ledger.runs.recording import RunResult

# A run's task may lose its worker (a node preempted, a process killed) this many times before the
# run is failed. Only such system failures are retried: an error of the run itself (a bad image, a
# non-finite loss) comes back from `execute` as a failed result, and anything raised before it (a
# missing data folder) is not retried either (retry_exceptions=False), as it would only fail again.
# max_calls=1: a fresh process per run, so its GPU memory goes with it (README: Running on a Ray cluster).
TASK_OPTIONS = dict(max_calls=1, max_retries=3, retry_exceptions=False)

def device():
    import ray
    import torch

    # Ray sets CUDA_VISIBLE_DEVICES to the task's GPUs, so "cuda" is the one it was given.
    return torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")


def worker_facts(home: str, token: str, precisions: Sequence[str]) -> dict:
    """Where this worker is, whether it sees the driver's ledger home (the driver's token file is
    there and a file can be written beside it), its device and what `precision: auto` becomes on it."""
    import ray

    host, node = socket.gethostname(), ray.get_runtime_context().get_node_id()
    folder = Path(home).resolve()
    problem = None
    if not (folder / token).is_file():
        problem = "no such folder there" if not folder.is_dir() else "a different folder of the same name"
    else:
        try:
            written = folder / f"{token}.{host}.{os.getpid()}"
            written.write_text(host)
            written.unlink()
        except OSError as error:
            problem = f"cannot write there: {error.strerror}"
    if problem:
        return dict(host=host, node=node, problem=problem)  # before torch is imported: the answer comes fast

    from ledger.probe.memory import device_name
    from ledger.training.device import resolve_precision

    here = device()
    resolved = {}
    for precision in precisions:
        try:
            resolved[precision] = resolve_precision(precision, here).name
        except LedgerError:
            resolved[precision] = precision  # fp16 on a CPU worker: the run itself fails with the reason
    return dict(host=host, node=node, problem=None, device=device_name(here), precisions=resolved)


def run(plan: RunPlan, home: str, cpus: float, queue=None) -> RunResult:
    """One run, as a Ray task: `execute` on this worker's device, reporting to `queue`."""
    import ray

    progress = RelayProgress(queue, plan.run_id)
    progress.placed(socket.gethostname(), os.getpid(), ray.get_runtime_context().get_node_id())

    from ledger.data.competition import load_competition

    competition = load_competition(plan.data)  # before torch is imported: a missing folder fails fast

    import torch

    from ledger.training.checkpoint import CHECKPOINT
    from ledger.runs.execution import committed_result, execute, run_folders, worker_images

    # Ray exports OMP_NUM_THREADS for the task, but torch may already have read it: runs sharing a
    # node must not each use every core.
    torch.set_num_threads(max(1, int(cpus)))
    partial, final = run_folders(Path(home), plan)
    # An earlier attempt committed the run (the folder's rename is its commit) and its worker died
    # before returning: the run is done, not to be trained again nor failed.
    committed = committed_result(plan.run_id, final)
    if committed is not None:
        return dataclasses.replace(committed, host=socket.gethostname(), pid=os.getpid())
    if not plan.resume and (partial / CHECKPOINT).is_file():
        # Only an earlier attempt of this task can have left it: a new run's id is new, and the
        # driver's housekeeping removed every partial folder it did not plan to resume. So this is
        # Ray's retry after the worker or node died: go on from its last finished epoch.
        plan = dataclasses.replace(plan, resume=True)
    images = worker_images(competition, plan.model, Path(home) / "cache", progress)
    return execute(plan, competition, images, Path(home), device(), progress)
