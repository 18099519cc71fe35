"""Issue 31, item 2: a signal stops training cleanly at any instant. The signal is sent from inside
torch.save's writer (a file whose write sends it), the instant that used to turn Ctrl-C into a
failed run with a false "is the disk full?", a deleted checkpoint and a train that went on."""

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import write_spec
from hostile_common import ONE_RUN, invoke

from ledger.runs.execution import partial_dir
from ledger.durable import signals_held
from ledger.store.database import Store
from ledger.training import checkpoint as checkpoint_module
from ledger.training.checkpoint import CHECKPOINT


class SignallingFile:
    """A file whose second write (inside torch's C++ writer) sends `signum` to this process."""

    def __init__(self, path, mode, signum):
        self.file, self.signum, self.writes = open(path, mode), signum, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 2:
            os.kill(os.getpid(), self.signum)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_held_signal_arrives_after_the_block_and_an_ignored_one_stays_ignored(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            (tmp_path / "after").write_text("the block ran to its end")
    assert (tmp_path / "after").is_file()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_torch_save_keeps_a_whole_file(tmp_path):
    state = {"weight": torch.arange(10000.0)}
    # The premise: unheld, torch turns the KeyboardInterrupt into a RuntimeError ("unexpected pos").
    with pytest.raises(RuntimeError):
        with SignallingFile(tmp_path / "bare.pt", "wb", signal.SIGINT) as file:
            torch.save(state, file)
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            with SignallingFile(tmp_path / "held.pt", "wb", signal.SIGINT) as file:
                torch.save(state, file)
    assert torch.equal(torch.load(tmp_path / "held.pt", weights_only=True)["weight"], state["weight"])


def test_sigterm_inside_a_checkpoint_write_records_an_interrupted_resumable_run_and_stops(
        tmp_path, tiny_competition, monkeypatch):
    monkeypatch.chdir(tmp_path)
    two_runs = ONE_RUN.replace("runs: 1", "runs: 2")
    spec = write_spec(tmp_path / "tiny.yaml", tiny_competition, two_runs, "split: {valid_pct: 0.2, seed: 3}\n")
    home = tmp_path / "home"
    monkeypatch.setattr(checkpoint_module, "open", lambda path, mode: SignallingFile(path, mode, signal.SIGTERM),
                        raising=False)
    result = invoke("train", spec, "--home", home, "--device", "cpu")
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "disk full" not in result.output
    [row] = Store(home).runs("tiny")  # the second run never started
    assert row.status == "interrupted" and "resumes after its last finished epoch" in row.error
    assert (partial_dir(home, "tiny", row.id) / CHECKPOINT).is_file()

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    again = invoke("train", spec, "--home", home, "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert "resuming after epoch 1" in again.output
    assert [r.status for r in Store(home).runs("tiny")] == ["done", "done"]


def test_a_folder_is_replaced_whole_or_left_as_it_was(tmp_path, monkeypatch):
    import os

    from ledger import durable

    target, built = tmp_path / "bundle", tmp_path / ".bundle.partial"
    target.mkdir()
    (target / "old.txt").write_text("old")
    built.mkdir()
    (built / "new.txt").write_text("new")
    real_replace = os.replace

    def failing_second_rename(source, destination):
        if Path(source) == built:
            raise OSError("disk full")
        real_replace(source, destination)

    monkeypatch.setattr(durable.os, "replace", failing_second_rename)
    with pytest.raises(OSError, match="disk full"):
        durable.replace_folder(built, target)
    assert [p.name for p in target.iterdir()] == ["old.txt"]  # the old folder is back, whole
    monkeypatch.setattr(durable.os, "replace", real_replace)
    durable.replace_folder(built, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and not built.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # nothing left aside
