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


# ---------------------------------------------------------------- 1, 6: recorded submission files

from test_cli_ux import _fake_kaggle  # noqa: E402
from test_submission import HALVES, add_run, setup  # noqa: E402, F401 - setup is a fixture


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
    assert Store(setup["home"]).submissions()[0]["kaggle_exit"] is None


def test_a_moved_home_submits_its_own_file_and_a_copy_never_the_original(setup, tmp_path, monkeypatch):
    import shutil

    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    submission = _bag(setup)
    row = Store(setup["home"]).submissions()[0]
    assert not Path(row["path"]).is_absolute()  # relative to the home
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

    from ledger.store import SCHEMA_VERSION

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
    assert [s["path"] for s in store.submissions()] == ["submissions/a.csv", str(outside.resolve())]
    [run] = store.runs()
    assert (run["id"], run["fingerprint"], run["host"]) == ("r1", "f", "h")  # every column kept
    store.update_run("r1", {"status": "missing"})  # the CHECK constraint takes the new status


# ---------------------------------------------------------------- 4: data --force


def test_data_force_never_deletes_a_ledger_home(setup, tmp_path):
    add_run(setup, "c0", "convnext")
    home = setup["home"]
    before = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    line = one_error_line(invoke("data", "fashion-mnist", home, "--train-per-class", "1", "--test", "1", "--force"))
    assert str(home) in line and "not a competition written by" in line
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == before


# ---------------------------------------------------------------- 3: one train per home and experiment


def test_a_second_train_of_the_same_experiment_refuses_in_one_line(tiny_spec, tmp_path):
    from ledger.lock import experiment_lock

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
    from ledger.lock import experiment_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ledger.lock import experiment_lock\n"
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
    bagged = _bag(setup)
    assert bagged["runs"] == ["c0", "v0"]  # the missing run is not bagged, and ensemble works
    from ledger.plan import plan

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


def test_a_read_only_ledger_serves_reads_and_refuses_writes_in_one_line(setup, monkeypatch):
    submission = None
    add_run(setup, "c0", "convnext")
    submission = _bag(setup)
    db = setup["home"] / "ledger.db"
    real_access = os.access
    # The user may not write ledger.db (tests may run as root, where a chmod would not hold).
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == db and mode == os.W_OK
                        else real_access(path, mode))
    result = invoke("runs", "--home", setup["home"])
    assert result.exit_code == 0 and "c0" in result.stdout
    line = one_error_line(invoke("submissions", "score", submission["submission_id"], "0.9", "--home", setup["home"]))
    assert str(db) in line and "read-only" in line
    assert Store(setup["home"]).submissions()[0]["public_score"] is None


# ---------------------------------------------------------------- 7, 11, 12, 14, 16: specs


def _check_spec(tmp_path, tiny_competition, models, top="name: tiny\n", *sets):
    text = write_spec(tmp_path / "s.yaml", tiny_competition, models).read_text().replace("name: tiny\n", top, 1)
    (tmp_path / "s.yaml").write_text(text)
    return invoke("check", tmp_path / "s.yaml", *[a for item in sets for a in ("--set", item)])


@pytest.mark.parametrize("name", ["../../escape", "a/..", "..", "x y", "é"])
def test_a_model_entry_name_must_be_a_safe_name(tmp_path, tiny_competition, name):
    line = one_error_line(_check_spec(tmp_path, tiny_competition,
                                      f"  - {{name: {json.dumps(name)}, arch: convnext_atto, size: 32}}\n"))
    assert "models[0].name" in line and str(tmp_path / "s.yaml") in line


@pytest.mark.parametrize("name", ["ledger.db", "submissions", "cache"])
def test_an_experiment_cannot_be_named_as_a_file_of_the_home(tmp_path, tiny_competition, name):
    line = one_error_line(_check_spec(tmp_path, tiny_competition, "  - {name: c, arch: convnext_atto, size: 32}\n",
                                      f"name: {name}\n"))
    assert f"name: {name!r} is a file of the ledger home" in line


def test_runs_are_bounded_so_check_never_accepts_a_plan_that_hangs(tmp_path, tiny_competition):
    line = one_error_line(_check_spec(tmp_path, tiny_competition,
                                      "  - {name: c, arch: convnext_atto, size: 32, runs: 1000000}\n"))
    assert "models[0].runs: must be <= 1000, got 1000000" in line
    result = _check_spec(tmp_path, tiny_competition, "  - {name: c, arch: convnext_atto, size: 32, runs: 1000}\n")
    assert result.exit_code == 0, result.output


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, tiny_competition):
    bomb = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    models = ("  - name: c\n    arch: convnext_atto\n    size: 32\n    model_kwargs:\n"
              "      l0: &l0 lol\n" + bomb.replace("  l", "      l"))
    line = one_error_line(_check_spec(tmp_path, tiny_competition, models))  # 9**9 values once expanded
    assert str(tmp_path / "s.yaml") in line and "aliases expand to more than 100,000 values" in line
    ok = "  - &entry {name: c, arch: convnext_atto, size: 32}\n  - {<<: *entry, name: d}\n"
    assert _check_spec(tmp_path, tiny_competition, ok).exit_code == 0  # ordinary aliases still work


def test_scientific_notation_is_a_number_in_the_spec_and_in_set(tmp_path, tiny_competition):
    from ledger.spec import load_spec

    models = "  - {name: c, arch: convnext_atto, size: 32, lr: 3e-3, weight: 1E1}\n"
    spec_path = write_spec(tmp_path / "s.yaml", tiny_competition, models)
    spec = load_spec(spec_path, check_models=False)
    assert spec.models[0].lr == pytest.approx(0.003) and spec.models[0].weight == pytest.approx(10.0)
    spec = load_spec(spec_path, ["train.lr=1e-3", "models.c.epochs=3"], check_models=False)
    assert spec.models[0].lr == pytest.approx(0.003)  # the entry's own lr wins over train's
    assert load_spec(spec_path, ["models.c.lr=1e-3"], check_models=False).models[0].lr == pytest.approx(0.001)
    assert load_spec(spec_path, ["models.c.epochs=3"], check_models=False).models[0].epochs == 3  # ints stay ints


# ---------------------------------------------------------------- 9, 14: run artifacts


def test_a_corrupt_or_non_finite_test_preds_file_is_named_and_nothing_is_written(setup, tmp_path):
    import numpy as np

    from ledger.artifacts import Predictions, save_predictions

    add_run(setup, "c0", "convnext")
    add_run(setup, "v0", "vit")
    preds = setup["home"] / "tiny" / "c0" / "test_preds.npz"
    whole = preds.read_bytes()
    preds.write_bytes(whole[:100])  # BadZipFile
    line = one_error_line(invoke("ensemble", setup["spec_path"], "--home", setup["home"]))
    assert str(preds) in line and "unreadable run artifact" in line

    n, classes = len(setup["sample"]), 10
    probs = np.full((n, classes), 0.1, dtype=np.float32)
    probs[3, 2] = np.nan
    np.savez(preds.open("wb"), ids=setup["sample"]["image_id"].to_numpy(str), probs=probs,
             vocab=np.array(sorted(setup["train"]["label"].unique())))
    line = one_error_line(invoke("ensemble", setup["spec_path"], "--home", setup["home"]))
    assert str(preds) in line and "1 of 12 rows of probabilities are not finite (first at row 3)" in line
    assert Store(setup["home"]).submissions() == [] and not (setup["home"] / "submissions").exists()
    with pytest.raises(Exception, match="not finite"):  # nor are they ever written
        save_predictions(tmp_path / "x.npz", Predictions(np.array(["a"]), np.array([[np.inf, 0.0]]), np.array(["p", "q"])))
    assert not (tmp_path / "x.npz").exists()


def test_report_out_pointing_at_a_file_is_one_line(setup, tmp_path):
    add_run(setup, "c0", "convnext")
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    line = one_error_line(invoke("report", setup["spec_path"], "--home", setup["home"], "--out", taken))
    assert str(taken) in line and "is a file" in line and taken.read_text() == "mine"


# ---------------------------------------------------------------- 15: checkpoints


def _loop_parts():
    from types import SimpleNamespace

    import torch

    net = torch.nn.Linear(4, 2)
    return SimpleNamespace(net=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                           scaler=torch.amp.GradScaler("cpu", enabled=False),
                           batches=SimpleNamespace(state=lambda: {"order": [1, 2]}), generator=torch.Generator())


def test_a_full_disk_while_checkpointing_says_disk_full(tmp_path):
    from ledger.checkpoint import Checkpoint
    from ledger.errors import LedgerError

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full, the device whose every write fails with ENOSPC")
    (tmp_path / (CHECKPOINT + ".tmp")).symlink_to("/dev/full")  # the checkpoint's temporary lands on it
    (tmp_path / CHECKPOINT).write_bytes(b"the previous epoch's checkpoint")
    with pytest.raises(LedgerError) as caught:
        Checkpoint(tmp_path).save(_loop_parts(), [])
    assert str(caught.value) == f"{tmp_path / CHECKPOINT}: cannot save the checkpoint: disk full"
    assert (tmp_path / CHECKPOINT).read_bytes() == b"the previous epoch's checkpoint"  # kept whole


def test_a_corrupt_checkpoint_never_shows_torchs_weights_only_advice(tmp_path):
    from ledger.checkpoint import Checkpoint
    from ledger.errors import LedgerError

    checkpoint = Checkpoint(tmp_path)
    checkpoint.save(_loop_parts(), [])
    checkpoint.path.write_bytes(b"\x80\x02garbage" * 50)
    with pytest.raises(LedgerError) as caught:
        checkpoint.restore(_loop_parts())
    message = str(caught.value)
    assert message.startswith(f"{checkpoint.path}: corrupt checkpoint") and "weights_only" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# ---------------------------------------------------------------- 10: a batch larger than the set


def test_a_batch_larger_than_the_training_set_fails_the_run_saying_so(tiny_spec, tmp_path):
    home = tmp_path / "home"
    tiny_spec.write_text(tiny_spec.read_text().replace("batch_size: 8", "batch_size: 64"))
    result = invoke("train", tiny_spec, "--home", home)
    assert result.exit_code == 1 and "Traceback" not in result.output
    [row] = Store(home).runs("tiny")
    # 10 classes of 6 images, a stratified 20% held out: 1 of each class, 5 x 10 = 50 to train on.
    assert row["status"] == "failed"
    assert row["error"] == "c: batch_size 64 is larger than the 50 training images of its split; lower batch_size"
    assert "batch_size 64 is larger than the 50 training images" in " ".join(result.stdout.split())
    assert not list((home / "tiny").glob("*"))  # no folder left behind


# ---------------------------------------------------------------- 21, 22: what the terminal shows


def test_plain_and_tta_accuracy_are_labelled_where_shown(tmp_path):
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from ledger.cli.ledger_cmds import _runs_table
    from ledger.cli.train import _results_table
    from ledger.progress import ConsoleEvents
    from ledger.record import RunResult

    console = Console(file=io.StringIO(), width=200)
    plan = SimpleNamespace(run_id="r1", model=SimpleNamespace(name="m", epochs=1, freeze_epochs=0, finetune=False))
    result = RunResult("r1", "done", summary=dict(accuracy=0.75, tta_accuracy=0.8125, images_per_s=10.0,
                                                  peak_bytes=2**20, train_seconds=3.0))
    ConsoleEvents(console, [plan]).run_finished(0, 1, plan, result)
    console.print(_results_table([plan], [result], console))
    shown = console.file.getvalue()
    assert "accuracy 0.7500 (last epoch, no TTA)  TTA accuracy 0.8125" in shown
    assert "acc no TTA" in shown and "TTA acc" in shown and "0.8125" in shown
    row = dict(id="r1", experiment="e", model="m", arch="a", size="8", split_seed=1, accum=1, epochs=1,
               status="done", error=None, valid_loss=0.5, error_rate=0.25, images_per_s=1.0, peak_bytes=1, device="cpu")
    console = Console(file=io.StringIO(), width=80)
    console.print(_runs_table([row], console))
    assert "acc no TTA" in console.file.getvalue() and "0.7500" in console.file.getvalue()


def test_at_80_columns_a_failed_runs_reason_is_never_cut_mid_word():
    import io

    from rich.console import Console

    from ledger.cli.ledger_cmds import _runs_table

    reason = ("RuntimeError: something very bad happened in the convolution layer while computing gradients of the "
              "network")
    row = dict(id="20260101-120000-abcdef", experiment="e", model="convnext", arch="a", size="8", split_seed=1,
               accum=1, epochs=1, status="failed", error=reason, valid_loss=None, error_rate=None, images_per_s=None,
               peak_bytes=None, device="cpu")
    console = Console(file=io.StringIO(), width=80)
    console.print(_runs_table([row], console))
    cell = " ".join(line.split("│")[3].strip() for line in console.file.getvalue().splitlines()
                    if line.count("│") >= 4).split()
    shown = " ".join(cell)
    assert shown.endswith("…") and len(shown) <= 60
    words = shown[:-1].split()
    assert ("failed: " + reason).split()[: len(words)] == words  # whole words only


HELP_COMMANDS = [["data"], ["data", "fashion-mnist"], ["check"], ["probe-memory"], ["lr-find"], ["train"],
                 ["ensemble"], ["predict"], ["report"], ["runs"], ["submissions"], ["submissions", "score"],
                 ["submit"], ["score"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_help_at_80_columns_is_wrapped_once_and_cuts_nothing(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.stdout
    description = lines[lines.index(next(line for line in lines if line.lstrip().startswith("Usage:"))) + 2:]
    description = description[: next(i for i, line in enumerate(description) if line.startswith("╭"))]
    paragraph: list[str] = []
    for line in description + [""]:
        if line.strip() and not line.strip().startswith("Example:"):
            paragraph.append(line.rstrip())
            continue
        # Every line of a paragraph but its last is filled: wrapped once, at the terminal's width.
        assert all(len(text) > 60 for text in paragraph[:-1]), "\n".join(paragraph)
        paragraph = []


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
    assert [r["id"] for r in rows] == ids and [str(r["split_seed"]) for r in rows] == seeds
    assert not (home / ".plan-tiny.json").exists()


# ---------------------------------------------------------------- 20: Ctrl-C says what it leaves


@pytest.mark.parametrize("epochs_done", [0, 1])
def test_ctrl_c_says_whether_the_run_resumes_or_starts_again(tiny_spec, tmp_path, monkeypatch, epochs_done):
    import ledger.execute as execute

    def interrupted(plan, competition, images, folder, device, progress, checkpoint):
        if epochs_done:
            (folder / CHECKPOINT).write_bytes(b"epoch 1")  # what a finished epoch leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(execute, "_train", interrupted)
    home = tmp_path / "home"
    result = invoke("train", tiny_spec, "--home", home)
    assert result.exit_code == 130
    [row] = Store(home).runs("tiny")
    said = " ".join(result.stdout.split())
    if epochs_done:
        assert row["error"] == "interrupted; resumes after its last finished epoch"
        assert f"run {row['id']} resumes after its last finished epoch" in said
    else:
        assert row["error"] == "interrupted before its first epoch ended; starts again from epoch 1"
        assert f"run {row['id']} before its first epoch ended; starts again from epoch 1" in said
        assert "resumes" not in said
