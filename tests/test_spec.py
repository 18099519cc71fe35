"""Experiment specs: defaults, inheritance, and one-line errors naming the file and the key path.

Every bad spec is checked twice: through `load_spec` (the message starts with "FILE: KEY.PATH: ")
and through `ledger check` (exit 2, exactly one line on stderr, no traceback). Model checks run on
the meta device, so even the timm archs here cost no memory and little time.
"""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ledger.cli import app
from ledger.errors import SpecError
from ledger.spec import DataSpec, ModelSpec, ProbeSpec, Spec, SplitSpec, TrainSpec, TtaSpec, load_spec

runner = CliRunner()

# A small valid spec; each bad case below edits one thing in it.
BASE = {
    "name": "fashion",
    "data": {"root": "data/fashion"},
    "models": [{"name": "convnext", "arch": "convnext_atto", "size": 32}],
}


def _write(tmp_path: Path, spec, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def _with(**changes) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(BASE))  # a deep copy
    spec.update(changes)
    return spec


def _models(*entries) -> dict:
    return _with(models=list(entries))


def _model(**fields) -> dict:
    return {"name": "convnext", "arch": "convnext_atto", "size": 32, **fields}


def _check_cli(path: Path):
    return runner.invoke(app, ["check", str(path)])


# ---------------------------------------------------------------- defaults and inheritance


def test_defaults(tmp_path):
    spec = load_spec(_write(tmp_path, BASE))
    assert isinstance(spec, Spec)
    assert spec.name == "fashion"
    assert spec.path == tmp_path / "spec.yaml"
    assert spec.data == DataSpec(root=Path("data/fashion"))
    assert spec.data.labels == "folders"
    assert (spec.data.id_col, spec.data.label_col) == ("image_id", "label")
    assert (spec.data.train_dir, spec.data.test_dir) == ("train_images", "test_images")
    assert spec.data.sample_submission == "sample_submission.csv"
    assert spec.split == SplitSpec(valid_pct=0.2, seed=None)
    assert spec.train == TrainSpec()
    assert spec.train.batch_size == 64
    assert spec.train.freeze_epochs == 1
    assert spec.train.precision == "auto"
    assert spec.tta == TtaSpec(n=4, beta=0.25)
    assert spec.probe == ProbeSpec(budget="16GiB", steps=3, margin=0.05)
    assert spec.probe.budget_bytes == 16 * 1024**3

    (model,) = spec.models
    assert isinstance(model, ModelSpec)
    assert (model.name, model.arch, model.size) == ("convnext", "convnext_atto", (32, 32))
    assert model.resize == "squish"
    assert model.presize is None
    assert model.item_size == (32, 32)
    assert (model.runs, model.weight, model.accum) == (1, 1.0, "auto")
    assert model.model_kwargs == {}
    assert (model.batch_size, model.lr, model.precision, model.pretrained) == (64, 0.01, "auto", False)


def test_models_inherit_train_settings_and_may_override(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            _with(
                train={"lr": 0.01, "batch_size": 32, "epochs": 3, "precision": "bf16", "finetune": True},
                models=[
                    _model(name="a"),
                    _model(name="b", lr=0.001, epochs=7, resize="pad", runs=3, weight=2, accum=4),
                ],
            ),
        )
    )
    a, b = spec.models
    assert (a.lr, a.batch_size, a.epochs, a.precision, a.finetune) == (0.01, 32, 3, "bf16", True)
    assert (b.lr, b.batch_size, b.epochs, b.precision, b.finetune) == (0.001, 32, 7, "bf16", True)
    assert (b.resize, b.runs, b.weight, b.accum) == ("pad", 3, 2.0, 4)
    assert isinstance(b.weight, float)
    assert spec.train.lr == 0.01  # the train section itself is unchanged
    assert spec.select(["b"]) == (b,)
    assert spec.select(None) == (a, b)


def test_sizes_presize_and_pretrained_path(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            _models(
                _model(name="square", size=32),
                _model(name="wide", arch="resnet18", size=[32, 48], presize=64, resize="crop"),
                _model(name="local", pretrained="weights/convnext.safetensors"),
                _model(name="hub", pretrained=True),
            ),
        )
    )
    square, wide, local, hub = spec.models
    assert square.size == (32, 32) and square.size_label == "32"
    assert wide.size == (32, 48) and wide.size_label == "32x48"
    assert wide.presize == (64, 64) and wide.item_size == (64, 64)
    assert local.pretrained == Path("weights/convnext.safetensors")
    assert hub.pretrained is True


def test_vit_with_small_patches_takes_a_small_size(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            _models(_model(name="vit", arch="vit_tiny_patch16_224", model_kwargs={"img_size": 32, "patch_size": 4})),
        )
    )
    assert spec.models[0].model_kwargs == {"img_size": 32, "patch_size": 4}


def test_specs_are_frozen(tmp_path):
    spec = load_spec(_write(tmp_path, BASE))
    with pytest.raises(AttributeError):
        spec.name = "other"
    with pytest.raises(AttributeError):
        spec.models[0].lr = 1.0


def test_unknown_model_name_in_select(tmp_path):
    spec = load_spec(_write(tmp_path, BASE))
    with pytest.raises(SpecError, match=r"no model named 'nope' \(the spec has: convnext\)"):
        spec.select(["nope"])


# ---------------------------------------------------------------- bad specs

THREE_MODELS_ONE_UNKNOWN = _models(
    _model(name="a"),
    _model(name="b", arch="resnet18", size=64),
    _model(name="c", arch="convnext_attto"),  # a typo of convnext_atto
)

# (id, spec as a dict or YAML text, the key path the message must name)
BAD_SPECS = [
    ("unknown-top-level-key", _with(colour="red"), "colour"),
    ("unknown-train-key", _with(train={"lr": 0.1, "colour": "red"}), "train.colour"),
    ("unknown-model-key", _models(_model(name="a"), _model(name="b", colour="red")), "models[1].colour"),
    ("epochs-a-word", _with(train={"epochs": "five"}), "train.epochs"),
    ("batch-size-a-bool", _with(train={"batch_size": True}), "train.batch_size"),
    ("valid-pct-above-one", _with(split={"valid_pct": 1.5}), "split.valid_pct"),
    ("size-three-numbers", _models(_model(size=[1, 2, 3])), "models[0].size"),
    ("accum-zero", _models(_model(accum=0)), "models[0].accum"),
    ("precision-unknown", _with(train={"precision": "fp8"}), "train.precision"),
    ("budget-not-a-size", _with(probe={"budget": "lots"}), "probe.budget"),
    ("name-missing", {k: v for k, v in BASE.items() if k != "name"}, "name"),
    ("arch-missing", _models({"name": "convnext", "size": 32}), "models[0].arch"),
    ("arch-unknown", THREE_MODELS_ONE_UNKNOWN, "models[2].arch"),
    ("duplicate-model-names", _models(_model(name="twin"), _model(name="twin", arch="resnet18", size=64)), "models[1].name"),
    ("vit-at-a-size-it-cannot-take", _models(_model(arch="vit_tiny_patch16_224", size=32)), "models[0].size"),
    ("model-kwargs-not-taken", _models(_model(model_kwargs={"no_such_option": 3})), "models[0].model_kwargs"),
    ("model-kwargs-not-a-mapping", _models(_model(model_kwargs=[1, 2])), "models[0].model_kwargs"),
]


@pytest.mark.parametrize("spec, keypath", [case[1:] for case in BAD_SPECS], ids=[case[0] for case in BAD_SPECS])
def test_bad_spec_names_file_and_key_path(tmp_path, spec, keypath):
    path = _write(tmp_path, spec, "bad-spec.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {keypath}: "), message
    assert "\n" not in message

    result = _check_cli(path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert "Traceback" not in result.output


def test_cnn_at_a_small_square_size_is_accepted(tmp_path):
    # resnet18 at 32x32 trains fine (Fashion-MNIST, CIFAR); its last feature map is 1x1, which only a
    # training-mode BatchNorm on a batch of one image refuses.
    spec = load_spec(_write(tmp_path, _models(_model(name="resnet", arch="resnet18", size=32))))
    assert spec.models[0].size == (32, 32)


def test_unknown_arch_suggests_close_matches(tmp_path):
    with pytest.raises(SpecError, match=r"models\[2\]\.arch: unknown timm architecture 'convnext_attto'.*close:.*convnext_atto"):
        load_spec(_write(tmp_path, THREE_MODELS_ONE_UNKNOWN))


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(SpecError, match=r"train\.bach_size: unknown key \(did you mean 'batch_size'\?\)"):
        load_spec(_write(tmp_path, _with(train={"bach_size": 8})))


@pytest.mark.parametrize(
    "text, what",
    [
        ("name: fashion\nmodels: [a, b\n", "not valid YAML at line"),
        ("name: [unclosed\n  data: {\n", "not valid YAML"),
    ],
    ids=["unclosed-list", "unclosed-flow"],
)
def test_invalid_yaml(tmp_path, text, what):
    path = _write(tmp_path, text, "broken.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"{path}: {what}")

    result = _check_cli(path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {caught.value}"]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "42\n"], ids=["empty", "list", "scalar"])
def test_spec_that_is_not_a_mapping(tmp_path, text):
    path = _write(tmp_path, text, "odd.yaml")
    with pytest.raises(SpecError, match=r"\(top level\): expected a mapping"):
        load_spec(path)
    result = _check_cli(path)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1


def test_missing_spec_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(SpecError, match="nowhere.yaml: spec file not found"):
        load_spec(path)
    result = _check_cli(path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {path}: spec file not found"]
    assert "Traceback" not in result.output


def test_spec_path_is_a_folder(tmp_path):
    result = _check_cli(tmp_path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path}: is a folder, not a spec file"]


# ---------------------------------------------------------------- ledger check on a good spec


def test_check_prints_the_resolved_spec(tmp_path):
    path = _write(
        tmp_path,
        _with(
            train={"lr": 0.01, "batch_size": 32},
            models=[
                _model(name="convnext"),
                _model(name="vit", arch="vit_tiny_patch16_224", size=[32, 32], lr=0.001, runs=2,
                       model_kwargs={"img_size": 32, "patch_size": 4}),
            ],
        ),
    )
    result = _check_cli(path)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    body, summary = result.stdout.split("\n# ", 1)  # the resolved YAML, then a one-line summary comment
    resolved = yaml.safe_load(body)
    assert resolved["name"] == "fashion"
    assert "path" not in resolved
    assert resolved["data"]["root"] == "data/fashion"
    assert resolved["split"] == {"valid_pct": 0.2, "seed": None, "folds": None}
    convnext, vit = resolved["models"]
    assert (convnext["name"], convnext["lr"], convnext["batch_size"], convnext["size"]) == ("convnext", 0.01, 32, [32, 32])
    assert (vit["name"], vit["lr"], vit["batch_size"], vit["runs"]) == ("vit", 0.001, 32, 2)
    assert vit["model_kwargs"] == {"img_size": 32, "patch_size": 4}
    assert " ".join(summary.split()) == f"{path}: valid, 2 model(s), 3 run(s)"


def test_check_output_is_valid_yaml_with_long_values(tmp_path):
    # A long data root (deep tmp folders, Kaggle input paths) must not be wrapped mid-value.
    root = "/kaggle/input/" + "a-rather-long-competition-folder-name/" * 10 + "train"
    path = _write(tmp_path, _with(data={"root": root}))
    result = _check_cli(path)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["data"]["root"] == root
