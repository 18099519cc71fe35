"""Hostile inputs and badly timed kills (issue 22): each gives one clear line naming the file, key
or id at fault, a non-zero exit, and loses nothing that earlier commands wrote."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CONVNEXT, write_spec
from typer.testing import CliRunner

from ledger.checkpoint import CHECKPOINT
from ledger.cli import app
from ledger.store import Store

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="ledger")


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


ONE_RUN = (f"  - {{name: c, arch: convnext_atto, size: 32, runs: 1, epochs: 2, accum: 1,"
           f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n")


@pytest.fixture
def tiny_spec(tmp_path, tiny_competition, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_spec(tmp_path / "tiny.yaml", tiny_competition, ONE_RUN, "split: {valid_pct: 0.2, seed: 3}\n")


# ---------------------------------------------------------------- 2: a kill at the commit


def _plan_and_train(spec_path, home):
    from ledger.experiment import plan_experiment, train_experiment
    from ledger.progress import ConsoleEvents
    from ledger.spec import load_spec
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
    import ledger.experiment as experiment

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
    assert row["status"] == "running"
    store.update_run(row["id"], {"pid": dead_pid(), "host": socket.gethostname()})  # the killed process
    summary_before = (home / "tiny" / row["id"] / "summary.json").read_bytes()

    plans, store = _plan_and_train(tiny_spec, home)
    assert plans == []  # nothing owed: the committed folder was recorded, not trained again
    [row] = store.runs("tiny")
    assert row["status"] == "done" and row["artifact_dir"] == f"tiny/{row['id']}"
    assert (home / "tiny" / row["id"] / "summary.json").read_bytes() == summary_before
    assert not (home / "tiny" / row["id"] / CHECKPOINT).exists()


def test_a_kill_after_the_last_epoch_but_before_the_rename_resumes_without_training(tiny_spec, tmp_path, monkeypatch):
    home = tmp_path / "home"
    import ledger.execute as execute

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
    partial = home / "tiny" / (row["id"] + ".partial")
    assert row["status"] == "interrupted" and (partial / CHECKPOINT).is_file() and (partial / "summary.json").is_file()

    plans, store = _plan_and_train(tiny_spec, home)
    assert [p.run_id for p in plans] == [row["id"]] and plans[0].resume
    [row] = store.runs("tiny")
    assert row["status"] == "done" and row["resumed_epochs"] == 2  # both epochs restored, none trained again
    assert not partial.exists() and not (home / "tiny" / row["id"] / CHECKPOINT).exists()
