"""Hostile timing and concurrency (issue 22): a kill at the commit, two trains at once, a batch larger
than the set, --dry-run's promise, and what Ctrl-C says. Each loses nothing earlier commands wrote."""

import os
import socket
import subprocess
import sys

import pytest
from hostile_common import dead_pid, invoke, one_error_line, tiny_spec  # noqa: F401 - tiny_spec is a fixture

from ledger.training.checkpoint import CHECKPOINT
from ledger.store.database import Store


# ---------------------------------------------------------------- 2: a kill at the commit


def _plan_and_train(spec_path, home):
    from ledger.executors.local import plan_experiment, train_experiment
    from ledger.cli.progress import ConsoleEvents
    from ledger.spec.loader import load_spec
    from rich.console import Console
    import torch

    spec = load_spec(spec_path)
    store = Store(home)
    plans = plan_experiment(spec, spec.models, store, lambda model: model.accum or 1)
    if plans:
        with ConsoleEvents(Console(file=open(os.devnull, "w")), plans) as events:
            train_experiment(spec, plans, store, events, torch.device("cpu"))
    return plans, store


def test_a_kill_after_the_rename_but_before_the_row_records_the_run_not_retrains_it(tiny_spec, tmp_path, monkeypatch):
    home = tmp_path / "home"
    import ledger.executors.local as experiment

    real_record = experiment.record

    def killed_at_the_commit(store, result):
        if result.status == "done":
            raise KeyboardInterrupt  # the folder is renamed, the row still says running
        real_record(store, result)

    monkeypatch.setattr(experiment, "record", killed_at_the_commit)
    with pytest.raises(KeyboardInterrupt):
        _plan_and_train(tiny_spec, home)
    monkeypatch.setattr(experiment, "record", real_record)
    store = Store(home)
    [row] = store.runs("tiny")
    assert row.status == "running"
    store.update_run(row.id, {"pid": dead_pid(), "host": socket.gethostname()})  # the killed process
    summary_before = (home / "tiny" / row.id / "summary.json").read_bytes()

    plans, store = _plan_and_train(tiny_spec, home)
    assert plans == []  # nothing owed: the committed folder was recorded, not trained again
    [row] = store.runs("tiny")
    assert row.status == "done" and row.artifact_dir == f"tiny/{row.id}"
    assert (home / "tiny" / row.id / "summary.json").read_bytes() == summary_before
    assert not (home / "tiny" / row.id / CHECKPOINT).exists()


def test_a_kill_after_the_last_epoch_but_before_the_rename_resumes_without_training(tiny_spec, tmp_path, monkeypatch):
    home = tmp_path / "home"
    import ledger.runs.execution as execute

    real_replace = os.replace

    def killed_before_the_rename(source, target):
        if str(source).endswith(".partial"):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(execute.os, "replace", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        _plan_and_train(tiny_spec, home)
    monkeypatch.setattr(execute.os, "replace", real_replace)
    store = Store(home)
    [row] = store.runs("tiny")
    partial = home / "tiny" / (row.id + ".partial")
    assert row.status == "interrupted" and (partial / CHECKPOINT).is_file() and (partial / "summary.json").is_file()

    plans, store = _plan_and_train(tiny_spec, home)
    assert [p.run_id for p in plans] == [row.id] and plans[0].resume
    [row] = store.runs("tiny")
    assert row.status == "done" and row.resumed_epochs == 2  # both epochs restored, none trained again
    assert not partial.exists() and not (home / "tiny" / row.id / CHECKPOINT).exists()


# ---------------------------------------------------------------- 3: one train per home and experiment


def test_a_second_train_of_the_same_experiment_refuses_in_one_line(tiny_spec, tmp_path):
    from ledger.runs.lock import experiment_lock

    home = tmp_path / "home"
    with experiment_lock(home, "tiny", "2026-01-01T00:00:00"):  # a first `ledger train` holds it
        line = one_error_line(invoke("train", tiny_spec, "--home", home))
        assert "experiment 'tiny'" in line and f"pid {os.getpid()}" in line and str(home) in line
        assert Store(home).runs() == []  # nothing planned, nothing recorded
        with experiment_lock(home, "other", "now"):  # another experiment of the same home is free
            pass
    result = invoke("train", tiny_spec, "--home", home, "--dry-run")
    assert result.exit_code == 0, result.output


def test_the_lock_dies_with_its_process(tmp_path):
    from ledger.runs.lock import experiment_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ledger.runs.lock import experiment_lock\n"
                               f"with experiment_lock({str(tmp_path)!r}, 'e', 'now'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"pid {holder.pid}"):
        with experiment_lock(tmp_path, "e", "now"):
            pass
    holder.kill()  # kill -9: no cleanup runs, the kernel drops the lock
    holder.wait()
    with experiment_lock(tmp_path, "e", "now"):
        pass


# ---------------------------------------------------------------- 10: a batch larger than the set


def test_a_batch_larger_than_the_training_set_fails_the_run_saying_so(tiny_spec, tmp_path):
    home = tmp_path / "home"
    tiny_spec.write_text(tiny_spec.read_text().replace("batch_size: 8", "batch_size: 64"))
    result = invoke("train", tiny_spec, "--home", home)
    assert result.exit_code == 1 and "Traceback" not in result.output
    [row] = Store(home).runs("tiny")
    # 10 classes of 6 images, a stratified 20% held out: 1 of each class, 5 x 10 = 50 to train on.
    assert row.status == "failed"
    assert row.error == "c: batch_size 64 is larger than the 50 training images of its split; lower batch_size"
    assert "batch_size 64 is larger than the 50 training images" in " ".join(result.stdout.split())
    assert not list((home / "tiny").glob("*"))  # no folder left behind


# ---------------------------------------------------------------- 17: --dry-run shows what train does


def test_dry_run_shows_the_ids_and_seeds_the_real_run_uses(tiny_spec, tmp_path, monkeypatch):
    import re

    from ledger.cli import console

    monkeypatch.setattr(console, "_width", 300)  # every column of the plan table
    home = tmp_path / "home"
    tiny_spec.write_text(tiny_spec.read_text().replace("seed: 3", "seed: null").replace("runs: 1", "runs: 2")
                         .replace("epochs: 2", "epochs: 1"))
    shown = invoke("train", tiny_spec, "--home", home, "--dry-run")
    assert shown.exit_code == 0, shown.output
    ids = re.findall(r"\d{8}-\d{6}-[0-9a-f]{6}", shown.stdout)
    seeds = re.findall(r"seed (\d+)", shown.stdout)
    assert len(set(ids)) == 2 and len(seeds) == 2
    again = invoke("train", tiny_spec, "--home", home, "--dry-run")  # a second look shows the same plan
    assert re.findall(r"\d{8}-\d{6}-[0-9a-f]{6}", again.stdout) == ids
    trained = invoke("train", tiny_spec, "--home", home)
    assert trained.exit_code == 0, trained.output
    rows = Store(home).runs("tiny")
    assert [r.id for r in rows] == ids and [str(r.split_seed) for r in rows] == seeds
    assert not (home / ".plan-tiny.json").exists()


# ---------------------------------------------------------------- 20: Ctrl-C says what it leaves


@pytest.mark.parametrize("epochs_done", [0, 1])
def test_ctrl_c_says_whether_the_run_resumes_or_starts_again(tiny_spec, tmp_path, monkeypatch, epochs_done):
    import ledger.runs.execution as execute

    def interrupted(plan, competition, images, device, progress, checkpoint):
        if epochs_done:
            checkpoint.path.write_bytes(b"epoch 1")  # what a finished epoch leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(execute, "train_run", interrupted)
    home = tmp_path / "home"
    result = invoke("train", tiny_spec, "--home", home)
    assert result.exit_code == 130
    [row] = Store(home).runs("tiny")
    said = " ".join(result.stdout.split())
    if epochs_done:
        assert row.error == "interrupted; resumes after its last finished epoch"
        assert f"run {row.id}: interrupted; resumes after its last finished epoch" in said
    else:
        assert row.error == "interrupted before its first epoch ended; starts again from epoch 1"
        assert f"run {row.id}: interrupted before its first epoch ended; starts again from epoch 1" in said
        assert "resumes" not in said
