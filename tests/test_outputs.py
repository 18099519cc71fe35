"""Issue 31, item 1: an output never replaces what ledger reads or records. Every --out (ensemble,
predict, export, report, lr-find) goes through `runs.outputs.guard_output`; the competition here
is a private copy, so a guard that failed could not damage the session's shared one."""

import hashlib
import json
import os
import shutil

import pandas as pd
import pytest
from conftest import write_spec
from hostile_common import ONE_RUN, dead_pid, invoke, one_error_line
from test_submission import HALVES, MODELS, add_run

from ledger.errors import LedgerError
from ledger.runs.outputs import guard_output, reservation, reserved
from ledger.spec.loader import load_spec
from ledger.store.database import Store


@pytest.fixture
def setup(tmp_path, tiny_competition, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_HOME", raising=False)
    data = tmp_path / "data"
    shutil.copytree(tiny_competition, data)
    spec_path = write_spec(tmp_path / "tiny.yaml", data, MODELS)
    found = dict(home=tmp_path / "home", spec_path=spec_path, spec=load_spec(spec_path, check_models=False),
                 train=pd.read_csv(data / "train.csv", dtype=str),
                 sample=pd.read_csv(data / "sample_submission.csv", dtype=str), data=data)
    add_run(found, "c0", "convnext", held_out=HALVES[0])
    add_run(found, "v0", "vit")
    return found


def _digest(folder):
    """Every file under `folder` with its sha256, and the rows of a ledger in it: what must come
    through a refused command unchanged (SQLite's own files change whenever a ledger is opened)."""
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("ledger.db")}
    if (folder / "ledger.db").is_file():
        store = Store(folder, existing=True)
        files["rows"] = ([r.id for r in store.runs()], [r.id for r in store.submissions()])
        store.close()
    return files


def _ensemble(setup, *args):
    return invoke("ensemble", setup["spec_path"], "--home", setup["home"], *args)


def test_ensemble_never_writes_over_the_ledger_the_data_the_spec_or_a_run(setup, tmp_path):
    home, data = setup["home"], setup["data"]
    before = {"home": _digest(home), "data": _digest(data), "spec": setup["spec_path"].read_bytes()}
    targets = {home / "ledger.db": "is the ledger", home: "is a folder",
               data / "sample_submission.csv": "lies inside the competition data folder",
               data / "train.csv": "the competition data folder", data / "new.csv": "lies inside the competition",
               setup["spec_path"]: "is the spec", home / "tiny" / "c0" / "test_preds.npz": "lies inside the run folder",
               home / "tiny" / "c0": "is a folder"}
    for out, said in targets.items():
        line = one_error_line(_ensemble(setup, "--out", out, "--force"))
        assert str(out) in line and said in line, line
    assert _digest(home) == before["home"] and _digest(data) == before["data"]
    assert setup["spec_path"].read_bytes() == before["spec"]
    assert Store(home).submissions() == []


def test_an_existing_file_needs_force_and_a_recorded_one_is_never_replaced(setup, tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("my own notes\n")
    line = one_error_line(_ensemble(setup, "--out", mine))
    assert str(mine) in line and "--force" in line and mine.read_text() == "my own notes\n"
    assert _ensemble(setup, "--out", mine, "--force").exit_code == 0
    [row] = Store(setup["home"]).submissions()
    assert hashlib.sha256(mine.read_bytes()).hexdigest() == row.sha256
    line = one_error_line(_ensemble(setup, "--out", mine, "--force"))
    assert row.id in line and len(Store(setup["home"]).submissions()) == 1


def test_a_submission_recorded_by_another_ledger_above_the_path_is_kept(setup, tmp_path):
    other = tmp_path / "other"
    assert _ensemble(setup, "--home", other, "--out", tmp_path / "x.csv").exit_code != 0  # other has no runs
    add_run(dict(setup, home=other), "o0", "convnext")
    result = invoke("ensemble", setup["spec_path"], "--home", other, "--json")
    recorded = json.loads(result.stdout)["out"]  # in other/submissions/
    before = _digest(other)
    line = one_error_line(_ensemble(setup, "--out", recorded, "--force"))
    assert "a recorded submission" in line and _digest(other) == before, line


def test_export_force_replaces_only_an_earlier_bundle(setup, tmp_path):
    home = setup["home"]
    before = _digest(home)
    for out, said in ((home, "is a ledger home"), (tmp_path, "holds the ledger"),
                      (home / "tiny", "holds the run folder")):
        line = one_error_line(invoke("export", setup["spec_path"], "--home", home, "--out", out, "--force"))
        assert said in line, line
    assert _digest(home) == before
    mine = tmp_path / "mine"
    (mine / "keep").mkdir(parents=True)
    (mine / "keep" / "notes.txt").write_text("mine")
    line = one_error_line(invoke("export", setup["spec_path"], "--home", home, "--out", mine, "--force"))
    assert "manifest.json" in line and (mine / "keep" / "notes.txt").read_text() == "mine"


def test_report_and_predict_refuse_what_they_read(setup, tmp_path):
    home = setup["home"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    for out, said in ((home / "tiny", "holds the run folder"), (setup["data"], "is the competition data folder"),
                      (tmp_path / "full", "no report.html")):
        line = one_error_line(invoke("report", setup["spec_path"], "--home", home, "--out", out))
        assert said in line, line
    images = setup["data"] / "test_images"
    for out, said in ((setup["spec_path"], "is the spec"), (images / "p.csv", "lies inside the competition data"),
                      (home / "ledger.db", "is the ledger")):
        line = one_error_line(invoke("predict", setup["spec_path"], images, "--out", out, "--home", home, "--force"))
        assert said in line, line


def test_lr_find_refuses_the_spec_before_any_training(setup, tmp_path):
    spec = write_spec(tmp_path / "one.yaml", setup["data"], ONE_RUN)
    line = one_error_line(invoke("lr-find", spec, "--out", spec, "--force", "--home", setup["home"]))
    assert "is the spec" in line


def test_the_default_places_inside_a_home_take_outputs(setup):
    home = setup["home"]
    assert guard_output(home / "submissions" / "a.csv", spec=setup["spec"], homes=[home]).is_absolute()
    assert guard_output(home / "tiny" / "lr_find" / "a.png", spec=setup["spec"], homes=[home]).is_absolute()


# ---------------------------------------------------------------- two writers of one name


def test_two_ensembles_writing_one_out_at_once_record_one_submission(setup, tmp_path, monkeypatch):
    out = tmp_path / "sub.csv"
    second = {}
    original = Store.record_submission

    def slow_record(self, *args, **kwargs):
        # The first ensemble has renamed its CSV and is recording it: a second one starts now.
        if not second:
            second["result"] = _ensemble(setup, "--out", out, "--force")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "record_submission", slow_record)
    first = _ensemble(setup, "--out", out, "--json")
    assert first.exit_code == 0, first.output
    line = one_error_line(second["result"])
    assert str(out) in line and "writing it right now" in line
    [row] = Store(setup["home"]).submissions()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == row.sha256
    assert not reservation(out).exists()  # released once the row stands


def test_a_reservation_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "a.csv"
    reservation(out).write_text(str(dead_pid()))
    with reserved(out):
        assert reservation(out).read_text() == str(os.getpid())
        with pytest.raises(LedgerError, match="writing it right now"):
            with reserved(out):
                pass
    assert not reservation(out).exists()
