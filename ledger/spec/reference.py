"""docs/spec.md, the reference of every spec key, written from the same fields as the JSON Schema
(`spec/schema.py`): `ledger schema --markdown` prints it, and a test fails when the committed page
differs, so the page cannot drift from what the loader checks. Torch-free."""

from __future__ import annotations

import dataclasses

from ledger.probe.targets import TARGETS
from ledger.spec.keys import spec_keys
from ledger.spec.objects import AugmentSpec, DataSpec, ModelSpec, ProbeSpec, Spec, SplitSpec, TrainSpec, TtaSpec
from ledger.spec.pseudo_section import PseudoSpec
from ledger.spec.schema import SCHEMA_FILE, json_default
from ledger.training.packaged_weights import PACKAGED_WEIGHTS

# Two specs the page shows; tests/test_schema.py checks both with `ledger check` and the schema.
MINIMAL_EXAMPLE = """\
name: fashion
data: {root: ../data/fashion}      # train_images/<label>/<image>, test_images/, sample_submission.csv
models:
  - {name: convnext, arch: convnext_atto, size: 32}
"""

FULL_EXAMPLE = """\
# yaml-language-server: $schema=../docs/spec.schema.json
name: fashion-folds
metric: f1_macro                         # scores epochs, the out-of-bag estimate, weights, submissions
data: {root: ../data/fashion, labels: train.csv, id_col: image_id, label_col: label}
split: {folds: 5, seed: 0}               # every entry's runs cycle through the 5 folds
train: {batch_size: 64, epochs: 8, lr: 0.004, weight_decay: 0.05, precision: auto, label_smoothing: 0.1}
augment: {max_rotate: 0, max_warp: 0, min_scale: 1.0}   # fastai's aug_transforms, changed key by key
tta: {n: 4, beta: 0.25, size: [1.0, 1.25]}              # predict at the entry's size and 1.25 times it
probe: {budget: t4, steps: 3, margin: 0.05}             # answer for Kaggle's T4
models:
  - name: resnet
    arch: resnet18
    size: 32                             # 32 x 32; [height, width] for other shapes
    runs: 5                              # one run per fold
    model_kwargs: {channels: [16, 32, 64, 128], stem_width: 16}
  - name: convnext
    arch: convnext_atto
    size: [32, 32]
    presize: 40                          # decoded at 40 px, randomly cropped to 32
    resize: crop
    epochs: 12                           # overrides train.epochs for this entry only
    augment: {erasing: 0.25}             # adds random erasing to the inherited augmentation
    weight: 2
    accum: auto                          # the smallest accumulation factor that fits the budget
"""

_COMPOUND_TEXT = {
    "size": "pixels or [height, width]",
    "budget": "a card (" + ", ".join(TARGETS) + ") or a size (16GiB, 15.9GB, 800MiB)",
    "pretrained": "true, false, a weights file (.safetensors, .pth, .pt, .bin) or " + ", ".join(PACKAGED_WEIGHTS),
    "accum": "`auto` or an integer >= 1",
    "tta_sizes": "pixels, a factor in (0, 16], or a list of them and [height, width]",
    "columns": "a list of distinct column names",
    "label_col": "a column name, or a list of distinct column names",
    "classes": "a list of distinct class names",
    "name": "letters, digits, `-`, `_`, `.`; not starting with `.`",
    "models": "a list of model entries (below)",
    "augment": "true, false or a mapping (below)",
    "section": "a mapping (below)",
}
_PLAIN_TEXT = {"int": "integer", "float": "number", "bool": "true or false", "str": "string",
               "dict": "a mapping", "list": "a list"}


def _range(limits: dict) -> str:
    low = f"[{limits['min']}" if "min" in limits else f"({limits['above']}" if "above" in limits else None
    high = f"{limits['max']}]" if "max" in limits else f"{limits['below']})" if "below" in limits else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return (" >= " if low[0] == "[" else " > ") + low[1:]
    if high:
        return (" <= " if high[-1] == "]" else " < ") + high[:-1]
    return ""


def type_text(kind: str, limits: dict) -> str:
    """A key's type in words: `integer >= 1`, `number in [0, 1)`, `one of squish, crop, pad`."""
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if "choices" in limits:
        text = "one of " + ", ".join(f"`{choice}`" for choice in limits["choices"])
    elif kind in _PLAIN_TEXT:
        text = _PLAIN_TEXT[kind] + _range(limits)
    else:
        text = _COMPOUND_TEXT[kind]
    return text + (", or null" if nullable else "")


def default_text(field: dataclasses.Field) -> str:
    if field.metadata.get("shown") is not None:
        return field.metadata["shown"]
    has_default, value = json_default(field)
    if not has_default:
        return "required" if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING \
            else "see below"
    if value is None or isinstance(value, bool):
        return {None: "`null`", True: "`true`", False: "`false`"}[value]
    return f"`{value}`"


def _table(cls: type, inherited: frozenset[str] = frozenset()) -> list[str]:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for field in spec_keys(cls):
        if field.name in inherited:
            continue
        meta = field.metadata
        lines.append(f"| `{field.name}` | {type_text(meta['kind'], meta['limits'])} | {default_text(field)} "
                     f"| {meta['doc']} |")
    return lines


# (heading, the section's dataclass, a paragraph before its table)
_SECTIONS = [
    ("`data:`", DataSpec, "Where the competition is: a Kaggle-style folder. Labels come from class folders "
     "(`train_images/<label>/<image>`) or from a CSV (`labels: train.csv`)."),
    ("`split:`", SplitSpec, "How each run holds out validation images. Without `folds`, each run draws its own "
     "random split (fixed by `seed`); with `folds: K`, an entry's runs cycle through K stratified folds, so a "
     "bag's out-of-bag estimate covers every image ([bagging and metrics](bagging-and-metrics.md))."),
    ("`train:`", TrainSpec, "The train settings every model entry inherits; an entry may set any of them itself."),
    ("`augment:`", AugmentSpec, "fastai's `aug_transforms`, with its names and defaults. At the top level "
     "and in an entry: `false` is no augmentation, `true` the defaults, a mapping changes the keys it names "
     "and keeps the others (an entry starts from the top level's)."),
    ("`tta:`", TtaSpec, "Test-time augmentation of the test images (and of the validation images a run keeps)."),
    ("`probe:`", ProbeSpec, "What `ledger probe-memory` and `accum: auto` answer for ([probe and GPU](probe-and-gpu.md))."),
    ("`pseudo:`", PseudoSpec, "Pseudo-labels: test images the teacher spec's bag is sure of join the "
     "training images, each student run drawing only on teacher runs that held out its own validation "
     "images ([runs and durability](runs-and-durability.md))."),
]


def spec_markdown() -> str:
    """docs/spec.md as `ledger schema --markdown` prints it."""
    train = frozenset(f.name for f in spec_keys(TrainSpec))
    lines = [
        "# The spec: every key",
        "",
        "<!-- Written by `ledger schema --markdown` from ledger/spec/objects.py; a test fails when this page "
        "differs. -->",
        "",
        "An experiment spec is a YAML file. `ledger check SPEC` validates it and prints it resolved (each "
        "model entry with every setting it inherits); an error names the file and the key path in one line. "
        f"Editors check a spec as it is typed against `{SCHEMA_FILE}` (`ledger schema` prints it) when the "
        "spec's first line points at it:",
        "",
        "```yaml",
        "# yaml-language-server: $schema=../docs/spec.schema.json",
        "```",
        "",
        "The schema refuses only what `ledger check` refuses; `check` also reads the data folder, asks timm "
        "whether each architecture exists and takes the size, finds weights files, and checks rules that "
        "tie keys together (`accum` at most `batch_size`, `min_zoom` at most `max_zoom`, "
        "`extra_targets` only with a label CSV), and tells `2.0` from `2` (JSON has one kind of number). "
        "Unknown keys are errors. Relative paths are relative to the "
        "spec file's folder. Numbers may be written `3e-3`.",
        "",
        "## Examples",
        "",
        "The least a spec needs:",
        "",
        "```yaml", *MINIMAL_EXAMPLE.splitlines(), "```",
        "",
        "More of the keys, with the shorthands the loader takes:",
        "",
        "```yaml", *FULL_EXAMPLE.splitlines(), "```",
        "",
        "## Top level",
        "",
        *_table(Spec),
        "",
        "## `models:` entries",
        "",
        "Each entry is complete on its own once loaded: every `train:` key it does not set is inherited, "
        "and any `train:` key may be set in an entry (its type and meaning are in `train:` below).",
        "",
        *_table(ModelSpec, inherited=train),
    ]
    for heading, cls, paragraph in _SECTIONS:
        lines += ["", f"## {heading}", "", paragraph, "", *_table(cls)]
    return "\n".join(lines) + "\n"
