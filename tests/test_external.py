"""Issue 31, item 7: external calls and messages. A hanging kaggle is stopped and the attempt kept,
as is one interrupted by Ctrl-C; SQLite's vague errors, numpy's pickle advice, a folder given to
`score`, a deleted data folder, kwargs that break a model and probes for another target each say
what is wrong, in one line."""

import json
import os
import shutil
import sqlite3
import stat
import time

import numpy as np
from conftest import write_spec
from hostile_common import ONE_RUN, invoke, one_error_line
from test_submission import HALVES, add_run, setup  # noqa: F401 - setup is a fixture

from ledger.errors import LedgerError
from ledger.runs.artifacts import load_predictions
from ledger.store import database
from ledger.store.database import Store


def _kaggle(folder, body):
    folder.mkdir()
    script = folder / "kaggle"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def _submission(setup):
    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    add_run(setup, "v0", "vit")
    result = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--json")
    return json.loads(result.stdout)["submission_id"]


def test_a_hanging_kaggle_is_stopped_and_the_attempt_recorded(setup, tmp_path, monkeypatch):
    submission_id = _submission(setup)
    monkeypatch.setenv("PATH", f"{_kaggle(tmp_path / 'bin', 'sleep 60')}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    line = one_error_line(invoke("submit", submission_id, "-m", "m", "--competition", "c", "--timeout", "1",
                                 "--home", setup["home"]))
    assert time.monotonic() - started < 30
    assert submission_id in line and "did not finish within 1 s" in line
    row = Store(setup["home"]).submissions()[0]
    assert (row.kaggle_exit, row.message, row.competition) == (124, "m", "c") and row.submitted_at


def test_ctrl_c_while_kaggle_runs_records_the_attempt(setup, tmp_path, monkeypatch):
    submission_id = _submission(setup)
    # kaggle interrupts the command that started it, as a Ctrl-C in the terminal would.
    bin_dir = _kaggle(tmp_path / "bin", "kill -INT $PPID; sleep 60")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = invoke("submit", submission_id, "-m", "m", "--competition", "c", "--home", setup["home"])
    line = one_error_line(result)
    assert result.exit_code == 130 and "interrupted while kaggle ran" in line
    assert Store(setup["home"]).submissions()[0].kaggle_exit == 130


def test_sqlites_vague_errors_name_the_cause_and_the_folder(tmp_path, monkeypatch):
    path = tmp_path / "ledger.db"
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda folder: shutil._ntuple_diskusage(100, 100, 0))
    assert database._cause(sqlite3.OperationalError("disk I/O error"), path) == f"disk full (no space left in {tmp_path})"
    monkeypatch.setattr(database.os, "access", lambda folder, mode: False)  # root may write anywhere: a fake
    cause = database._cause(sqlite3.OperationalError("unable to open database file"), path)
    assert cause.startswith(f"read-only ({tmp_path} cannot be written)")


def test_a_pickled_npz_is_refused_without_numpys_advice(tmp_path):
    path = tmp_path / "test_preds.npz"
    np.savez(path, ids=np.array([object()], dtype=object), probs=np.zeros((1, 2)), vocab=np.array(["a", "b"]))
    try:
        load_predictions(path)
    except LedgerError as error:
        message = str(error)
    assert str(path) in message and "Python objects" in message and "allow_pickle" not in message


def test_score_on_a_folder_or_a_device(tmp_path):
    (tmp_path / "solution.csv").write_text("image_id,label\na.png,cat\n")
    line = one_error_line(invoke("score", tmp_path, tmp_path / "solution.csv"))
    assert str(tmp_path) in line and "is a folder" in line
    line = one_error_line(invoke("score", "/dev/null", tmp_path / "solution.csv"))
    assert "/dev/null" in line and "not a regular file" in line


def test_a_deleted_data_folder_is_named_not_a_changed_recipe(setup, tmp_path, tiny_competition):
    data = tmp_path / "data"
    shutil.copytree(tiny_competition, data)
    spec = write_spec(tmp_path / "moved.yaml", data, ONE_RUN)
    add_run(setup, "c0", "convnext")
    shutil.rmtree(data)
    line = one_error_line(invoke("ensemble", spec, "--home", setup["home"]))
    assert f"{data}: data folder not found" in line and "recipe changed" not in line


def test_kwargs_that_break_the_model_are_blamed_not_the_size(tmp_path, tiny_competition):
    spec = write_spec(tmp_path / "k.yaml", tiny_competition,
                      "  - {name: r, arch: resnet18, size: 32, accum: 1, model_kwargs: {in_chans: 1}}\n")
    line = one_error_line(invoke("check", spec))
    assert "models[0].model_kwargs" in line and "models[0].size" not in line


def test_probes_for_another_target_are_named_by_the_dry_run(tmp_path, tiny_competition, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "tiny.yaml", tiny_competition, ONE_RUN)
    home = tmp_path / "home"
    Store(home).record_probe("tiny", "c", "key", "32", "cpu", 15 * 2**30, 0.05, 1, [], target="t4", precision="fp16")
    result = invoke("train", spec, "--dry-run", "--home", home, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "the probes on record are for t4 in fp16" in result.output and "probe-memory` first" not in result.output


def test_an_unreachable_ray_address_is_one_line_at_once(tmp_path, tiny_competition, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as probe:  # a port nothing listens on once this socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = write_spec(tmp_path / "tiny.yaml", tiny_competition, ONE_RUN)
    started = time.monotonic()
    line = one_error_line(invoke("train", spec, "--executor", "ray", "--address", f"127.0.0.1:{port}",
                                 "--home", tmp_path / "home"))
    assert f"cannot connect to Ray at 127.0.0.1:{port}: nothing answers there" in line
    assert time.monotonic() - started < 60
