"""`--set KEY.PATH=VALUE` overrides: applied to the raw YAML before validation, so checked like the
file; errors they cause name the `--set` item, in one line."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ledger.cli import app
from ledger.errors import SpecError
from ledger.spec.overrides import apply_overrides, parse_override
from ledger.spec.loader import AugmentSpec, load_spec

runner = CliRunner()

SPEC = {
    "name": "fashion",
    "data": {"root": "data"},
    "split": {"valid_pct": None},
    "train": {"lr": 0.01, "epochs": 2},
    "models": [
        {"name": "convnext", "arch": "convnext_atto", "size": 32},
        {"name": "vit", "arch": "vit_tiny_patch16_224", "size": 32, "model_kwargs": {"img_size": 32, "patch_size": 4}},
        {"name": "swin", "arch": "resnet18", "size": 32, "augment": True},
    ],
}


@pytest.fixture
def spec_path(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return path


def _error(path: Path, *overrides: str) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path, list(overrides), check_models=False)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_overrides_change_values_and_are_parsed_as_yaml(spec_path):
    spec = load_spec(spec_path, ["train.lr=0.003", "models.vit.epochs=5", "split.folds=3", "augment.do_flip=false",
                                 "models.swin.augment.max_rotate=0", "models.convnext.size=[32, 48]"])
    assert spec.train.lr == 0.003
    convnext, vit, swin = spec.models
    assert (convnext.lr, vit.lr) == (0.003, 0.003)  # the override is inherited like the file's value
    assert (convnext.epochs, vit.epochs, swin.epochs) == (2, 5, 2)
    assert convnext.size == (32, 48)
    assert (spec.split.folds, spec.split.seed, convnext.runs) == (3, 0, 3)  # folds' defaults apply
    assert spec.augment == AugmentSpec(do_flip=False)
    assert swin.augment == AugmentSpec(do_flip=False, max_rotate=0.0)  # `augment: true` became a mapping


def test_the_file_is_unchanged_and_later_items_win(spec_path):
    before = spec_path.read_text()
    spec = load_spec(spec_path, ["train.lr=1", "train.lr=0.5", "augment=false"], check_models=False)
    assert spec.train.lr == 0.5
    assert spec.augment is None and all(m.augment is None for m in spec.models[:2])
    assert spec_path.read_text() == before
    assert load_spec(spec_path, check_models=False).train.lr == 0.01


def test_apply_overrides_reports_the_key_paths_it_set():
    raw, origins = apply_overrides(SPEC, ["models.vit.epochs=5", "tta.n=0", "models.swin.augment.p_affine=1"])
    assert origins == {"models[1].epochs": "models.vit.epochs=5", "tta.n": "tta.n=0",
                       "models[2].augment.p_affine": "models.swin.augment.p_affine=1"}
    assert raw["tta"] == {"n": 0} and "tta" not in SPEC  # a copy: the caller's mapping is untouched
    assert SPEC["models"][2]["augment"] is True


def test_unknown_model_name(spec_path):
    assert _error(spec_path, "models.vitt.epochs=5") == (
        "--set models.vitt.epochs=5: no model named 'vitt' (the spec has: convnext, vit, swin)"
    )


@pytest.mark.parametrize(
    "item, expected",
    [
        ("train.lrr=0.1", "--set train.lrr=0.1: train.lrr: unknown key (did you mean 'lr'?)"),
        ("models.vit.epoch=5", "--set models.vit.epoch=5: models[1].epoch: unknown key (did you mean 'epochs'?)"),
        ("train.lr=fast", "--set train.lr=fast: train.lr: expected a number, got str 'fast'"),
        ("train.lr=.nan", "--set train.lr=.nan: train.lr: expected a finite number, got nan"),
        ("split.seed=-3", "--set split.seed=-3: split.seed: must be >= 0, got -3"),
        ("models.vit.augment.min_scale=0", "--set models.vit.augment.min_scale=0: models[1].augment.min_scale: must be > 0.0"),
        ("colour.hue=red", "--set colour.hue=red: colour: unknown key"),
        ("train={lr: 1, bad: 2}", "--set train={lr: 1, bad: 2}: train.bad: unknown key"),
        ("name=..", "--set name=..: name: must not start with '.'"),
    ],
)
def test_an_invalid_override_names_the_item_not_the_file(spec_path, item, expected):
    message = _error(spec_path, item)
    assert message.startswith(expected), message
    assert str(spec_path) not in message


def test_a_file_error_still_names_the_file(spec_path):
    spec_path.write_text(spec_path.read_text().replace("epochs: 2", "epochs: 0"))
    assert _error(spec_path, "train.lr=0.1").startswith(f"{spec_path}: train.epochs: must be >= 1")


@pytest.mark.parametrize(
    "item, expected",
    [
        ("train.lr", "--set train.lr: expected KEY.PATH=VALUE"),
        ("=3", "--set =3: expected KEY.PATH=VALUE"),
        ("train..lr=3", "--set train..lr=3: expected KEY.PATH=VALUE"),
        ("train.lr=[1, 2", "--set train.lr=[1, 2: the value is not valid YAML"),
        ("train={a: 1, a: 2}", "--set train={a: 1, a: 2}: duplicate key 'a'"),
        ("name.first=x", "--set name.first=x: name is str 'fashion', not a mapping"),
    ],
)
def test_malformed_overrides(spec_path, item, expected):
    assert _error(spec_path, item).startswith(expected)


def test_parse_override_keeps_the_value_type():
    assert parse_override("a.b=[1,2]").value == [1, 2]
    assert parse_override("a=false").value is False
    assert parse_override("a=0.003").value == 0.003
    assert parse_override("a=x=y").value == "x=y"  # only the first '=' splits
    assert parse_override("a=").value is None
    assert parse_override(" models.vit.lr =1").keys == ("models", "vit", "lr")


def test_check_prints_the_spec_with_overrides(spec_path):
    result = runner.invoke(app, ["check", str(spec_path), "--set", "models.vit.epochs=7", "--set", "augment.max_rotate=3"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout.split("\n# ", 1)[0])
    assert [m["epochs"] for m in resolved["models"]] == [2, 7, 2]
    assert resolved["augment"]["max_rotate"] == 3.0
    assert yaml.safe_load(spec_path.read_text())["models"][1].get("epochs") is None


def test_check_with_a_bad_override_is_one_line(spec_path):
    result = runner.invoke(app, ["check", str(spec_path), "--set", "models.vitt.epochs=5"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --set models.vitt.epochs=5: no model named 'vitt' (the spec has: convnext, vit, swin)"
    ]
