"""Hostile homes and ledgers (issue 22): recorded submission files, moved or copied homes, data --force
on a home, run folders deleted by hand, killed runs, and a corrupt, full or read-only ledger.db."""

import contextlib
import gc
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from hostile_common import dead_pid, invoke, one_error_line
from test_cli_ux import _fake_kaggle
from test_submission import HALVES, add_run, setup  # noqa: F401 - setup is a fixture

from ledger.store.database import Store


# ---------------------------------------------------------------- 1, 6: recorded submission files


def _bag(setup, *args):
    result = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ensemble_never_replaces_a_recorded_submission_file(setup, tmp_path):
    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    add_run(setup, "v0", "vit")
    out = tmp_path / "sub.csv"
    first = _bag(setup, "--out", out)
    before = out.read_bytes()
    line = one_error_line(invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--out", out,
                                 "--weight", "vit=0"))
    assert str(out) in line and first["submission_id"] in line
    assert out.read_bytes() == before and len(Store(setup["home"]).submissions()) == 1
    assert str(tmp_path) in one_error_line(invoke("ensemble", setup["spec_path"], "--home", setup["home"],
                                                  "--out", tmp_path))  # a folder


def test_submit_refuses_a_file_changed_since_it_was_recorded(setup, tmp_path, monkeypatch):
    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    submission = _bag(setup)
    monkeypatch.setenv("PATH", f"{_fake_kaggle(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    Path(submission["out"]).write_text("image_id,label\nsomething,else\n")
    line = one_error_line(invoke("submit", submission["submission_id"], "-m", "m", "--competition", "c",
                                 "--home", setup["home"]))
    assert submission["submission_id"] in line and "changed" in line
    assert not (tmp_path / "bin" / "args").exists()  # kaggle never ran
    assert Store(setup["home"]).submissions()[0].kaggle_exit is None


def test_a_moved_home_submits_its_own_file_and_a_copy_never_the_original(setup, tmp_path, monkeypatch):
    import shutil

    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    submission = _bag(setup)
    row = Store(setup["home"]).submissions()[0]
    assert not Path(row.path).is_absolute()  # relative to the home
    copy = tmp_path / "copy"
    shutil.copytree(setup["home"], copy)
    moved = tmp_path / "moved"
    os.rename(setup["home"], moved)
    bin_dir = _fake_kaggle(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for home in (moved, copy):
        result = invoke("submit", submission["submission_id"], "-m", "m", "--competition", "c", "--home", home)
        assert result.exit_code == 0, result.output
        handed = (bin_dir / "args").read_text().splitlines()[5]
        assert Path(handed).resolve().is_relative_to(home.resolve()) and Path(handed).is_file()


def test_a_v4_ledger_gets_relative_submission_paths_and_the_missing_status(tmp_path):
    from conftest import ledger_at_version

    from ledger.store.migrations import SCHEMA_VERSION

    home = tmp_path / "home"
    db = ledger_at_version(home, 4)
    inside, outside = home / "submissions" / "a.csv", tmp_path / "elsewhere.csv"
    for sid, path in (("s1", inside), ("s2", outside)):
        db.execute("INSERT INTO submissions (id, experiment, path, created_at, runs, weights)"
                   " VALUES (?, 'tiny', ?, 'now', '[]', '{}')", (sid, str(path)))
    db.execute("INSERT INTO runs (id, experiment, model, arch, size, status, started_at, fingerprint, host)"
               " VALUES ('r1', 'tiny', 'm', 'a', '8', 'failed', 'now', 'f', 'h')")
    db.close()
    store = Store(home)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [s.path for s in store.submissions()] == ["submissions/a.csv", str(outside.resolve())]
    [run] = store.runs()
    assert (run.id, run.fingerprint, run.host) == ("r1", "f", "h")  # every column kept
    store.update_run("r1", {"status": "missing"})  # the CHECK constraint takes the new status


# ---------------------------------------------------------------- 4: data --force


def test_data_force_never_deletes_a_ledger_home(setup, tmp_path):
    add_run(setup, "c0", "convnext")
    home = setup["home"]
    before = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    line = one_error_line(invoke("data", "fashion-mnist", home, "--train-per-class", "1", "--test", "1", "--force"))
    assert str(home) in line and "not a competition written by" in line
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == before


# ---------------------------------------------------------------- 5, 19: housekeeping on every command


def test_a_done_run_whose_folder_is_gone_is_missing_and_owed_again(setup, tmp_path):
    import shutil

    add_run(setup, "c0", "convnext")
    add_run(setup, "c1", "convnext")
    add_run(setup, "v0", "vit")
    shutil.rmtree(setup["home"] / "tiny" / "c1")
    listed = json.loads(invoke("runs", "--home", setup["home"], "--json").stdout)["runs"]
    assert {r["id"]: r["status"] for r in listed} == {"c0": "done", "c1": "missing", "v0": "done"}
    assert "tiny/c1" in next(r["error"] for r in listed if r["id"] == "c1")
    # A bag without it is refused unless chosen (issue 31); chosen, the missing run is not bagged.
    bagged = _bag(setup, "--allow-missing")
    assert bagged["runs"] == ["c0", "v0"]
    from ledger.runs.plan import plan

    owed = plan(setup["spec"], setup["spec"].models, Store(setup["home"]).runs("tiny"), lambda m: 1, lambda: "new")
    assert [(p.model.name, p.run_number) for p in owed] == [("convnext", 0)]  # c1 is owed again


def test_every_command_marks_a_killed_run_interrupted(setup):
    add_run(setup, "c0", "convnext", status="running")
    store = Store(setup["home"])
    store.update_run("c0", {"pid": dead_pid(), "host": socket.gethostname()})
    store.close()
    listed = json.loads(invoke("runs", "--home", setup["home"], "--json").stdout)["runs"]
    assert [(r["id"], r["status"]) for r in listed] == [("c0", "interrupted")]


# ---------------------------------------------------------------- 13: a broken ledger.db


def test_a_corrupt_ledger_gives_one_line_naming_the_file(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "ledger.db").write_bytes(b"this is not a database, it is a text file " * 100)
    for command in (["runs"], ["submissions"]):
        line = one_error_line(invoke(*command, "--home", home))
        assert str(home / "ledger.db") in line and "corrupt" in line


def test_a_full_disk_is_named_as_such(tmp_path):
    store = Store(tmp_path)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "database or disk is full"
    from ledger.errors import LedgerError

    with pytest.raises(LedgerError, match="ledger.db: disk full"):
        for n in range(2000):
            store.insert_run(dict(id=f"r{n}", experiment="e" * 200, model="m", arch="a", size="8",
                                  status="running", started_at="now", spec="x" * 2000))


@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` and its files made read-only for this process: by permissions, or where they do
    not hold (root) by the immutable attribute; skips when neither can be had here."""
    paths = [folder, *folder.iterdir()]
    for path in paths:
        path.chmod(path.stat().st_mode & ~0o222)
    immutable = os.access(folder, os.W_OK)  # root ignores permissions
    try:
        if immutable and subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True)
        for path in paths:
            path.chmod(path.stat().st_mode | 0o200)


def test_a_read_only_ledger_serves_reads_and_refuses_writes_in_one_line(setup):
    add_run(setup, "c0", "convnext")
    submission = _bag(setup)
    home, db = setup["home"], setup["home"] / "ledger.db"
    gc.collect()  # the commands' connections close, as their processes would have ended
    assert not list(home.glob("ledger.db-*"))  # the last close folded the WAL into ledger.db
    with _read_only(home):
        result = invoke("runs", "--home", home)
        assert result.exit_code == 0 and "c0" in result.stdout and submission["submission_id"] in result.stdout
        line = one_error_line(invoke("submissions", "score", submission["submission_id"], "0.9", "--home", home))
        assert str(db) in line and "read-only" in line
    assert Store(home).submissions()[0].public_score is None