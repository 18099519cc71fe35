"""The Ray executor on a simulated cluster started once for the module (a head node that takes no
runs, two worker nodes of one CPU each): runs of a tiny spec trained as Ray tasks and recorded by
the driver, a failing and a crashing run among good ones, the shared-home check, `accum: auto`
looked up for the workers' device, a lost worker node that costs its run an epoch and not the run,
and the workers' epochs drawn by the driver while they train."""

import dataclasses
import json
import re
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_CONVNEXT, write_spec
import torch
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray  # a local Ray cluster, started once for the module

from ledger.executors import ray_executor  # noqa: E402 - only with Ray installed
from ledger.cli import app  # noqa: E402
from ledger.errors import LedgerError  # noqa: E402
from ledger.executors.local import plan_experiment  # noqa: E402
from ledger.probe.memory import device_name  # noqa: E402
from ledger.probe.accumulation import Trial  # noqa: E402
from ledger.probe.setting import probe_key, probe_setting  # noqa: E402
from ledger.executors.ray_executor import RayOptions, train_on_ray, worker_accum  # noqa: E402
from ledger.spec.loader import load_spec  # noqa: E402
from ledger.store.database import Store, new_id  # noqa: E402

runner = CliRunner()
CONVNEXT = f"arch: convnext_atto, size: 32, model_kwargs: {json.dumps(TINY_CONVNEXT)}"


def entry(fields: str) -> str:
    """One tiny ConvNeXt model entry of a spec's models list."""
    return f"  - {{{fields}, {CONVNEXT}}}\n"


NODE = dict(num_cpus=1, object_store_memory=80 * 1024 * 1024)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """Three Ray nodes on this machine, started once for the module (about 16 s); the executor joins
    them. The head has no CPU, so every run lands on a worker node, which a test may take away."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(NODE, num_cpus=0))
    for _ in range(2):
        cluster.add_node(**NODE)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


class Finished:
    """ExperimentEvents that keep the order in which runs finished."""

    def __init__(self):
        self.finished = []

    def run_started(self, index, total, plan):
        return None

    def run_finished(self, index, total, plan, result):
        self.finished.append((plan.run_id, result.status))


def test_train_on_ray_records_both_runs_done_and_they_bag(tmp_path, tiny_competition):
    home = tmp_path / "home"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_competition, entry("name: convnext, runs: 2, accum: auto"))
    # A probe on record for the workers' device (this machine's CPU): the runs take its choice.
    spec = load_spec(spec_path)
    store = Store(home)
    store.record_probe("tiny", "convnext", probe_key(spec.models[0], probe_setting(spec, torch.device("cpu"))), "32", device_name("cpu"),
                       spec.probe.budget_bytes, spec.probe.margin, 2, [Trial(2, 4, 1000, False, 0.1)])

    result = invoke("train", spec_path, "--home", home, "--executor", "ray", "--cpus-per-run", 1)
    assert result.exit_code == 0, result.output
    # Off a terminal, each worker's epoch is a plain line, as the local executor prints it.
    for number in (1, 2):
        assert re.search(rf"\[{number}/2\] convnext train epoch 1(/1)?: train_loss ", result.output)
    rows = json.loads(invoke("runs", "--home", home, "--json").output)["runs"]
    assert [(r["model"], r["status"], r["accum"]) for r in rows] == [("convnext", "done", 2)] * 2
    # Recorded by this process, trained by Ray workers: each row carries its worker's pid.
    assert all(r["pid"] not in (None, os.getpid()) for r in rows) and rows[0]["pid"] != rows[1]["pid"]
    assert all(r["host"] and r["split_seed"] is not None for r in rows)
    assert rows[0]["split_seed"] != rows[1]["split_seed"]
    assert all((home / r["artifact_dir"] / "summary.json").is_file() for r in rows)

    out = tmp_path / "submission.csv"
    bagged = invoke("ensemble", spec_path, "--home", home, "--out", out)
    assert bagged.exit_code == 0, bagged.output
    assert out.is_file()
    # Top-up is the same whatever the executor: nothing is owed now.
    again = invoke("train", spec_path, "--home", home, "--executor", "ray")
    assert again.exit_code == 0 and "nothing to train" in again.output


def test_failed_and_crashed_runs_are_recorded_failed_while_the_other_is_done(tmp_path, tiny_competition):
    from test_train import tiny_vit

    from ledger.training.models import save_weights

    save_weights(tiny_vit(), tmp_path / "other.safetensors")
    models = entry("name: good, runs: 1, accum: 1") + entry(
        f"name: wrong, runs: 1, accum: 1, pretrained: {tmp_path / 'other.safetensors'}")
    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_competition, models))
    store = Store(tmp_path / "home")
    good, wrong = plan_experiment(spec, spec.models, store, lambda model: model.accum)
    # A task that raises before `execute` can catch anything: its data folder is gone.
    crashing = dataclasses.replace(good, run_id=new_id(), run_number=1,
                                   data=dataclasses.replace(good.data, root=tmp_path / "gone"))
    events = Finished()
    results = train_on_ray(spec, [good, crashing, wrong], store, events, RayOptions())

    rows = {r.id: r for r in store.runs("tiny")}
    assert {run_id: rows[run_id].status for run_id in (good.run_id, wrong.run_id, crashing.run_id)} == {
        good.run_id: "done", wrong.run_id: "failed", crashing.run_id: "failed"}
    assert "weights do not fit convnext_atto" in rows[wrong.run_id].error
    assert rows[crashing.run_id].error.startswith("worker: ") and "gone" in rows[crashing.run_id].error
    assert "\n" not in rows[crashing.run_id].error
    assert sorted(events.finished) == sorted((r.run_id, r.status) for r in results) and len(results) == 3


def test_a_home_the_workers_do_not_see_is_a_one_line_error(tmp_path, tiny_competition, monkeypatch):
    # Simulated: the driver's token file never reaches the folder, as on a node with its own disk.
    monkeypatch.setattr(ray_executor, "_leave_token", lambda home, token: None)
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_competition, entry("name: convnext, runs: 1, accum: 1"))
    result = invoke("train", spec_path, "--home", tmp_path / "home", "--executor", "ray")
    assert result.exit_code == 1
    assert "is not visible from worker" in result.output and "filesystem every node sees" in result.output
    assert "Traceback" not in result.output
    assert [r.status for r in Store(tmp_path / "home").runs()] == []  # nothing started


def test_resources_default_to_cpus_without_gpus_and_refuse_what_no_node_has():
    assert ray_executor._resources(RayOptions()) == (dict(num_gpus=0, num_cpus=1), 2)  # the fixture's 2 CPUs
    with pytest.raises(LedgerError, match="--gpus-per-run 1: the Ray cluster has 0 GPU"):
        ray_executor._resources(RayOptions(gpus_per_run=1))
    with pytest.raises(LedgerError, match="--cpus-per-run 3: the Ray cluster has 2 CPU"):
        ray_executor._resources(RayOptions(cpus_per_run=3))


def test_accum_auto_is_looked_up_for_the_workers_device(tmp_path, tiny_competition):
    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_competition, entry("name: convnext, runs: 1, accum: auto")))
    store = Store(tmp_path / "home")
    [plan] = plan_experiment(spec, spec.models, store, lambda model: 1)  # the driver's (CPU) answer
    store.record_probe("tiny", "convnext", probe_key(spec.models[0], probe_setting(spec, torch.device("cpu"))), "32", "cuda: Worker GPU",
                       spec.probe.budget_bytes, spec.probe.margin, 4, [Trial(4, 2, 1000, False, 0.1)])
    assert [p.accum for p in worker_accum(spec, store, [plan], "cuda: Worker GPU")] == [4]
    with pytest.raises(LedgerError, match="no memory probe is on record for .* on the workers' device"):
        worker_accum(spec, store, [plan], "cuda: Another GPU")


class InterruptedAtSecond(Finished):
    """Ctrl-C while the second run is being submitted: the first is in flight."""

    def run_started(self, index, total, plan):
        if index == 1:
            raise KeyboardInterrupt


def test_ctrl_c_cancels_and_records_the_runs_in_flight_interrupted(tmp_path, tiny_competition):
    from ledger.runs.execution import run_folders
    from ledger.executors.dispatch import RowFacts, dispatch
    from ledger.executors.ray_executor import RayPool

    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_competition, entry("name: convnext, runs: 2, accum: 1")))
    store = Store(tmp_path / "home")
    first, second = plan_experiment(spec, spec.models, store, lambda model: model.accum)
    partial = run_folders(store.home, first)[0]
    partial.mkdir(parents=True)  # as `execute` leaves it after an epoch, with its checkpoint
    (partial / "checkpoint.pt").write_bytes(b"epoch 1")
    # A task that would hold its CPU for a minute: cancelled, it frees it at once. (A lambda, so
    # that Ray ships it by value: workers cannot import this test module.)
    sleeper = ray.remote(max_calls=1, num_cpus=1)(lambda plan: __import__("time").sleep(60))
    facts = RowFacts("cpu: test", lambda plan: "")
    with pytest.raises(KeyboardInterrupt):
        dispatch([first, second], store, InterruptedAtSecond(), RayPool(sleeper.remote, 2), facts,
                 socket.gethostname(), os.getpid())
    rows = store.runs("tiny")
    assert [(r.id, r.status) for r in rows] == [(first.run_id, "interrupted")]  # the second never started
    assert rows[0].error == "interrupted; resumes after its last finished epoch"
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2  # the cancelled task's worker is gone


def test_a_task_is_retried_when_its_worker_dies_but_not_when_it_raises(tmp_path):
    from ledger.executors.ray_worker import TASK_OPTIONS

    # Each attempt leaves a file, so the attempts are counted across processes. (Lambdas, so that
    # Ray ships them by value: workers cannot import this test module.)
    def attempt(folder) -> int:
        """Which attempt this is (1, 2, ...), counted by the files the earlier ones left."""
        path = Path(folder)
        path.mkdir(exist_ok=True)
        number = len(list(path.iterdir())) + 1
        (path / str(number)).touch()
        return number

    # The first attempt's process dies as a lost node's would; the retry returns its number.
    dies_once = ray.remote(**TASK_OPTIONS)(
        lambda folder, attempt=attempt: (lambda number: number if number > 1 else os._exit(1))(attempt(folder)))
    raises = ray.remote(**TASK_OPTIONS)(lambda folder, attempt=attempt: attempt(folder) / 0)
    assert ray.get(dies_once.remote(str(tmp_path / "dies"))) == 2
    with pytest.raises(ZeroDivisionError):
        ray.get(raises.remote(str(tmp_path / "raises")))
    assert len(list((tmp_path / "raises").iterdir())) == 1  # an error of its own: run once, not again


@pytest.fixture(scope="module")
def slower_competition(tmp_path_factory):
    """Enough images that an epoch of the tiny model takes seconds: a node can be lost mid-epoch."""
    from ledger.data.fashion_mnist import write_competition

    root = tmp_path_factory.mktemp("competition") / "fashion"
    write_competition(root, seed=1, train_per_class=200, test=12)
    return root


class Watched(Finished):
    """ExperimentEvents whose runs' progress objects keep what came from the workers, as it came."""

    def __init__(self, home):
        super().__init__()
        self.home, self.progress = home, {}

    def run_started(self, index, total, plan):
        self.progress[plan.run_id] = progress = Kept(self.home, plan)
        return progress


class Kept:
    """A run's progress on the driver: the node each attempt reported from, and each epoch's end
    with whether the run's folder was committed yet when it arrived."""

    def __init__(self, home, plan):
        from ledger.runs.execution import run_folders

        self.partial, self.final = run_folders(home, plan)
        self.nodes, self.ended, self.resumed_after = [], [], None

    def placed(self, host, pid, node):
        self.nodes.append(node)

    def resumed(self, epochs):
        self.resumed_after = epochs

    def start(self, phase, epoch, epochs, steps):
        return None

    def step(self, step, loss, images_per_s):
        return None

    def end(self, metrics):
        self.ended.append((metrics.epoch, metrics.images_per_s, self.final.exists()))


def test_a_lost_worker_node_costs_its_run_an_epoch_and_epochs_are_drawn_as_they_end(tmp_path, slower_competition,
                                                                                   cluster):
    from ledger.training.checkpoint import CHECKPOINT
    from ledger.data.competition import load_competition
    from ledger.runs.execution import cached_images

    home = tmp_path / "home"
    path = write_spec(tmp_path / "tiny.yaml", slower_competition,
                      entry("name: convnext, runs: 4, accum: 1").replace("size: 32", "size: 96"))
    path.write_text(path.read_text().replace("epochs: 1,", "epochs: 2,"))
    spec = load_spec(path)
    assert spec.models[0].epochs == 2 and spec.models[0].size == (96, 96)
    store = Store(home)
    plans = plan_experiment(spec, spec.models, store, lambda model: model.accum)
    cached_images(load_competition(spec.data), spec.models[0], home / "cache")  # decoded once, not by each worker
    events, results = Watched(home), []
    # The driver in a thread (with its own connection to the ledger), so that this one can kill a node.
    driver = threading.Thread(target=lambda: results.extend(
        train_on_ray(spec, plans, Store(home), events, RayOptions(cpus_per_run=1))))
    driver.start()

    victim, deadline = None, time.time() + 90
    while victim is None and time.time() < deadline and driver.is_alive():
        for run_id, progress in list(events.progress.items()):
            # Its first epoch was drawn here and its checkpoint is saved: the run is in its second epoch.
            if progress.ended and progress.nodes and (progress.partial / CHECKPOINT).is_file():
                victim = run_id
                break
        time.sleep(0.05)
    assert victim is not None, "no run reached its second epoch"
    [node] = [n for n in cluster.worker_nodes if n.node_id == events.progress[victim].nodes[0]]
    cluster.remove_node(node)  # every process of the node goes, the run's worker with it
    cluster.add_node(**NODE)  # a replacement, as a spot fleet brings one (and the next tests find two nodes)
    driver.join(timeout=150)
    assert not driver.is_alive()
    assert sorted((r.run_id, r.status) for r in results) == sorted((p.run_id, "done") for p in plans)

    rows = store.runs("tiny")
    assert sorted(r.id for r in rows) == sorted(p.run_id for p in plans)  # one row a run, no duplicate
    assert [r.status for r in rows] == ["done"] * 4
    killed = {r.id: r for r in rows}[victim]
    assert killed.resumed_epochs >= 1
    assert [r.resumed_epochs for r in rows if r.id != victim] == [0] * 3
    assert events.progress[victim].resumed_after == killed.resumed_epochs  # the retry said so, as it happened
    assert len(events.progress[victim].nodes) == 2 and events.progress[victim].nodes[1] != node.node_id
    # The driver drew the killed run's first epoch before its run ended: its folder was not committed yet.
    assert events.progress[victim].ended[0][0] == 1 and events.progress[victim].ended[0][2] is False
    for run_id, progress in events.progress.items():
        epochs = [epoch for epoch, _, _ in progress.ended]
        # Every epoch of every run came through (the killed run's second epoch once or twice: it
        # may have ended before the node went, and then been trained again from the checkpoint).
        assert sorted(set(epochs)) == [1, 2] and all(ips > 0 for _, ips, _ in progress.ended), run_id


def test_a_retry_that_finds_its_run_committed_reports_it_done(tmp_path, tiny_competition):
    from ledger.executors.ray_worker import run

    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_competition, entry("name: convnext, runs: 1, accum: 1")))
    store = Store(tmp_path / "home")
    [plan] = plan_experiment(spec, spec.models, store, lambda model: model.accum)
    # The task's body, in this process: the first attempt commits the run, and its worker then dies
    # before returning; Ray's retry runs the same task again.
    first = run(plan, str(store.home), 1)
    assert first.status == "done"
    again = run(plan, str(store.home), 1)
    assert (again.status, again.folder, again.error) == ("done", first.folder, None)
    assert again.summary.error_rate == first.summary.error_rate
    assert again.summary.train_seconds == first.summary.train_seconds  # read back, not trained again
