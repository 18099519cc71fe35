"""Issue 31, item 5: a bag is whole or says why not. Runs of the spec still training, or done runs
whose folder was deleted, are refused with their ids; --allow-missing bags the rest and lists them."""

import json
import os
import shutil
import socket

from hostile_common import invoke, one_error_line
from test_submission import HALVES, add_run, setup  # noqa: F401 - setup is a fixture

from ledger.spec.fingerprint import run_fingerprint
from ledger.store.database import Store


def _ensemble(setup, *args):
    return invoke("ensemble", setup["spec_path"], "--home", setup["home"], *args)


def test_runs_still_training_are_refused_unless_allowed(setup):
    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    add_run(setup, "v0", "vit")
    store = Store(setup["home"])
    store.insert_run(dict(id="c1", experiment="tiny", model="convnext", arch="x", size="32", status="running",
                          started_at="2026-01-01T00:00:00", pid=os.getpid(), host=socket.gethostname(),
                          fingerprint=run_fingerprint(setup["spec"], setup["spec"].model("convnext"))))
    line = one_error_line(_ensemble(setup))
    assert "c1" in line and "still training" in line and "--allow-missing" in line
    assert Store(setup["home"]).submissions() == []
    result = _ensemble(setup, "--allow-missing", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runs"] == ["c0", "v0"] and {"run_id": "c1", "reason": "still training"} in data["excluded"]


def test_a_done_run_whose_folder_was_deleted_is_refused_unless_allowed(setup):
    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    add_run(setup, "c1", "convnext", held_out=HALVES[1])
    add_run(setup, "v0", "vit")
    shutil.rmtree(setup["home"] / "tiny" / "c1")
    line = one_error_line(_ensemble(setup, "--dry-run"))
    assert "c1" in line and "folder is gone" in line
    data = json.loads(_ensemble(setup, "--allow-missing", "--json").stdout)
    assert data["runs"] == ["c0", "v0"] and [e["run_id"] for e in data["excluded"]] == ["c1"]
    line = one_error_line(invoke("export", setup["spec_path"], "--home", setup["home"], "--out",
                                 setup["home"].parent / "bundle"))
    assert "c1" in line and "folder is gone" in line


def test_runs_of_another_recipe_never_count(setup):
    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    add_run(setup, "v0", "vit")
    add_run(setup, "old", "convnext", fingerprint="0123456789ab")
    shutil.rmtree(setup["home"] / "tiny" / "old")
    assert _ensemble(setup, "--dry-run").exit_code == 0


def test_a_train_holding_the_experiment_between_two_runs_is_named(setup):
    from ledger.runs.lock import experiment_lock

    add_run(setup, "c0", "convnext", held_out=HALVES[0])
    add_run(setup, "v0", "vit")
    with experiment_lock(setup["home"], "tiny", "2026-01-01T00:00:00"):  # no row is running at this instant
        line = one_error_line(_ensemble(setup, "--dry-run"))
        assert f"pid {os.getpid()}" in line and "yet to finish" in line
        assert _ensemble(setup, "--allow-missing", "--dry-run").exit_code == 0
    assert _ensemble(setup, "--dry-run").exit_code == 0  # once the train ends
