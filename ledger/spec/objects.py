"""A spec's objects: frozen dataclasses, one per section, and a model entry (`ModelSpec`) complete
on its own, as `spec/loader.py` builds them from YAML and as a run saves its own (`model_to_dict`,
`model_from_dict`). A train setting is one line of `TrainSpec`, with its check in its metadata.
No parsing here, and no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.errors import SpecError
from ledger.training.packaged_weights import PACKAGED_WEIGHTS
from ledger.spec.pseudo_section import PseudoSpec

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESIZE_METHODS = ("squish", "crop", "pad")
MAX_RUNS = 1000  # runs per model entry a spec may ask for


@dataclass(frozen=True)
class DataSpec:
    root: Path
    labels: str = "folders"  # "folders" or the name of a CSV file in root
    id_col: str = "image_id"
    label_col: str = "label"
    train_dir: str = "train_images"
    test_dir: str = "test_images"
    sample_submission: str = "sample_submission.csv"
    # More label columns of the label CSV, trained alongside label_col by one model (one head
    # with every target's classes, summed cross-entropies: Road to the Top part 4).
    extra_targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitSpec:
    valid_pct: float = 0.2
    seed: int | None = None  # None: a fresh random split for every run
    folds: int | None = None  # K: every entry's runs cycle through K stratified folds (seed fixed)
    group: str | None = None  # a label-CSV column: each of its values stays inside one fold




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
    # Random erasing (Zhong et al. 2017; the rectangles of fastai's RandomErasing): the chance that a
    # training image gets one rectangle of 0-30% of its area set to the mean. 0: off.
    erasing: float = 0.0


def _setting(default: Any, kind: str, **limits: Any) -> Any:
    """A train setting: its default and its check (a `Checker.get` kind and limits), in one place."""
    return field(default=default, metadata={"kind": kind, "limits": limits})


@dataclass(frozen=True)
class TrainSpec:
    """The train settings of a `train:` section, which every model entry inherits and may override.
    A new setting is one line here (and its use): parsing, overrides and saving follow from it."""

    batch_size: int = _setting(64, "int", min=1)  # the effective batch, whatever the accumulation factor
    epochs: int = _setting(5, "int", min=1)
    lr: float = _setting(0.01, "float", above=0.0)  # 0 trains nothing: every epoch a wasted one
    finetune: bool = _setting(False, "bool")
    freeze_epochs: int = _setting(1, "int", min=0)
    weight_decay: float = _setting(0.01, "float", min=0.0)
    precision: str = _setting("auto", "str", choices=PRECISIONS)
    pretrained: bool | Path | str = _setting(False, "pretrained")  # str: one of PACKAGED_WEIGHTS
    save_weights: bool = _setting(False, "bool")
    # 1 would make every target uniform: nothing left to learn.
    label_smoothing: float = _setting(0.0, "float", min=0.0, below=1.0)
    mixup: float = _setting(0.0, "float", min=0.0)  # alpha of timm's Mixup; 0 is off
    cutmix: float = _setting(0.0, "float", min=0.0)  # alpha of timm's CutMix; 0 is off
    clip_grad: float | None = _setting(None, "float?", above=0.0)  # the largest gradient norm; null: off
    # The decay of an average of the weights (timm's ModelEmaV3, with its warm-up); null: off.
    ema: float | None = _setting(None, "float?", above=0.0, below=1.0)


@dataclass(frozen=True)
class TtaSpec:
    n: int = 4
    beta: float = 0.25
    # Sizes to predict at, the predictions averaged (timm's test_input_size: a net trained at 224
    # often predicts better at 288). Each is pixels (an int or [height, width]) or a factor of the
    # entry's own size (a float: 1.25). None: the entry's own size.
    size: tuple[int | float | tuple[int, int], ...] | None = None

    def sizes_for(self, model_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
        """The (height, width) sizes an entry of `model_size` predicts at."""
        if not self.size:
            return (tuple(model_size),)
        return tuple(_tta_size(item, model_size) for item in self.size)


def _tta_size(item: int | float | tuple[int, int], model_size: tuple[int, int]) -> tuple[int, int]:
    if isinstance(item, float):
        return (max(1, round(model_size[0] * item)), max(1, round(model_size[1] * item)))
    return (item, item) if isinstance(item, int) else tuple(item)


@dataclass(frozen=True)
class ProbeSpec:
    budget: str = "t4"  # a target card (ledger.probe.targets) or a size such as 16GiB
    steps: int = 3
    margin: float = 0.05

    @property
    def target(self):
        """The budget as a ledger.probe.targets.Budget: capacity, and the card's capability if it names one."""
        from ledger.probe.targets import parse_budget

        return parse_budget(self.budget)

    @property
    def budget_bytes(self) -> int:
        return self.target.capacity_bytes


@dataclass(frozen=True, kw_only=True)
class ModelSpec(TrainSpec):
    """One model entry: every train setting resolved (inherited or its own), and what only an entry has."""

    name: str
    arch: str
    size: tuple[int, int]  # (height, width) the model sees
    resize: str = "squish"  # how a stored image is brought to `presize` (or `size`)
    presize: tuple[int, int] | None = None  # item size before the random crop, as fastai's Resize
    runs: int = 1
    weight: float = 1.0
    accum: int | str = "auto"
    model_kwargs: dict = field(default_factory=dict)
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
    augment: AugmentSpec | None = AugmentSpec()  # what model entries inherit; None: off
    metric: str = "accuracy"  # the competition's metric (ledger.bag.metrics)
    class_order: tuple[str, ...] | None = None  # classes in order (qwk; the binary positive is last)
    pseudo: PseudoSpec | None = None  # pseudo-labelled test images from a teacher (see runs/pseudo_labels.py)
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


def model_from_dict(entry: dict) -> ModelSpec:
    """The inverse of `model_to_dict`: a saved entry (a run's spec.yaml or its ledger row) back to a
    ModelSpec. Keys the saved entry lacks (it predates a setting) take their defaults; keys that are
    no setting (`accum` resolved to a number is one) are kept as they are."""
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    values = {key: value for key, value in entry.items() if key in known}
    values["size"] = tuple(values["size"])
    if values.get("presize"):
        values["presize"] = tuple(values["presize"])
    if values.get("augment") is not None:
        values["augment"] = AugmentSpec(**values["augment"])
    if isinstance(values.get("pretrained"), str) and values["pretrained"] not in PACKAGED_WEIGHTS:
        values["pretrained"] = Path(values["pretrained"])
    return ModelSpec(**values)
