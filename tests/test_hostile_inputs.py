"""Hostile inputs (issue 22): unsafe names, unbounded runs, YAML alias bombs, scientific notation,
corrupt or non-finite artifacts and checkpoints, and what the terminal shows at 80 columns."""

import json
from pathlib import Path

import pytest
import typer
from conftest import write_spec
from hostile_common import invoke, one_error_line
from test_submission import add_run, setup  # noqa: F401 - setup is a fixture

from ledger.cli import app
from ledger.training.checkpoint import CHECKPOINT
from ledger.store.database import Store


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
    from ledger.spec.loader import load_spec

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

    from ledger.runs.artifacts import Predictions, save_predictions

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

    from ledger.training.step import LoopParts

    net = torch.nn.Linear(4, 2)
    return LoopParts(net=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                     scaler=torch.amp.GradScaler("cpu", enabled=False),
                     batches=SimpleNamespace(state=lambda: {"order": [1, 2]}), generator=torch.Generator())


def test_a_full_disk_while_checkpointing_says_disk_full(tmp_path):
    from ledger.training.checkpoint import Checkpoint
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
    from ledger.training.checkpoint import Checkpoint
    from ledger.errors import LedgerError

    checkpoint = Checkpoint(tmp_path)
    checkpoint.save(_loop_parts(), [])
    checkpoint.path.write_bytes(b"\x80\x02garbage" * 50)
    with pytest.raises(LedgerError) as caught:
        checkpoint.restore(_loop_parts())
    message = str(caught.value)
    assert message.startswith(f"{checkpoint.path}: corrupt checkpoint") and "weights_only" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# ---------------------------------------------------------------- 21, 22: what the terminal shows


def test_plain_and_tta_accuracy_are_labelled_where_shown(tmp_path):
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from ledger.cli.ledger_cmds import _runs_table
    from ledger.cli.train import _results_table
    from ledger.cli.progress import ConsoleEvents
    from ledger.runs.recording import RunResult

    console = Console(file=io.StringIO(), width=200)
    plan = SimpleNamespace(run_id="r1", model=SimpleNamespace(name="m", epochs=1, freeze_epochs=0, finetune=False))
    from ledger.store.rows import RunRow, RunSummary

    figures = dict(experiment="e", model="m", arch="a", size="8", fingerprint="f", run_number=0, train_seed=1,
                   split_seed=1, fold=None, folds=None, accum=1, micro_batch=8, epochs=1, train_images=8,
                   valid_images=8, test_images=8, valid_loss=0.5, error_rate=0.25, tta_accuracy=0.8125,
                   train_seconds=3.0, images_per_s=10.0, precision="fp32", device="cpu", resumed_epochs=0,
                   peak_bytes=2**20)
    result = RunResult("r1", "done", summary=RunSummary(**figures))
    ConsoleEvents(console, [plan]).run_finished(0, 1, plan, result)
    console.print(_results_table([plan], [result], console))
    shown = console.file.getvalue()
    assert "accuracy 0.7500 (last epoch, no TTA)  TTA accuracy 0.8125" in shown
    assert "acc no TTA" in shown and "TTA acc" in shown and "0.8125" in shown
    row = RunRow(id="r1", experiment="e", model="m", arch="a", size="8", split_seed=1, accum=1, epochs=1,
                 status="done", started_at="2026-01-01T00:00:00+00:00", error=None, valid_loss=0.5, error_rate=0.25,
                 images_per_s=1.0, peak_bytes=1, device="cpu")
    console = Console(file=io.StringIO(), width=80)
    console.print(_runs_table([row], console))
    assert "acc no TTA" in console.file.getvalue() and "0.7500" in console.file.getvalue()


def test_at_80_columns_a_failed_runs_reason_is_never_cut_mid_word():
    import io

    from rich.console import Console

    from ledger.cli.ledger_cmds import _runs_table

    reason = ("RuntimeError: something very bad happened in the convolution layer while computing gradients of the "
              "network")
    from ledger.store.rows import RunRow

    row = RunRow(id="20260101-120000-abcdef", experiment="e", model="convnext", arch="a", size="8", split_seed=1,
                 accum=1, epochs=1, status="failed", started_at="2026-01-01T12:00:00+00:00", error=reason,
                 valid_loss=None, error_rate=None, images_per_s=None, peak_bytes=None, device="cpu")
    console = Console(file=io.StringIO(), width=80)
    console.print(_runs_table([row], console))
    cell = " ".join(line.split("│")[3].strip() for line in console.file.getvalue().splitlines()
                    if line.count("│") >= 4).split()
    shown = " ".join(cell)
    assert shown.endswith("…") and len(shown) <= 60
    words = shown[:-1].split()
    assert ("failed: " + reason).split()[: len(words)] == words  # whole words only


def _command_paths(command, path: tuple[str, ...] = ()):
    """Every command and group under `command`, as the words that name it on the command line."""
    if path:
        yield list(path)
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from _command_paths(sub, (*path, name))


# Every command the app has, read from the app, so that a new one is covered the day it is added.
HELP_COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_every_command_of_the_app_is_measured_at_80_columns():
    assert {"check", "schema", "export", "train", "score"} <= {" ".join(c) for c in HELP_COMMANDS}


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
