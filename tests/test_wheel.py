"""The package installs as a package: a wheel built from this tree, installed into a clean virtual
environment (no checkout on its path), writes the embedded competition from its package data."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains or builds end to end: `make test-quick` leaves it out

ROOT = Path(__file__).resolve().parents[1]
# What `ledger data fashion-mnist` needs; torch and timm are imported only by training commands.
DATA_COMMAND_NEEDS = ("numpy", "pandas", "pillow", "typer", "rich", "pyyaml")


def _uv() -> list[str] | None:
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "uv"]
    return [shutil.which("uv")] if shutil.which("uv") else None


def test_a_built_wheel_in_a_clean_environment_writes_the_embedded_competition(tmp_path):
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed (the Makefile installs it with pip)")
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    built = subprocess.run([*uv, "build", "--wheel", "--out-dir", str(dist), str(ROOT)], capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = dist.glob("ledger-*.whl")
    subprocess.run([*uv, "venv", "-q", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The wheel without its dependencies (torch is gigabytes), then what the data command imports.
    for packages in (["--no-deps", str(wheel)], list(DATA_COMMAND_NEEDS)):
        installed = subprocess.run([*uv, "pip", "install", "-q", "--python", str(python), *packages],
                                   capture_output=True, text=True, timeout=600)
        assert installed.returncode == 0, installed.stderr
    out = tmp_path / "fashion"
    # Run from an empty folder, so the checkout cannot be found on the path.
    result = subprocess.run([str(venv / "bin" / "ledger"), "data", "fashion-mnist", str(out), "--train-per-class", "2",
                             "--test", "5"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    where = subprocess.run([str(python), "-c", "import ledger.data.fashion_mnist as f; print(f.EMBEDDED_SOURCE)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert str(venv) in where and str(ROOT) not in where  # the installed package's data, not the checkout's
    assert len(list((out / "train_images").rglob("*.png"))) == 20 and len(list((out / "test_images").iterdir())) == 5
