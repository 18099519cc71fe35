"""Shared by the hostile-input tests (issue 22): the CLI runner, the one-line error check, a pid
that is surely dead, and a one-run spec on the tiny competition."""

import json
import subprocess
import sys

import pytest
from conftest import TINY_CONVNEXT, write_spec
from typer.testing import CliRunner

from ledger.cli import app

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
