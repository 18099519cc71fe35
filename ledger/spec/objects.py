"""A spec's objects: frozen dataclasses, one per section, and a model entry (`ModelSpec`) complete
on its own, as `spec/loader.py` builds them from YAML and as a run saves its own (`model_to_dict`,
`model_from_dict`). Every key is one field whose metadata holds its check and its meaning
(`spec/keys.py`): the loader, the JSON Schema and docs/spec.md all read it. No parsing here, and no
torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.bag.metrics import TASKS
from ledger.bag.task_metrics import METRIC_CHOICES
from ledger.errors import SpecError
from ledger.training.packaged_weights import PACKAGED_WEIGHTS
from ledger.spec.keys import REQUIRED, setting
from ledger.spec.pseudo_section import PseudoSpec

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSSES = ("auto", "mse", "huber")

RESIZE_METHODS = ("squish", "crop", "pad")
MAX_RUNS = 1000  # runs per model entry a spec may ask for


@dataclass(frozen=True)
class DataSpec:
    root: Path = setting(REQUIRED, "str", "The competition folder, relative to the spec file's folder.")
    labels: str = setting("folders", "str", "`folders` (train_dir/<label>/<image>) or the name of a label CSV in root.")
    id_col: str = setting("image_id", "str", "The label CSV's id column (ids with or without the file extension).")
    # A list names several columns: one 0/1 column per tag (multi_label), or several numbers (regression).
    label_col: str | tuple[str, ...] = setting("label", "label_col", "The label CSV's label column: class names, "
                                               "space-separated tags (multi_label) or a number (regression); "
                                               "a list: a 0/1 column per tag, or several numbers.")
    train_dir: str = setting("train_images", "str", "The training images' folder in root.")
    test_dir: str = setting("test_images", "str", "The test images' folder in root.")
    sample_submission: str = setting("sample_submission.csv", "str",
                                     "The sample submission in root: the submission's ids, order and columns.")
    # One head with every target's classes, summed cross-entropies: Road to the Top part 4.
    extra_targets: tuple[str, ...] = setting((), "columns", "More label-CSV columns one model learns alongside "
                                             "label_col (needs a label CSV; not with mixup or cutmix).", shown="none")
    task: str = "single_label"  # the spec's top-level task, copied here for reading the labels: not a key of data


@dataclass(frozen=True)
class SplitSpec:
    valid_pct: float = setting(0.2, "float?", "The share of the training images held out by each run.",
                               shown="0.2; 1/folds with folds", min=0.0, below=1.0)
    # At most 2**32 - 1, numpy's legacy limit: runs add their number to it, and the sum must still fit
    # SQLite's 64-bit integers and every generator seeded from it.
    seed: int | None = setting(None, "int?", "The split's seed; null: a fresh random split for every run.",
                               shown="null; 0 with folds", min=0, max=2**32 - 1)
    folds: int | None = setting(None, "int?", "K: every entry's runs cycle through K stratified folds "
                                "(the seed fixed); not with valid_pct.", min=2)
    group: str | None = setting(None, "str?", "A label-CSV column: each of its values stays inside one fold "
                                "(needs folds).")


@dataclass(frozen=True)
class AugmentSpec:
    """fastai's `aug_transforms` settings, with its names and defaults (min_scale as the lesson
    passes it). `augment: false` in a spec is `None` on the model: no augmentation at all."""

    do_flip: bool = setting(True, "bool", "Flip horizontally at random.")
    flip_vert: bool = setting(False, "bool", "Flip vertically too (and rotate by multiples of 90 degrees).")
    max_rotate: float = setting(10.0, "float", "The largest rotation, in degrees.", min=0.0)
    min_zoom: float = setting(1.0, "float", "The smallest zoom factor (at most max_zoom).", above=0.0)
    max_zoom: float = setting(1.1, "float", "The largest zoom factor.", above=0.0)
    # Lighting scales brightness and contrast by up to 1 +- max_lighting: 1 reaches black.
    max_lighting: float = setting(0.2, "float", "The largest change of brightness and contrast.", min=0.0, below=1.0)
    max_warp: float = setting(0.2, "float", "The largest perspective warp.", min=0.0)
    p_affine: float = setting(0.75, "float", "The chance of the affine transforms (rotate, zoom, warp).",
                              min=0.0, max=1.0)
    p_lighting: float = setting(0.75, "float", "The chance of the lighting transform.", min=0.0, max=1.0)
    min_scale: float = setting(0.75, "float", "The smallest share of the image a random-resized crop keeps.",
                               above=0.0, max=1.0)
    # The rectangles of fastai's RandomErasing (Zhong et al. 2017), filled with the mean, not noise.
    erasing: float = setting(0.0, "float", "The chance that a training image gets one rectangle of 0-30% of its "
                             "area set to the mean; 0: off.", min=0.0, max=1.0)


@dataclass(frozen=True)
class TrainSpec:
    """The train settings of a `train:` section, which every model entry inherits and may override.
    A new setting is one line here (and its use): parsing, overrides, saving and the reference follow."""

    batch_size: int = setting(64, "int", "The effective batch, whatever the accumulation factor.", min=1)
    epochs: int = setting(5, "int", "Epochs (after freeze_epochs when fine-tuning).", min=1)
    lr: float = setting(0.01, "float", "The peak learning rate of the one-cycle schedule (0 would train nothing).",
                       above=0.0)
    finetune: bool = setting(False, "bool", "fastai's fine_tune: the body frozen for freeze_epochs, then all.")
    freeze_epochs: int = setting(1, "int", "Epochs with the body frozen, when finetune is on.", min=0)
    weight_decay: float = setting(0.01, "float", "AdamW's weight decay.", min=0.0)
    precision: str = setting("auto", "str", "auto: bf16 where the card runs it, else fp16 on CUDA, fp32 on CPU.",
                             choices=PRECISIONS)
    pretrained: bool | Path | str = setting(False, "pretrained", "true: timm's hub weights; a weights file "
                                            "(relative to the spec); or a packaged weights name.")
    save_weights: bool = setting(False, "bool", "Keep the run's weights (safetensors), which export needs.")
    # 1 would make every target uniform: nothing left to learn.
    label_smoothing: float = setting(0.0, "float", "Label smoothing of the cross-entropy (of each tag's with "
                                     "multi_label).", min=0.0, below=1.0)
    loss: str = setting("auto", "str", "The regression loss (mse or huber, on standardised targets); auto: the "
                        "task's own (cross-entropy, binary cross-entropy per tag, mse).", choices=LOSSES)
    mixup: float = setting(0.0, "float", "The alpha of timm's Mixup; 0: off.", min=0.0)
    cutmix: float = setting(0.0, "float", "The alpha of timm's CutMix; 0: off.", min=0.0)
    clip_grad: float | None = setting(None, "float?", "The largest gradient norm; null: off.", above=0.0)
    ema: float | None = setting(None, "float?", "The decay of an average of the weights (timm's ModelEmaV3, "
                                "with its warm-up), which predicts; null: off.", above=0.0, below=1.0)


@dataclass(frozen=True)
class TtaSpec:
    n: int = setting(4, "int", "Augmented passes over the test images (fastai's tta n); 0: the plain "
                     "prediction only.", min=0)
    beta: float = setting(0.25, "float", "The plain prediction's share of the result (fastai's tta beta).",
                          min=0.0, max=1.0)
    # timm's test_input_size: a net trained at 224 often predicts better at 288.
    size: tuple[int | float | tuple[int, int], ...] | None = setting(
        None, "tta_sizes?", "Sizes to predict at, the predictions averaged: pixels (288 or, in a list, "
        "[height, width]) or a factor of the entry's size (1.25); one or a list; null: the entry's size.")

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
    budget: str = setting("t4", "budget", "The card a probe answers for (its memory, capability and precision), "
                          "or a size such as 16GiB.")
    steps: int = setting(3, "int", "Training steps each trial measures.", min=1)
    margin: float = setting(0.05, "float", "The share of the budget kept free.", min=0.0, below=1.0)

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

    name: str = setting(REQUIRED, "name", "The entry's name (letters, digits, '-', '_', '.'): it names files "
                        "and --set models.<name>.key.")
    arch: str = setting(REQUIRED, "str", "A timm architecture (`ledger check` asks timm).")
    size: tuple[int, int] = setting(REQUIRED, "size", "The size the model sees: pixels, or [height, width].")
    resize: str = setting("squish", "str", "How a stored image is brought to presize (or size).",
                          choices=RESIZE_METHODS)
    presize: tuple[int, int] | None = setting(None, "size?", "The item size before the random crop, as fastai's "
                                              "Resize; null: size.")
    runs: int = setting(1, "int", "Runs of this entry, each on its own split.", shown="1; folds with folds",
                        min=1, max=MAX_RUNS)
    weight: float = setting(1.0, "float", "The entry's weight in the bag (--tune-weights chooses them out of "
                            "bag).", min=0.0)
    accum: int | str = setting("auto", "accum", "Gradient-accumulation factor (at most batch_size), or auto: "
                               "the smallest that fits the probe's budget.")
    model_kwargs: dict = setting({}, "dict", "Keyword arguments of timm.create_model (e.g. drop_path_rate).")
    augment: AugmentSpec | None = setting(AugmentSpec(), "augment", "The entry's augmentation: keys change the "
                                          "inherited ones; false: none.", shown="the top-level augment")

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
    name: str = setting(REQUIRED, "name", "The experiment's name (letters, digits, '-', '_', '.'): runs go "
                        "to runs/<name>/.")
    data: DataSpec = setting(REQUIRED, "section", "The competition folder.", section=DataSpec)
    models: tuple[ModelSpec, ...] = setting(REQUIRED, "models", "The model entries: each inherits train and "
                                            "augment, key by key, and may override them.", section=ModelSpec)
    split: SplitSpec = setting(SplitSpec(), "section", "How each run holds out validation images.",
                               section=SplitSpec)
    train: TrainSpec = setting(TrainSpec(), "section", "The train settings every entry inherits.", section=TrainSpec)
    tta: TtaSpec = setting(TtaSpec(), "section", "Test-time augmentation.", section=TtaSpec)
    probe: ProbeSpec = setting(ProbeSpec(), "section", "What `ledger probe-memory` and accum: auto answer for.",
                               section=ProbeSpec)
    augment: AugmentSpec | None = setting(AugmentSpec(), "augment", "The augmentation entries inherit: a mapping "
                                          "changes fastai's defaults; true: the defaults; false: none.",
                                          section=AugmentSpec)
    task: str = setting("single_label", "str", "What a label is: one class per image (single_label), any number "
                        "of tags (multi_label), or numbers (regression).", choices=TASKS)
    metric: str = setting("accuracy", "str", "The competition's metric: it scores epochs, the out-of-bag "
                          "estimate, weights and submissions; one of the task's.",
                          shown="accuracy; f2_samples with multi_label; rmse with regression", choices=METRIC_CHOICES)
    class_order: tuple[str, ...] | None = setting(None, "classes?", "The classes in order (qwk; with two classes "
                                                  "the last is the positive one); null: sorted.")
    pseudo: PseudoSpec | None = setting(None, "section?", "Pseudo-labelled test images from a teacher spec's bag.",
                                        section=PseudoSpec)
    path: Path | None = None  # the spec file read: not a key of it

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


# How TTA drew its randomness (the resolved spec's tta.draws): keyed to each image, so it repeats for any
# subset or order of the images (runs without it drew per batch).
KEYED_DRAWS = "keyed"


@dataclass(frozen=True)
class RunTta:
    """How a run predicts its test and held-out images, resolved: fastai's TTA with `n` augmented
    passes blended by `beta`, each image's draws keyed to `seed`, at `sizes` (tta.size; (): the
    entry's own size). The one shape a plan, a run folder's spec.yaml, `predict` and a bundle share."""

    n: int = 4
    beta: float = 0.25
    seed: int = 0
    sizes: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict:
        """The resolved spec's `tta:` section."""
        return dict(n=self.n, beta=self.beta, seed=self.seed, draws=KEYED_DRAWS,
                    sizes=[list(size) for size in self.sizes] or None)

    @classmethod
    def from_dict(cls, values: dict | None) -> "RunTta":
        """From a resolved spec's `tta:` (or a bundle's entry): a run recorded before its seed was
        takes 0, as its TTA generator did."""
        values = values or {}
        return cls(int(values.get("n", 0)), float(values.get("beta", 0.0)), int(values.get("seed", 0)),
                   tuple(tuple(int(x) for x in size) for size in values.get("sizes") or ()))

    def plain(self) -> "RunTta":
        """No augmented pass, at the entry's own size: `predict --no-tta`."""
        return RunTta(0, self.beta, self.seed, ())
