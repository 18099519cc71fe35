"""A competitor's day at the command line: read-only commands never make a ledger, unknown names
list the known ones, --device/--set reach every command that trains or predicts, tables fit 80
columns with whole ids, and the leaderboard (scores, kaggle hand-off) lives in the ledger."""

import json
import os
import stat
from types import SimpleNamespace

import pytest
import typer
from rich.console import Console
from conftest import TINY_CONVNEXT, write_spec
from test_submission import HALVES, add_run, invoke, setup  # noqa: F401 - setup is a fixture

from ledger.store.rows import RunRow
from ledger.cli import WORKFLOW, app
from ledger.cli.ledger_cmds import _runs_table, _submissions_table
from ledger.store.database import Store


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def _ensemble(setup):
    add_run(setup, "20260101-aaa111", "convnext", held_out=HALVES[0])
    add_run(setup, "20260101-bbb222", "convnext", held_out=HALVES[1])
    add_run(setup, "20260102-ccc333", "vit")
    result = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["submission_id"]


# ---------------------------------------------------------------- homes and names


@pytest.mark.parametrize("command", [["runs"], ["submissions"], ["submissions", "score", "x", "0.5"],
                                     ["submit", "x", "-m", "hi", "--competition", "c"]])
def test_read_only_commands_refuse_a_missing_home(tmp_path, command):
    missing = tmp_path / "typo"
    line = _one_error_line(invoke(*command, "--home", missing))
    assert f"{missing}: no ledger here (folder not found)" in line
    assert not missing.exists()  # no new empty ledger left behind


def test_ensemble_and_report_refuse_a_missing_home(setup, tmp_path):
    missing = tmp_path / "typo"
    assert "no ledger here" in _one_error_line(invoke("ensemble", setup["spec_path"], "--home", missing))
    assert "no ledger here" in _one_error_line(invoke("report", setup["spec_path"], "--out", tmp_path / "r",
                                                      "--home", missing))
    assert not missing.exists()


def test_unknown_experiment_lists_the_known_ones(setup):
    add_run(setup, "20260101-aaa111", "convnext")
    line = _one_error_line(invoke("runs", "--home", setup["home"], "--experiment", "fahsion"))
    assert "experiment 'fahsion': not in" in line and "experiments here: tiny" in line
    assert invoke("runs", "--home", setup["home"], "--experiment", "tiny").exit_code == 0


# ---------------------------------------------------------------- --set and --device everywhere


def test_ensemble_takes_set_overrides(setup):
    add_run(setup, "20260101-aaa111", "convnext", held_out=HALVES[0])
    add_run(setup, "20260102-ccc333", "vit")
    # A changed recipe is a different spec version: no convnext run matches it any more.
    result = invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--json", "--set", "models.convnext.epochs=9")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runs"] == ["20260102-ccc333"] and data["missing_entries"] == ["convnext"]
    line = _one_error_line(invoke("ensemble", setup["spec_path"], "--home", setup["home"], "--set", "train.nope=1"))
    assert "train.nope" in line


def test_report_takes_set_overrides(setup, tmp_path):
    line = _one_error_line(invoke("report", setup["spec_path"], "--out", tmp_path / "r", "--home", tmp_path,
                                  "--set", "split.valid_pct=7"))
    assert "split.valid_pct" in line


def test_lr_find_passes_device_and_overrides(tmp_path, tiny_competition, monkeypatch):
    import ledger.runs.lr_find_run

    spec_path = write_spec(tmp_path / "one.yaml", tiny_competition,
                           f"  - {{name: convnext, arch: convnext_atto, size: 32, model_kwargs: {TINY_CONVNEXT}}}\n")

    seen = {}

    def fake_lr_find(spec, entry, store, accum, out=None, device=None, num_it=100, progress=None):
        seen.update(device=device, lr=entry.lr, accum=accum)
        return SimpleNamespace(suggested_lrs=lambda: {"valley": 1e-3}, plot=store.home / "x.png")

    monkeypatch.setattr(ledger.runs.lr_find_run, "lr_find", fake_lr_find)
    result = invoke("lr-find", spec_path, "--json", "--device", "cpu", "--set", "train.lr=0.0123",
                    "--set", "models.convnext.accum=2", "--home", tmp_path / "home")
    assert result.exit_code == 0, result.output
    assert str(seen["device"]) == "cpu" and seen["lr"] == pytest.approx(0.0123) and seen["accum"] == 2
    assert "--device" in _one_error_line(invoke("lr-find", spec_path, "--device", "tpu", "--home", tmp_path / "home"))


# ---------------------------------------------------------------- 80 columns


def _render(table, width=80) -> list[str]:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    console.print(table)
    return console.export_text().splitlines()


def _run_row(run_id, **changes):
    row = dict(id=run_id, started_at="2026-01-01T12:00:00+00:00", experiment="fashion-very-long-experiment-name", model="convnext_small_in22k",
               arch="convnext_small.fb_in22k_ft_in1k", size="224x224", split_seed=123456, accum=4, epochs=12,
               status="done", valid_loss=0.1234, error_rate=0.0312, images_per_s=1234.0, peak_bytes=12 * 2**30,
               device="cuda:0", error=None)
    return RunRow(**(row | changes))


def test_runs_table_fits_80_columns_with_whole_ids_and_accuracy():
    ids = ["20260101-120000-abc123", "20260101-130000-def456"]
    rows = [_run_row(ids[0]), _run_row(ids[1], status="failed", error_rate=None, error="CUDA out of memory " * 5)]
    lines = _render(_runs_table(rows, Console(width=80)))
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    for run_id in ids:
        assert run_id in text  # on one line, never cut
    assert "acc no TTA" in text and "0.9688" in text and "error" not in lines[2]  # header line: no "error" column
    assert "not shown at this width" in text
    # A wide terminal shows every column and no caption.
    wide = "\n".join(_render(_runs_table(rows, Console(width=300)), width=300))
    assert "not shown" not in wide and "cuda:0" in wide and "convnext_small.fb_in22k_ft_in1k" in wide


def test_submissions_table_fits_80_columns_with_leaderboard_scores():
    from ledger.store.rows import SubmissionRow

    rows = [SubmissionRow(id="20260101-120000-abc123", experiment="fashion", oob_accuracy=0.9512, public_score=0.9487,
                          private_score=None, runs=["a", "b"], weights={"a": 0.5, "b": 0.5}, oob_images=60,
                          train_images=60, message="first bag " * 6,
                          path="/very/long/path/to/the/ledger/home/submissions/fashion-20260101-120000.csv",
                          sha256="0123456789abcdef", created_at="2026-01-01T12:00:00+00:00")]
    lines = _render(_submissions_table(rows, Console(width=80)))
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= 80
    assert "20260101-120000-abc123" in text and "0.9512" in text and "0.9487" in text


# ---------------------------------------------------------------- the leaderboard


def test_submissions_score_by_prefix_shows_in_runs(setup):
    submission_id = _ensemble(setup)
    result = invoke("submissions", "score", submission_id[:12], "0.9123", "0.9001", "--home", setup["home"])
    assert result.exit_code == 0, result.output
    assert f"submission {submission_id}: out-of-bag" in result.stdout and "public 0.9123, private 0.9001" in result.stdout
    row = Store(setup["home"]).submissions()[0]
    assert (row.public_score, row.private_score) == (0.9123, 0.9001)
    listed = json.loads(invoke("submissions", "--json", "--home", setup["home"]).stdout)
    assert listed[0]["public_score"] == 0.9123
    assert "0.9123" in invoke("runs", "--home", setup["home"]).stdout
    assert "no submission id starts with it" in _one_error_line(
        invoke("submissions", "score", "zzz", "0.5", "--home", setup["home"]))
    assert "finite" in _one_error_line(invoke("submissions", "score", submission_id, "nan", "--home", setup["home"]))


def _fake_kaggle(folder, exit_code=0):
    """A stand-in `kaggle` that writes its arguments, one per line, beside itself."""
    folder.mkdir()
    script = folder / "kaggle"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{folder}/args"\necho "Successfully submitted"\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def test_submit_hands_the_file_to_kaggle_and_records_it(setup, tmp_path, monkeypatch):
    submission_id = _ensemble(setup)
    bin_dir = _fake_kaggle(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = invoke("submit", submission_id[:12], "-m", "two convnexts and a vit", "--competition", "paddy",
                    "--home", setup["home"])
    assert result.exit_code == 0, result.output
    assert "Successfully submitted" in result.stdout
    store = Store(setup["home"])
    row = store.submissions()[0]
    args = (bin_dir / "args").read_text().splitlines()
    assert args == ["competitions", "submit", "-c", "paddy", "-f", str(store.submission_path(row)), "-m",
                    "two convnexts and a vit"]
    assert (row.message, row.competition, row.kaggle_exit) == ("two convnexts and a vit", "paddy", 0)


def test_submit_records_kaggle_failure(setup, tmp_path, monkeypatch):
    submission_id = _ensemble(setup)
    monkeypatch.setenv("PATH", f"{_fake_kaggle(tmp_path / 'bin', exit_code=3)}{os.pathsep}{os.environ['PATH']}")
    result = invoke("submit", submission_id, "-m", "m", "--competition", "paddy", "--home", setup["home"])
    assert result.exit_code == 1 and "kaggle exited with status 3" in result.stderr
    assert Store(setup["home"]).submissions()[0].kaggle_exit == 3


def test_submit_without_kaggle_says_how_to_install_it(setup, tmp_path, monkeypatch):
    submission_id = _ensemble(setup)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    line = _one_error_line(invoke("submit", submission_id, "-m", "m", "--competition", "paddy", "--home", setup["home"]))
    assert "pip install kaggle" in line and "kaggle.json" in line
    assert Store(setup["home"]).submissions()[0].kaggle_exit is None


# ---------------------------------------------------------------- help


def test_commands_are_listed_in_workflow_order_and_completion_is_on():
    group = typer.main.get_command(app)
    listed = group.list_commands(None)
    assert listed == list(WORKFLOW)
    result = invoke("--help")
    positions = [result.stdout.find(f"│ {name} ") for name in listed]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), result.stdout
    assert "--install-completion" in result.stdout


def test_a_v3_ledger_gains_the_submit_columns_and_keeps_its_submissions(tmp_path):
    from ledger.store.migrations import SCHEMA_VERSION

    from conftest import ledger_at_version

    home = tmp_path / "home"
    db = ledger_at_version(home, 3)  # a ledger as schema 3 left it
    db.execute("INSERT INTO submissions (id, experiment, path, created_at, runs, weights)"
               " VALUES ('s1', 'tiny', '/x.csv', 'now', '[]', '{}')")
    db.close()
    store = Store(home, existing=True)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    [row] = store.submissions()
    assert row.id == "s1" and row.kaggle_exit is None and row.competition is None
