"""The `ledger` command line: version, help with a usage example on every command, and the thin
commands end to end in tmp_path (data -> check, score), with errors as one line and no traceback."""

import json

import pytest
import typer
import yaml
from typer.testing import CliRunner

from ledger import __version__
from ledger.cli import app
from ledger.data.competition import load_competition
from ledger.spec.loader import DataSpec

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], prog_name="ledger")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # Nothing a command writes by default (./runs, $LEDGER_HOME) may land in the repository.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEDGER_HOME", str(tmp_path / "ledger-home"))


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """A tiny Fashion-MNIST competition written by the CLI itself: 3 images per class, 10 test images."""
    out = tmp_path_factory.mktemp("fashion") / "competition"
    result = runner.invoke(app, ["data", "fashion-mnist", str(out), "--train-per-class", "3", "--test", "10"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in " ".join(result.stdout.split())
    return out


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ---------------------------------------------------------------- version and help


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ledger {__version__}"


def test_help():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("data", "check", "train", "score", "runs"):
        assert command in result.stdout
    assert result.stdout.lstrip().startswith("Usage: ledger")


def test_no_arguments_shows_help():
    result = invoke()
    assert "Usage: ledger" in result.output


def _command_paths(command, path: tuple[str, ...] = ()):
    """Every command and group of the tree, as the words that name it on the command line.
    (Duck-typed on `.commands`: recent Typer ships its own copy of click's classes.)"""
    yield path
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from _command_paths(sub, (*path, name))


COMMAND_PATHS = list(_command_paths(typer.main.get_command(app)))



def test_command_tree_is_walked():
    # Guards the walk itself: the leaf commands of the design are all found.
    for path in [("check",), ("score",), ("train",), ("runs",), ("data", "fashion-mnist")]:
        assert path in COMMAND_PATHS


@pytest.mark.parametrize(
    "path",
    COMMAND_PATHS,
    ids=[" ".join(p) or "ledger" for p in COMMAND_PATHS],
)
def test_every_command_has_a_usage_example(path):
    # As sqlite-utils' test_docs: a new command without a usage example in its help fails here.
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert any(line.startswith("Example: ledger ") for line in lines), result.stdout


# ---------------------------------------------------------------- data and check


def test_data_then_check(tmp_path, competition):
    comp = load_competition(DataSpec(root=competition, labels="train.csv"))
    assert len(comp.vocab) == 10 and len(comp.train_ids) == 30 and len(comp.test_ids) == 10
    for labels in ("folders", "train.csv"):
        spec = tmp_path / f"spec-{labels}.yaml"
        spec.write_text(
            yaml.safe_dump(
                {
                    "name": "fashion-tiny",
                    "data": {"root": str(competition), "labels": labels},
                    "train": {"batch_size": 8, "epochs": 1},
                    "models": [{"name": "convnext", "arch": "convnext_atto", "size": 32, "runs": 2}],
                }
            )
        )
        result = invoke("check", spec)
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
        text = " ".join(result.stdout.split())
        assert "valid, 1 model(s), 2 run(s)" in text
        assert "name: convnext" in result.stdout and "batch_size: 8" in result.stdout


def test_data_into_a_non_empty_folder_needs_force(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("data", "fashion-mnist", out, "--train-per-class", "1", "--test", "1")
    assert result.exit_code != 0
    line = _one_error_line(result)
    assert str(out) in line and "--force" in line
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # untouched

    line = _one_error_line(invoke("data", "fashion-mnist", out, "--train-per-class", "1", "--test", "1", "--force"))
    assert str(out) in line and "not a competition written by" in line
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # --force replaces only ledger's competitions

    (out / "keep.txt").unlink()
    assert invoke("data", "fashion-mnist", out, "--train-per-class", "1", "--test", "1").exit_code == 0
    result = invoke("data", "fashion-mnist", out, "--train-per-class", "2", "--test", "1", "--force")
    assert result.exit_code == 0, result.output
    assert (out / "sample_submission.csv").is_file()


def test_data_rejects_bad_counts(tmp_path):
    result = invoke("data", "fashion-mnist", tmp_path / "out", "--train-per-class", "0")
    assert result.exit_code == 2
    assert "--train-per-class" in _one_error_line(result)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- score


def test_score_solution_against_itself(competition):
    solution = competition / "solution.csv"
    result = invoke("score", solution, solution)
    assert result.exit_code == 0, result.output
    assert "accuracy 1.0000 on 10 images" in result.stdout

    result = invoke("score", solution, solution, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accuracy"] == 1.0 and report["n"] == 10
    assert sum(row["n"] for row in report["per_class"]) == 10


def test_score_sample_submission_is_a_valid_poor_submission(competition):
    result = invoke("score", competition / "sample_submission.csv", competition / "solution.csv", "--json")
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.stdout)["accuracy"] < 1.0


def test_score_submission_with_a_wrong_id(tmp_path, competition):
    lines = (competition / "solution.csv").read_text().splitlines()
    wrong_id = "999999.png"
    first_id = lines[1].split(",")[0]
    submission = tmp_path / "submission.csv"
    submission.write_text("\n".join([lines[0], lines[1].replace(first_id, wrong_id), *lines[2:]]) + "\n")
    result = invoke("score", submission, competition / "solution.csv")
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert wrong_id in line and first_id in line


def test_score_missing_file(tmp_path, competition):
    result = invoke("score", tmp_path / "nope.csv", competition / "solution.csv")
    assert result.exit_code == 1
    assert _one_error_line(result) == f"error: {tmp_path / 'nope.csv'}: file not found"


# ---------------------------------------------------------------- train


def test_train_with_a_missing_data_root(tmp_path):
    missing = tmp_path / "no-such-competition"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "fashion",
                "data": {"root": str(missing)},
                "models": [{"name": "convnext", "arch": "convnext_atto", "size": 32}],
            }
        )
    )
    result = invoke("train", spec, "--home", tmp_path / "home")
    assert result.exit_code == 2  # a spec error, caught while the spec is checked, before any run
    line = _one_error_line(result)
    assert str(missing) in line
    assert "data.root" in line


def test_train_with_a_bad_spec_exits_2(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: fashion\ndata: {root: x}\nmodels: [{name: a, arch: convnext_atto, size: 32, lr: fast}]\n")
    result = invoke("train", spec, "--home", tmp_path / "home")
    assert result.exit_code == 2
    assert "models[0].lr" in _one_error_line(result)
