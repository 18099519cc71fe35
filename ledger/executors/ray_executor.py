"""The Ray executor: the runs of an experiment as Ray tasks, one task per run, on a laptop or a cluster.

Same interface as the local `train_experiment`. Each task runs `execute` in a fresh worker process
(`ray_worker.run`) and returns the small `RunResult`; the driver alone writes the ledger
(`dispatch`, the loop the local `--jobs` processes share). Workers write their run folders under the ledger home, so the home must be on a
filesystem every node sees: checked before anything runs.

A task whose worker or node dies is retried by Ray and resumes from the run's last checkpoint
there; the driver sees one result and records the run once. Workers' progress events come back
through a queue that lives beside the driver, and are drawn as they arrive.

Ray is an optional extra (`pip install 'ledger[ray]'`): this module imports it only when called.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from typing import TYPE_CHECKING

from ledger.store.rows import RunStatus
from ledger.executors.dispatch import RowFacts, dispatch
from ledger.errors import LedgerError, first_line
from ledger.executors.ray_worker import TASK_OPTIONS, run, worker_facts

if TYPE_CHECKING:
    from ledger.training.callbacks import ExperimentEvents
    from ledger.runs.plan import RunPlan
    from ledger.runs.recording import RunResult
    from ledger.spec.loader import Spec
    from ledger.store.database import Store

@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: the Ray this process already joined, $RAY_ADDRESS, or a new local one
    gpus_per_run: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_run: float = 1


# ---------------------------------------------------------------- the driver


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """An explicit `host:port` (or `ray://host:port`) where nothing answers is one line at once:
    `ray.init` would retry for minutes, printing its own log lines every few seconds."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port: Ray's own error says what it makes of it
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise LedgerError(f"cannot connect to Ray at {address}: nothing answers there "
                          f"({error.strerror or type(error).__name__}); is the cluster up (`ray start --head`)?") from None


def _connect(options: RayOptions) -> bool:
    """Join (or start) Ray; True when this call started the connection and should end it."""
    check_reachable(options.address)
    import ray

    if ray.is_initialized():
        return False
    try:
        if options.address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=options.address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise LedgerError(f"cannot connect to Ray at {options.address or 'a new local instance'}: "
                          f"{first_line(error)}") from None
    return True


def _resources(options: RayOptions) -> tuple[dict, int]:
    """A run's resource request, and how many runs the cluster holds at once."""
    import ray

    total = ray.cluster_resources()
    gpus = options.gpus_per_run
    if gpus is None:
        gpus = 1 if total.get("GPU", 0) > 0 else 0
    # A request no node can meet would wait forever, with no error.
    if gpus > total.get("GPU", 0):
        raise LedgerError(f"--gpus-per-run {gpus:g}: the Ray cluster has {total.get('GPU', 0):g} GPU(s)")
    if options.cpus_per_run > total.get("CPU", 0):
        raise LedgerError(f"--cpus-per-run {options.cpus_per_run:g}: the Ray cluster has {total.get('CPU', 0):g} CPU(s)")
    if gpus:
        slots = int(total.get("GPU", 0) // gpus)
    else:
        slots = int(total.get("CPU", 0) // options.cpus_per_run) if options.cpus_per_run else 1
    return dict(num_gpus=gpus, num_cpus=options.cpus_per_run), max(1, slots)


def _leave_token(home: Path, token: str) -> None:
    """A file only this driver wrote: a worker that finds it sees the same folder, not a namesake."""
    (home / token).write_text(socket.gethostname())


def check_workers(home: Path, resources: dict, precisions: Sequence[str]) -> dict:
    """The home is seen by a worker on every node (checked on each, with no resources taken), and
    the facts of a worker with a run's resources: its device, and precisions resolved there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = f".ray-visible-{uuid.uuid4().hex}"
    _leave_token(home, token)
    facts = ray.remote(max_calls=1, max_retries=0)(worker_facts)
    try:
        answers = [ray.get(facts.options(**resources).remote(str(home), token, list(precisions)))]
        # The other nodes too, taking no resources: a run may land on any of them.
        answers += ray.get([
            facts.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(str(home), token, []) for node in ray.nodes() if node["Alive"] and node["NodeID"] != answers[0]["node"]])
    finally:
        (home / token).unlink(missing_ok=True)
    for answer in answers:
        if answer["problem"]:
            raise LedgerError(f"{home} is not visible from worker {answer['host']} ({answer['problem']}): "
                              "the ledger home must be on a filesystem every node sees")
    return answers[0]


def worker_accum(spec: Spec, store: Store, plans: Sequence[RunPlan], device: str) -> list[RunPlan]:
    """`accum: auto` is the probe's choice for the device the workers have, which need not be the
    driver's: decided as `train` decides it (`probing.accum_resolver`), for the workers' device."""
    from ledger.training.device import default_device
    from ledger.probe.spec_probe import accum_resolver

    resolve = accum_resolver(spec, store, None, default_device(), workers_device=device)
    return [dataclasses.replace(plan, accum=resolve(plan.model)) if plan.model.accum == "auto" else plan
            for plan in plans]


def _failed(plan: RunPlan, error: BaseException) -> RunResult:
    """A task that raised or whose worker died: a failed run with the reason, in one line."""
    import ray.exceptions

    from ledger.errors import describe
    from ledger.runs.recording import RunResult

    cause = getattr(error, "cause", None) if isinstance(error, ray.exceptions.RayTaskError) else None
    return RunResult(plan.run_id, RunStatus.FAILED, error="worker: " + describe(cause or error))


def train_on_ray(spec: Spec, plans: Sequence[RunPlan], store: Store, events: ExperimentEvents,
                 options: RayOptions) -> list[RunResult]:
    """Execute `plans` as Ray tasks, recording each as it finishes. Ctrl-C (or SIGTERM) cancels the
    outstanding tasks, records the runs in flight as interrupted (their partial folders keep their
    checkpoints for a resume) and re-raises."""
    try:
        import ray
    except ImportError:
        raise LedgerError("--executor ray needs Ray: pip install 'ledger[ray]' (or uv sync --extra ray)") from None

    home = Path(os.path.abspath(store.home))  # workers have another cwd
    started_here = _connect(options)
    queue = None
    try:
        resources, slots = _resources(options)
        worker = check_workers(home, resources, sorted({p.model.precision for p in plans}))
        plans = worker_accum(spec, store, plans, worker["device"])
        queue = _progress_queue()
        task = ray.remote(**TASK_OPTIONS)(run).options(**resources)
        launch = lambda plan: task.remote(plan, str(home), options.cpus_per_run, queue)  # noqa: E731
        facts = RowFacts(worker["device"], lambda plan: worker["precisions"].get(plan.model.precision, ""))
        return dispatch(plans, store, events, RayPool(launch, slots, queue), facts, socket.gethostname(), os.getpid())
    finally:
        if queue is not None:
            queue.shutdown(force=True)
        if started_here:
            ray.shutdown()


def _progress_queue():
    """The queue workers report progress to, on the driver's node: a lost worker node must not take
    it along, and it takes no CPU a run could use."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options=dict(num_cpus=0, scheduling_strategy=here))


class RayPool:
    """Ray tasks as a `dispatch.WorkerPool`: `launch(plan)` submits a run's task and returns its
    ObjectRef; `queue` is the workers' progress queue (None: no events)."""

    def __init__(self, launch, slots: int, queue=None):
        self.launch, self.slots, self.queue = launch, slots, queue

    def submit(self, plan, progress):
        return self.launch(plan)

    def wait(self, handles, timeout):
        import ray

        return ray.wait(handles, num_returns=1, timeout=timeout)[0]

    def result(self, handle, plan):
        import ray

        try:
            return ray.get(handle)
        except Exception as error:  # noqa: BLE001 - a failed task fails its run; the others go on
            return _failed(plan, error)

    def events(self):
        waiting = self.queue.qsize() if self.queue is not None else 0
        return self.queue.get_nowait_batch(waiting) if waiting else []

    def stop(self, handles):
        import ray

        for ref in handles:
            ray.cancel(ref, force=True)  # the worker process goes; its partial folder and checkpoint stay
