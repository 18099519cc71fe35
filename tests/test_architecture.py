"""docs/architecture.md's module map is the tree: it names every module and nothing else, the modules it
marks torch-free (in italics) import without loading torch, and the tree keeps the sizes it states."""

import re
from pathlib import Path

from conftest import first_module_loading_torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ledger"
DATA_SCRIPT = "data/embedded/fashion-mnist/make_subset.py"  # the embedded data's own script, not a module


def _module_map() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text[text.index("### Module map"):]


def _modules() -> set[str]:
    tree = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    return {name for name in tree if not name.endswith("__init__.py") or name == "cli/__init__.py"} - {DATA_SCRIPT}


def test_the_module_map_names_every_module_of_the_tree_and_nothing_else():
    named = set(re.findall(r"`((?:\w+/)?\w+\.py)`", _module_map()))
    assert named == _modules()


def test_the_module_map_names_every_package():
    named = set(re.findall(r"^\| `(\w+)/` \|", _module_map(), re.M))
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert named - {"ledger"} == packages


def test_the_modules_marked_torch_free_do_not_load_torch():
    marked = re.findall(r"\*`((?:\w+/)?\w+)\.py`\*", _module_map())
    modules = ["ledger." + name.replace("/", ".").removesuffix(".__init__") for name in marked]
    assert len(modules) > 40
    loads = first_module_loading_torch(modules)
    assert loads is None, f"{loads} is marked torch-free but loads torch"


def test_a_few_modules_at_the_top_and_at_most_twelve_in_a_package():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 6, top
    for init in PACKAGE.glob("*/__init__.py"):
        modules = [p.name for p in init.parent.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, (init.parent.name, modules)
