"""Issue 31, item 3: damage is detected, not passed on. A run's weights and predictions are summed
when it finishes; ensemble, predict and export check the sums; a lost ledger.db beside run folders
is refused, and `ledger runs --rebuild` records the finished runs again from their folders."""

import json
import shutil

import pytest
from conftest import write_spec
from hostile_common import ONE_RUN, invoke, one_error_line

from ledger.runs import artifacts
from ledger.runs.artifacts import sha256_file
from ledger.runs.checksums import CHECKSUMS
from ledger.store.database import Store


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_competition):
    folder = tmp_path_factory.mktemp("damage")
    models = ONE_RUN.replace("runs: 1,", "runs: 1, save_weights: true,").replace("epochs: 2", "epochs: 1")
    spec = write_spec(folder / "tiny.yaml", tiny_competition, models, "split: {valid_pct: 0.2, seed: 3}\n")
    spec.write_text(spec.read_text().replace("tta: {n: 2,", "tta: {n: 0,"))  # no TTA: faster
    result = invoke("train", spec, "--home", folder / "home", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return dict(folder=folder, spec=spec, images=tiny_competition / "test_images")


@pytest.fixture
def home(trained, tmp_path, monkeypatch):
    """A private copy of the trained home, for a test to damage."""
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "home"
    shutil.copytree(trained["folder"] / "home", copy)
    return copy


def _run(home):
    [row] = Store(home).runs("tiny")
    return row, Store(home).artifact_path(row)


def _flip_a_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_sums_are_recorded_when_the_run_finishes(home):
    row, folder = _run(home)
    sums = json.loads(row.checksums)
    assert set(sums) >= {artifacts.WEIGHTS, artifacts.TEST_PREDS, artifacts.VALID_PREDS}
    assert sums[artifacts.WEIGHTS] == sha256_file(folder / artifacts.WEIGHTS)
    assert json.loads((folder / CHECKSUMS).read_text()) == sums


def test_damaged_weights_are_refused_by_predict_and_export(home, trained, tmp_path):
    row, folder = _run(home)
    _flip_a_byte(folder / artifacts.WEIGHTS)  # same size: only a checksum sees it
    line = one_error_line(invoke("predict", row.id, trained["images"], "--out", tmp_path / "p.csv", "--home", home))
    assert row.id in line and artifacts.WEIGHTS in line and "changed since the run finished" in line
    line = one_error_line(invoke("export", trained["spec"], "--home", home, "--out", tmp_path / "bundle"))
    assert row.id in line and "changed since the run finished" in line
    assert not (tmp_path / "bundle").exists()


def test_damaged_predictions_are_refused_by_ensemble(home, trained, tmp_path):
    row, folder = _run(home)
    _flip_a_byte(folder / artifacts.TEST_PREDS, offset=len((folder / artifacts.TEST_PREDS).read_bytes()) // 2)
    line = one_error_line(invoke("ensemble", trained["spec"], "--home", home, "--out", tmp_path / "s.csv"))
    assert row.id in line and artifacts.TEST_PREDS in line
    assert not (tmp_path / "s.csv").exists() and Store(home).submissions() == []


def test_the_manifest_carries_the_recorded_sum_and_a_copy_damaged_on_the_way_is_refused(home, trained, tmp_path,
                                                                                      monkeypatch):
    row, _ = _run(home)
    assert invoke("export", trained["spec"], "--home", home, "--out", tmp_path / "good").exit_code == 0
    manifest = json.loads((tmp_path / "good" / "manifest.json").read_text())
    assert manifest["files"][f"runs/{row.id}/model.safetensors"]["sha256"] == json.loads(row.checksums)[artifacts.WEIGHTS]

    import ledger.export.bundle as bundle

    copy = shutil.copyfile

    def damaging_copy(source, target):  # a disk that corrupts what it writes
        copy(source, target)
        if str(target).endswith(artifacts.WEIGHTS):
            _flip_a_byte(target)

    monkeypatch.setattr(bundle.shutil, "copyfile", damaging_copy)
    line = one_error_line(invoke("export", trained["spec"], "--home", home, "--out", tmp_path / "bad"))
    assert row.id in line and "changed while it was copied" in line
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_ledger_beside_run_folders_is_refused_and_rebuilt(home, trained, how):
    row, folder = _run(home)
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (home / name).unlink(missing_ok=True)
    if how == "emptied":
        (home / "ledger.db").write_bytes(b"")
    for command in (("train", trained["spec"]), ("runs",), ("ensemble", trained["spec"])):
        line = one_error_line(invoke(*command, "--home", home))
        assert str(home / "ledger.db") in line and f"tiny/{row.id}" in line and "--rebuild" in line, line
    assert not list((home / "tiny").glob("*.partial"))  # train planned nothing

    result = invoke("runs", "--rebuild", "--home", home, "--json")
    assert result.exit_code == 0, result.output
    [rebuilt] = json.loads(result.stdout)["runs"]
    assert (rebuilt["id"], rebuilt["status"], rebuilt["fingerprint"]) == (row.id, "done", row.fingerprint)
    assert json.loads(rebuilt["checksums"]) == json.loads(row.checksums)
    assert rebuilt["spec"] == row.entry
    again = invoke("train", trained["spec"], "--home", home, "--device", "cpu")
    assert again.exit_code == 0 and "nothing to train" in again.output, again.output
    assert invoke("runs", "--rebuild", "--home", home).exit_code == 0  # a second rebuild adds nothing
    assert len(Store(home).runs()) == 1
