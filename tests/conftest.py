import os
from pathlib import Path

import pytest

# One thread each: the suite runs on 2 cores and small ops only slow down with more threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_competition(tmp_path_factory) -> Path:
    """A real (tiny) competition folder written from the embedded Fashion-MNIST subset."""
    from ledger.data.fashion_mnist import write_competition

    root = tmp_path_factory.mktemp("competition") / "fashion"
    write_competition(root, seed=1, train_per_class=6, test=12)
    return root


TINY_CONVNEXT = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}
TINY_VIT = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}


def write_spec(path: Path, root: Path, models: str, extra: str = "") -> Path:
    path.write_text(
        f"name: tiny\n"
        f"data: {{root: {root}, labels: train.csv}}\n"
        f"train: {{batch_size: 8, epochs: 1, lr: 0.002}}\n"
        f"tta: {{n: 2, beta: 0.25}}\n"
        f"probe: {{budget: 4GiB, steps: 1}}\n"
        f"{extra}"
        f"models:\n{models}"
    )
    return path


def unique_prefix(run_id: str, ids, minimum: int = 16) -> str:
    """The shortest prefix of `run_id` (at least `minimum` long) that no other id shares: ids made in
    the same second share their first 16 characters and may share more."""
    others = [i for i in ids if i != run_id]
    for length in range(minimum, len(run_id) + 1):
        if not any(i.startswith(run_id[:length]) for i in others):
            return run_id[:length]
    return run_id


def ledger_at_version(home: Path, version: int):
    """A ledger.db in `home` as schema `version` left it (its migrations only); returns an open
    connection in autocommit mode for the test to add rows, which it closes."""
    import sqlite3

    from ledger.store.migrations import _MIGRATIONS

    home.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(home / "ledger.db", isolation_level=None)
    for migration in _MIGRATIONS[:version]:
        migration(db, home)
    db.execute(f"PRAGMA user_version={version}")
    return db


def first_module_loading_torch(modules) -> str | None:
    """The first of `modules` (full names) after whose import torch or timm is loaded, in one fresh
    interpreter that imports them in turn (one interpreter per module would take a minute)."""
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            f"for name in {list(modules)!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'torch' in sys.modules or 'timm' in sys.modules:\n"
            "        print(name); break\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() or None
