"""Durable runs: schema migration, stale rows, orphan folders, and kill -9 then resume."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_CONVNEXT, write_spec

from ledger.training.checkpoint import CHECKPOINT
from ledger.executors.local import housekeeping
from ledger.store.migrations import _SCHEMA_V1, SCHEMA_VERSION
from ledger.store.database import Store


def test_a_ledger_of_the_first_schema_is_upgraded_without_losing_a_row(tmp_path):
    home = tmp_path / "home"
    (home / "fashion" / "r1").mkdir(parents=True)
    db = sqlite3.connect(home / "ledger.db")
    db.executescript(_SCHEMA_V1)
    db.execute("INSERT INTO runs VALUES ('r1','fashion','convnext','convnext_atto','32',7,1,64,16,'done',"
               "'2026-11-22T00:00:00',NULL,0.5,0.1,900.0,1000,'cpu','fp32',?,NULL,123,'{}')",
               (str(home / "fashion" / "r1"),))
    db.execute("INSERT INTO runs VALUES ('r2','fashion','vit','vit_tiny','28',8,1,64,6,'failed',"
               "'2026-11-22T00:00:00',NULL,NULL,NULL,NULL,NULL,'cpu','fp32',NULL,'boom',124,'{}')")
    db.execute("INSERT INTO submissions VALUES ('s1','fashion','sub.csv','2026','[\"r1\"]','{\"r1\": 1.0}',0.9)")
    db.commit()
    db.close()

    store = Store(home)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rows = store.runs()
    assert [(r.id, r.status, r.error_rate, r.pid) for r in rows] == [
        ("r1", "done", 0.1, 123), ("r2", "failed", None, 124)]
    assert rows[0].artifact_dir == "fashion/r1"  # relative to the home from now on
    assert store.artifact_path(rows[0]) == home / "fashion" / "r1"
    store.update_run("r2", {"status": "interrupted"})  # the new status passes the CHECK constraint
    assert store.submissions()[0].runs == ["r1"] and store.submissions()[0].sha256 is None
    store.close()
    assert Store(home).db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # idempotent


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_running_rows_whose_process_is_gone_become_interrupted(tmp_path):
    store = Store(tmp_path)
    base = dict(experiment="e", model="m", arch="a", size="8", status="running", started_at="2026")
    store.insert_run(base | dict(id="dead", host=socket.gethostname(), pid=_dead_pid()))
    store.insert_run(base | dict(id="alive", host=socket.gethostname(), pid=os.getpid()))
    store.insert_run(base | dict(id="elsewhere", host="another-machine", pid=_dead_pid()))
    assert store.mark_stale_runs() == ["dead"]
    assert {r.id: r.status for r in store.runs()} == {"dead": "interrupted", "alive": "running",
                                                            "elsewhere": "running"}


def test_orphan_partial_folders_are_cleaned_unless_resumable(tmp_path):
    store = Store(tmp_path)
    base = dict(experiment="e", model="m", arch="a", size="8", started_at="2026")
    store.insert_run(base | dict(id="half", status="interrupted"))
    store.insert_run(base | dict(id="nockpt", status="interrupted"))
    for name in ("half.partial", "nockpt.partial", "orphan.partial", "old.tmp-999"):
        (tmp_path / "e" / name).mkdir(parents=True)
    (tmp_path / "e" / "half.partial" / CHECKPOINT).write_bytes(b"x")
    housekeeping(store, "e")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["half.partial"]


def _ledger(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", "from ledger.cli import app; app()", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_kill_9_in_the_second_of_three_runs_then_the_same_command_finishes_the_job(tmp_path, tiny_competition):
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "tiny.yaml", tiny_competition,
                      f"  - {{name: c, arch: convnext_atto, size: 32, runs: 3, epochs: 5, accum: 1,"
                      f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n",
                      "split: {valid_pct: 0.2, seed: 3}\n").as_posix()
    spec_text = Path(spec).read_text().replace("batch_size: 8", "batch_size: 4")
    Path(spec).write_text(spec_text)
    first = _ledger("train", spec, "--home", home)
    db = home / "ledger.db"
    second_run_checkpointed = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    rows = con.execute("SELECT id, status FROM runs ORDER BY rowid").fetchall()
            except sqlite3.OperationalError:
                rows = []  # the ledger is still being created
            if len(rows) == 2 and rows[0][1] == "done" and (home / "tiny" / f"{rows[1][0]}.partial" / CHECKPOINT).exists():
                second_run_checkpointed = rows[1][0]
                break
        time.sleep(0.02)
    assert second_run_checkpointed, "the second run never reached its first checkpoint"
    first.send_signal(signal.SIGKILL)
    first.communicate()

    with sqlite3.connect(db) as con:
        assert con.execute("SELECT status FROM runs WHERE id=?", (second_run_checkpointed,)).fetchone()[0] == "running"
    again = _ledger("train", spec, "--home", home)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert f"resuming after epoch" in output

    store = Store(home)
    rows = store.runs("tiny")
    assert [r.status for r in rows] == ["done"] * 3
    assert sorted(r.run_number for r in rows) == [0, 1, 2]
    resumed = next(r for r in rows if r.id == second_run_checkpointed)
    assert resumed.resumed_epochs >= 1
    summary = json.loads((store.artifact_path(resumed) / "summary.json").read_text())
    assert summary["resumed_epochs"] == resumed.resumed_epochs
    assert not list((home / "tiny").glob("*.partial")) and not list((home / "tiny").glob("*.tmp*"))
    assert not (store.artifact_path(resumed) / CHECKPOINT).exists()  # deleted when the run commits

    third = _ledger("train", spec, "--home", home)
    output, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and "nothing to train" in output
    assert len(Store(home).runs("tiny")) == 3
