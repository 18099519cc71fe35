"""The Ray executor on a local Ray instance started once for the module: runs of a tiny spec
trained as Ray tasks and recorded by the driver, a failing and a crashing run among good ones,
the shared-home check, and `accum: auto` looked up for the workers' device."""

import dataclasses
import json
import os
import time

import pytest
from conftest import TINY_CONVNEXT, write_spec
import torch
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from ledger import ray_executor  # noqa: E402 - only with Ray installed
from ledger.cli import app  # noqa: E402
from ledger.errors import LedgerError  # noqa: E402
from ledger.experiment import plan_experiment  # noqa: E402
from ledger.memory import device_name  # noqa: E402
from ledger.probe import Trial  # noqa: E402
from ledger.probing import probe_key, probe_setting  # noqa: E402
from ledger.ray_executor import RayOptions, train_on_ray, worker_accum  # noqa: E402
from ledger.spec import load_spec  # noqa: E402
from ledger.store import Store, new_id  # noqa: E402

runner = CliRunner()
CONVNEXT = f"arch: convnext_atto, size: 32, model_kwargs: {json.dumps(TINY_CONVNEXT)}"


def entry(fields: str) -> str:
    """One tiny ConvNeXt model entry of a spec's models list."""
    return f"  - {{{fields}, {CONVNEXT}}}\n"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (it takes ~10 s to start); the executor joins it."""
    ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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

    from ledger.models import save_weights

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

    rows = {r["id"]: r for r in store.runs("tiny")}
    assert {run_id: rows[run_id]["status"] for run_id in (good.run_id, wrong.run_id, crashing.run_id)} == {
        good.run_id: "done", wrong.run_id: "failed", crashing.run_id: "failed"}
    assert "weights do not fit convnext_atto" in rows[wrong.run_id]["error"]
    assert rows[crashing.run_id]["error"].startswith("worker: ") and "gone" in rows[crashing.run_id]["error"]
    assert "\n" not in rows[crashing.run_id]["error"]
    assert sorted(events.finished) == sorted((r.run_id, r.status) for r in results) and len(results) == 3


def test_a_home_the_workers_do_not_see_is_a_one_line_error(tmp_path, tiny_competition, monkeypatch):
    # Simulated: the driver's token file never reaches the folder, as on a node with its own disk.
    monkeypatch.setattr(ray_executor, "_leave_token", lambda home, token: None)
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_competition, entry("name: convnext, runs: 1, accum: 1"))
    result = invoke("train", spec_path, "--home", tmp_path / "home", "--executor", "ray")
    assert result.exit_code == 1
    assert "is not visible from worker" in result.output and "filesystem every node sees" in result.output
    assert "Traceback" not in result.output
    assert [r["status"] for r in Store(tmp_path / "home").runs()] == []  # nothing started


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
    with pytest.raises(LedgerError, match="no memory probe is on record for the Ray workers' device"):
        worker_accum(spec, store, [plan], "cuda: Another GPU")


class InterruptedAtSecond(Finished):
    """Ctrl-C while the second run is being submitted: the first is in flight."""

    def run_started(self, index, total, plan):
        if index == 1:
            raise KeyboardInterrupt


def test_ctrl_c_cancels_and_records_the_runs_in_flight_interrupted(tmp_path, tiny_competition):
    from ledger.execute import run_folders
    from ledger.ray_executor import _submit_and_record

    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_competition, entry("name: convnext, runs: 2, accum: 1")))
    store = Store(tmp_path / "home")
    first, second = plan_experiment(spec, spec.models, store, lambda model: model.accum)
    run_folders(store.home, first)[0].mkdir(parents=True)  # as `execute` leaves it, with its checkpoint
    # A task that would hold its CPU for a minute: cancelled, it frees it at once. (A lambda, so
    # that Ray ships it by value: workers cannot import this test module.)
    sleeper = ray.remote(max_calls=1, num_cpus=1)(lambda plan, home, cpus: __import__("time").sleep(60))
    worker = dict(device="cpu: test", precisions={})
    with pytest.raises(KeyboardInterrupt):
        _submit_and_record([first, second], store, InterruptedAtSecond(), store.home, sleeper, 2, worker, 1)
    rows = store.runs("tiny")
    assert [(r["id"], r["status"]) for r in rows] == [(first.run_id, "interrupted")]  # the second never started
    assert "resumes from its last finished epoch" in rows[0]["error"]
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2  # the cancelled task's worker is gone
