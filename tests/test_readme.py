"""README's module map is the tree: it names every module and nothing else, and the modules it
marks torch-free (in italics) import without loading torch."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_map() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Module map")
    end = text.find("\n## ", start)
    return text[start:end if end != -1 else None]


def test_the_module_map_names_every_module_of_the_tree_and_nothing_else():
    named = set(re.findall(r"`((?:cli/)?\w+\.py)`", _module_map()))
    tree = {str(p.relative_to(ROOT / "ledger")) for p in (ROOT / "ledger").rglob("*.py")}
    tree -= {"__init__.py", "embedded/fashion-mnist/make_subset.py"}  # the package file; the data's own script
    assert named == tree


def test_the_modules_marked_torch_free_do_not_load_torch():
    marked = re.findall(r"\*`((?:cli/)?\w+)\.py`\*", _module_map())
    modules = ["ledger." + name.replace("/", ".") for name in marked]
    assert len(modules) > 20
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'torch' in sys.modules:\n"
            "        print(name); break\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{result.stdout.strip()} is marked torch-free but loads torch"
