"""`ledger export` on a bag trained here: the bundle's predict.py, run where `import ledger` fails and
no socket can connect, writes the very submission `ledger ensemble` wrote, and its probabilities are
the bag's; a broken bundle fails at start naming the file; runs without weights are refused; the
bundle's code is ledger's own source, its imports only the standard library and six packages."""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONVNEXT, write_spec
from typer.testing import CliRunner

import ledger
from ledger.runs import artifacts
from ledger.export.bundle_code import MODULES, check_imports, extract, source_of
from ledger.cli import app
from ledger.errors import LedgerError

runner = CliRunner()
SIX = {"torch", "timm", "numpy", "pandas", "PIL", "safetensors"}
MODELS = (
    f"  - {{name: convnext, arch: convnext_atto, size: 32, runs: 2, accum: 1, save_weights: true,"
    f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n"
    # Weighted 0 it stays out of the bag; it kept no weights, so bagging it must be refused.
    f"  - {{name: plain, arch: convnext_atto, size: 32, runs: 1, accum: 1, weight: 0,"
    f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n"
)

# Runs a script as `python -I` would, with two guards installed first. `-I` (isolated mode) keeps the
# current folder, the script's folder, PYTHON* variables and the user's site-packages off sys.path,
# so only what is installed in the interpreter can be imported. ledger is installed there (this very
# environment), so a finder first on sys.meta_path refuses `ledger` and every `ledger.*`: anything
# the bundle imported from ledger, directly or through another package, would fail. Every way of
# opening a connection raises and says so on stderr, so a bundle that reached for the network
# (timm's hub, a download) would fail or leave that line behind.
GUARD = r"""
import runpy, socket, sys

class BlockLedger:
    def find_spec(self, name, path=None, target=None):
        if name == "ledger" or name.startswith("ledger."):
            raise ModuleNotFoundError(f"blocked import of {name}", name=name)
        return None

sys.meta_path.insert(0, BlockLedger())

def no_network(*args, **kwargs):
    sys.stderr.write("network blocked\n")
    raise OSError("network blocked")

for name in ("connect", "connect_ex", "sendto"):
    setattr(socket.socket, name, no_network)
socket.create_connection = socket.getaddrinfo = no_network
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def guarded(script: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", GUARD, str(script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_competition):
    folder = tmp_path_factory.mktemp("export")
    home, spec = folder / "home", write_spec(folder / "tiny.yaml", tiny_competition, MODELS)
    assert invoke("train", spec, "--home", home, "--device", "cpu").exit_code == 0
    ensemble = invoke("ensemble", spec, "--home", home, "--out", folder / "ensemble.csv", "--json")
    assert ensemble.exit_code == 0, ensemble.output
    result = invoke("export", spec, "--home", home, "--out", folder / "bundle")
    assert result.exit_code == 0, result.output
    return dict(folder=folder, home=home, spec=spec, bundle=folder / "bundle", competition=tiny_competition,
                ensemble=json.loads(ensemble.stdout), output=result.stdout)


def predict(exported, bundle: Path, name: str) -> subprocess.CompletedProcess:
    competition = exported["competition"]
    return guarded(bundle / "predict.py", competition / "test_images", competition / "sample_submission.csv",
                   f"{name}.csv", "--probs", f"{name}.npz", cwd=exported["folder"])


@pytest.mark.slow
def test_the_bundle_writes_the_ensemble_submission_offline(exported):
    done = predict(exported, exported["bundle"], "bundle")
    assert done.returncode == 0, done.stderr
    assert "network blocked" not in done.stderr
    folder = exported["folder"]
    ours = pd.read_csv(folder / "bundle.csv", dtype=str, keep_default_na=False)
    theirs = pd.read_csv(folder / "ensemble.csv", dtype=str, keep_default_na=False)
    assert list(ours.columns) == list(theirs.columns)
    assert list(ours.iloc[:, 0]) == list(theirs.iloc[:, 0])  # the same ids in the same order
    assert (ours.iloc[:, 1] == theirs.iloc[:, 1]).mean() >= 0.999

    # The bag's probabilities: each convnext run weighs 1/2 (plain is weighted 0), so the bag is the
    # plain mean of the two runs' TTA'd test predictions, as training wrote them.
    runs = exported["ensemble"]["weights"]
    assert sorted(runs.values()) == [0.5, 0.5]
    written = [artifacts.load_predictions(exported["home"] / "tiny" / run_id / artifacts.TEST_PREDS) for run_id in runs]
    probs = np.load(folder / "bundle.npz")
    assert list(probs["ids"]) == list(written[0].ids) == list(theirs.iloc[:, 0])
    assert list(probs["vocab"]) == list(written[0].vocab)
    np.testing.assert_allclose(probs["probs"], (written[0].probs + written[1].probs) / 2, atol=1e-4, rtol=0)


def test_the_guard_refuses_ledger_and_the_network(tmp_path):
    """Without the guard ledger imports in this interpreter, so refusing it is what the guard adds."""
    plain = subprocess.run([sys.executable, "-I", "-c", "import ledger"], capture_output=True)
    assert plain.returncode == 0
    script = tmp_path / "reach.py"
    script.write_text("import sys\nfrom importlib import import_module\nimport_module(sys.argv[1])\n")
    blocked = guarded(script, "ledger.spec.loader", cwd=tmp_path)
    assert blocked.returncode != 0 and "blocked import of ledger" in blocked.stderr
    script.write_text("import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    offline = guarded(script, cwd=tmp_path)
    assert offline.returncode != 0 and "network blocked" in offline.stderr


def _import_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _definitions(source: str) -> dict[str, str]:
    found = {}
    for node in ast.parse(source).body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        for name in names:
            found[name] = ast.get_source_segment(source, node)
    return found


def _relative_imports(source: str) -> str:
    """ledger's own imports as the bundle writes them: `from ledger.pkg.module import` -> `from .module
    import`, and `from ledger.pkg import module` (or `from ledger import`) -> `from . import module`."""
    def relative(match: re.Match) -> str:
        dotted = match[2] or ""
        is_package = (Path(ledger.__file__).parent / dotted.replace(".", "/") / "__init__.py").is_file()
        last = "" if not dotted or is_package else "." + dotted.rsplit(".", 1)[-1]
        return f"{match[1]}from .{last[1:]} import" if last else f"{match[1]}from . import"
    return re.sub(r"^(\s*)from ledger(?:\.([\w.]+))? import", relative, source, flags=re.M)


def test_the_bundle_code_is_ledger_source(exported):
    code = exported["bundle"] / "ledger_bundle"
    flat = {module.rsplit(".", 1)[-1]: module for module in MODULES}
    assert sorted(p.stem for p in code.glob("*.py")) == sorted([*flat, "__init__"])
    for name, module in flat.items():
        names = MODULES[module]
        path = "ledger/" + module.replace(".", "/") + ".py"
        text = (code / f"{name}.py").read_text()
        header, body = text.split("\n", 1)
        assert header.startswith(f"# Generated by `ledger export` from {path}")
        assert not (_import_roots(body) - SIX - set(sys.stdlib_module_names) - {"__future__"}), module
        # Make ledger's own imports relative, as the bundle's one rewrite does, and it is the bundle's file.
        source = _relative_imports((Path(ledger.__file__).parent.parent / path).read_text())
        if names is None:
            assert body == source, module
        else:
            taken, original = _definitions(body), _definitions(source)
            assert set(names) <= set(taken)
            assert all(taken[name] == original[name] for name in taken), module


def _broken_copy(exported, tmp_path: Path) -> tuple[Path, str]:
    bundle = tmp_path / "bundle"
    shutil.copytree(exported["bundle"], bundle)
    return bundle, next(iter(exported["ensemble"]["weights"]))


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    return line


def test_a_corrupted_weights_file_fails_at_start(exported, tmp_path):
    bundle, run_id = _broken_copy(exported, tmp_path)
    weights = bundle / "runs" / run_id / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: the file still loads, wrongly
    weights.write_bytes(bytes(data))
    line = _one_error_line(predict(exported, bundle, "corrupted"))
    assert line == f"error: {weights}: corrupted (its sha256 differs from the one in manifest.json)"
    assert not (exported["folder"] / "corrupted.csv").exists()


def test_a_missing_run_fails_at_start(exported, tmp_path):
    bundle, run_id = _broken_copy(exported, tmp_path)
    shutil.rmtree(bundle / "runs" / run_id)
    line = _one_error_line(predict(exported, bundle, "missing"))
    assert line == f"error: {bundle / 'runs' / run_id / 'entry.json'}: missing from the bundle (listed in manifest.json)"


def test_runs_without_weights_are_refused(exported):
    rows = json.loads(invoke("runs", "--home", exported["home"], "--json").stdout)["runs"]
    plain = next(r["id"] for r in rows if r["model"] == "plain")
    out = exported["folder"] / "with-plain"
    result = invoke("export", exported["spec"], "--home", exported["home"], "--out", out, "--weight", "plain=1")
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert f"run(s) {plain} kept no weights" in line and "save_weights: true" in line
    assert not out.exists()


def test_size_limit_and_an_existing_folder(exported):
    assert "size " in exported["output"] and "(limit 20GB)" in exported["output"]
    home, spec, out = exported["home"], exported["spec"], exported["folder"] / "again"
    small = invoke("export", spec, "--home", home, "--out", out, "--max-size", "100KB")  # each run's weights: 250 KB
    assert small.exit_code == 1 and "over --max-size" in small.stderr and not out.exists()
    assert invoke("export", spec, "--home", home, "--out", out).exit_code == 0
    (out / "stale").write_text("from an older export")
    taken = invoke("export", spec, "--home", home, "--out", out)
    assert taken.exit_code == 2 and "already exists" in taken.stderr and (out / "stale").exists()
    assert invoke("export", spec, "--home", home, "--out", out, "--force").exit_code == 0
    assert not (out / "stale").exists() and (out / "manifest.json").is_file()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_versions_that_differ_are_a_warning(exported):
    from ledger.export.runtime import version_warnings
    from ledger.training.device import library_versions

    manifest = json.loads((exported["bundle"] / "manifest.json").read_text())
    assert manifest["versions"] == library_versions()  # the runs were trained here
    assert version_warnings(manifest) == []
    manifest["versions"]["timm"] = "0.9.0"
    [warning] = version_warnings(manifest)
    assert warning.startswith(f"timm {library_versions()['timm']} here, the bag was trained with 0.9.0")


def test_what_cannot_go_into_a_bundle_is_refused():
    with pytest.raises(LedgerError, match=r"also need AugmentSpec, MAX_RUNS, RESIZE_METHODS, TrainSpec"):
        extract(source_of("spec.objects"), "spec.objects", ("ModelSpec",))  # its base class and default left behind
    with pytest.raises(LedgerError, match=r"x.py line 2: imports yaml"):
        check_imports("import os\nimport yaml\n", "x.py")
    with pytest.raises(LedgerError, match=r"imports .store, which the bundle does not carry"):
        check_imports("def f():\n    from .store import Store\n", "x.py")


def test_the_bag_is_chosen_as_ensemble_chooses_it(exported):
    home, spec, folder = exported["home"], exported["spec"], exported["folder"]
    # The two runs with weights, named: greedy selection could otherwise pick `plain`, which has none.
    named = [arg for run_id in exported["ensemble"]["weights"] for arg in ("--run", run_id)]
    tuned = json.loads(invoke("ensemble", spec, "--home", home, "--use-tuned", *named, "--dry-run", "--json").stdout)
    assert invoke("export", spec, "--home", home, "--out", folder / "tuned", "--use-tuned", *named).exit_code == 0
    entries = {p.parent.name: json.loads(p.read_text()) for p in (folder / "tuned" / "runs").glob("*/entry.json")}
    assert {run_id: entry["weight"] for run_id, entry in entries.items()} == pytest.approx(tuned["weights"])
    assert json.loads((folder / "tuned" / "bag.json").read_text())["weights"] == "tuned"

    one = next(iter(exported["ensemble"]["weights"]))
    assert invoke("export", spec, "--home", home, "--out", folder / "one", "--run", one).exit_code == 0
    assert json.loads((folder / "one" / "bag.json").read_text())["runs"] == [one]
    assert json.loads((folder / "one" / "runs" / one / "entry.json").read_text())["weight"] == 1.0
