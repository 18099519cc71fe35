"""The README and docs/ say what the code does: a short README whose command table is the app's
commands, docs pages that exist where they are linked, and statements tied to the tables they
describe (the export bundle's modules)."""

import re
from pathlib import Path

import jsonschema
import typer

from ledger.cli import app
from ledger.spec.checks import read_yaml
from ledger.spec.loader import load_spec
from ledger.spec.schema import spec_schema
from ledger.export.bundle_code import MODULES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def _commands(command, path: tuple[str, ...] = ()):
    """Every command a user runs, as its words: leaves, and groups that run without a subcommand."""
    subcommands = getattr(command, "commands", None) or {}
    if path and (not subcommands or getattr(command, "invoke_without_command", False)):
        yield " ".join(path)
    for name, sub in sorted(subcommands.items()):
        yield from _commands(sub, (*path, name))


def _table_commands() -> list[str]:
    table = README[README.index("<!-- commands:"):]
    table = table[: table.index("\n\n")]
    cells = re.findall(r"^\| `ledger ([^`]*)` \|", table, re.M)
    # The command's words: everything before its first argument (UPPER case) or option.
    return [" ".join(word for word in re.split(r"\s+", cell) if re.fullmatch(r"[a-z][a-z-]*", word)
                     ) for cell in cells]


def test_the_readme_is_short_and_starts_with_the_two_set_up_commands():
    lines = README.splitlines()
    assert len(lines) <= 300
    first = "\n".join(lines[:60])
    assert "make submission" in first and "make test" in first
    assert "make test-quick" in README


def test_the_command_table_is_every_command_of_the_app_and_nothing_else():
    listed = _table_commands()
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == set(_commands(typer.main.get_command(app)))


def test_the_spec_at_a_glance_is_a_valid_spec(tmp_path):
    block = README[README.index("## The spec at a glance"):]
    text = block[block.index("```yaml\n") + 8: block.index("```\n", block.index("```yaml"))]
    path = tmp_path / "experiments" / "paddy.yaml"
    path.parent.mkdir()
    path.write_text(text)
    spec = load_spec(path, check_models=False)  # the data and timm's weights are not here
    assert [m.name for m in spec.models] == ["convnext", "vit"]
    assert list(jsonschema.Draft202012Validator(spec_schema()).iter_errors(read_yaml(path))) == []


def test_the_results_table_is_one_delimited_table():
    start, end = README.index("<!-- results:"), README.index("<!-- end of results -->")
    block = README[start:end]
    assert len(re.findall(r"^\| --- \|", block, re.M)) == 1
    assert "bench/compare_default.sh" in block  # the command that measures it


def test_docs_holds_the_pages_the_readme_links_and_every_link_resolves():
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert len(pages) >= 5 and "spec.md" in pages
    for source in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", source.read_text()):
            assert (source.parent / target).exists(), f"{source.name} links {target}"
    for page in pages:
        assert f"docs/{page}" in README, f"the README does not link docs/{page}"


def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but '-' dropped, spaces to '-'."""
    return {re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", text, re.M)}


def test_every_link_to_a_section_finds_its_heading():
    for source in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target, anchor in re.findall(r"\]\(([^)#:]*)#([^)]+)\)", source.read_text()):
            page = source.parent / target if target else source
            assert anchor in _anchors(page.read_text()), f"{source.name} links {target}#{anchor}"


def test_the_export_page_names_the_modules_the_bundle_carries():
    page = (DOCS / "export.md").read_text()
    whole = page[page.index("- whole:"):page.index("- in part")]
    part = page[page.index("- in part"):page.index("\n\n", page.index("- in part"))]
    carried = {module.replace(".", "/") for module in MODULES}
    assert set(re.findall(r"`([\w/]+)`", whole)) == {m.replace(".", "/") for m, names in MODULES.items()
                                                      if names is None}
    assert set(re.findall(r"`([\w/]+)`", part)) & carried == {m.replace(".", "/") for m, names in MODULES.items()
                                                               if names is not None}


def test_project_text_speaks_of_the_project():
    for source in [ROOT / "README.md", *DOCS.glob("*.md")]:
        text = source.read_text().lower()
        for phrase in ("the issue", "closing notes", "this round"):
            assert phrase not in text, f"{source.name}: {phrase!r}"


def test_the_card_table_lists_every_target_card_and_nothing_else():
    from ledger.probe.targets import TARGETS

    page = (ROOT / "docs" / "probe-and-gpu.md").read_text()
    assert re.findall(r"^\| `([\w-]+)` \| ", page, re.M)[1:] == list(TARGETS)  # after the header's `--budget`
