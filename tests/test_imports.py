"""The import rules, made checkable: the command line and the pure core never load torch (so
`ledger --help`, `check`, `runs` and bagging start fast), and no two modules import each other."""

import ast
from pathlib import Path

from conftest import first_module_loading_torch

import ledger

PACKAGE = Path(ledger.__file__).parent

# Config, data listing, planning, the ledger, bagging and reports: none of them trains or predicts.
TORCH_FREE = ("cli", "spec.loader", "spec.checks", "spec.overrides", "spec.keys", "spec.schema", "spec.reference", "training.packaged_weights",
              "spec.fingerprint", "store.rows", "training.callbacks", "ids", "runs.plan", "store.database",
              "runs.recording", "runs.artifacts", "data.competition", "data.fashion_mnist", "bag.ensemble",
              "bag.out_of_bag", "bag.submission", "bag.score", "bag.leaderboard", "report.page",
              "report.interpretation", "report.plots", "cli.tables", "training.schedule", "errors")


def test_the_command_line_and_the_pure_core_never_import_torch():
    loads = first_module_loading_torch("ledger." + name for name in TORCH_FREE)
    assert loads is None, f"importing {loads} loads torch"


def _ledger_imports(path: Path) -> set[str]:
    """Every ledger module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ledger"):
            names.add(node.module)
            # `from ledger.cli import basics` imports the submodule as well as the package.
            names |= {f"{node.module}.{alias.name}" for alias in node.names
                      if (PACKAGE.parent / node.module.replace(".", "/") / f"{alias.name}.py").is_file()}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("ledger.")}
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle():
    graph = {_module_name(p): _ledger_imports(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target not in graph or target == module:
                continue
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_is_over_350_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert long == {}
