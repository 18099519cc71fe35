"""README's module map is the tree: it names every module and nothing else, and the modules it
marks torch-free (in italics) import without loading torch."""

import re
from pathlib import Path

from conftest import first_module_loading_torch

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
    loads = first_module_loading_torch(modules)
    assert loads is None, f"{loads} is marked torch-free but loads torch"
