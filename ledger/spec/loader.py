"""Experiment specs: YAML -> frozen, validated objects.

Every error names the spec file and the key path (`models[2].arch`) in one line (or the `--set`
item that caused it). Model entries inherit the `train` and `augment` settings they do not set
themselves, key by key, so each `ModelSpec` is complete on its own and is what gets saved beside a
run. Relative paths (data.root, weights files) are relative to the spec file's folder and are
stored absolute. The objects are in `spec/objects.py`, the checking plumbing in `spec/checks.py`,
`--set` overrides in `spec/overrides.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ledger.bag.metrics import DEFAULT_METRIC, NAMES as METRIC_NAMES, REGRESSION, SINGLE_LABEL
from ledger.bag.task_metrics import TASK_METRICS
from ledger.errors import SpecError
from ledger.spec.overrides import apply_overrides, blame
from ledger.spec.pseudo_section import check_pseudo_models, parse_pseudo
from ledger.spec.checks import (Checker, check_group_column, check_model, read_yaml, resolve_path, spec_error,
                                tta_sizes)
from ledger.spec.keys import read, spec_keys
from ledger.spec.objects import (AugmentSpec, DataSpec, ModelSpec, ProbeSpec, Spec,  # noqa: F401  (re-exported)
                                  SplitSpec, TrainSpec, TtaSpec)

# ---------------------------------------------------------------- sections

def _keys(cls: type) -> set[str]:
    return {f.name for f in spec_keys(cls)}


_TRAIN_KEYS = _keys(TrainSpec)
_AUGMENT_KEYS = _keys(AugmentSpec)
_MODEL_KEYS = _keys(ModelSpec) - _TRAIN_KEYS  # what only an entry has


def _train_fields(c: Checker, defaults: TrainSpec) -> dict:
    """The train settings of a `train:` section or of a model entry that overrides them, each
    checked as its field's metadata says."""
    return {f.name: read(c, TrainSpec, f.name, getattr(defaults, f.name)) for f in spec_keys(TrainSpec)}


def _augment(c: Checker, base: AugmentSpec | None) -> AugmentSpec | None:
    """`augment:` of the top level or of a model entry. Absent: `base` as it is. false: None.
    true: `base`, or the defaults when `base` is off. A mapping: those keys changed, the others
    kept, as model entries inherit `train` settings."""
    if "augment" not in c.mapping:
        return base
    value = c.mapping["augment"]
    if value is False:
        return None
    start = base or AugmentSpec()
    if value is True:
        return start
    if not isinstance(value, dict):
        c.fail(f"expected true, false or a mapping of {', '.join(sorted(_AUGMENT_KEYS))}; got {value!r}", "augment")
    a = Checker(c.file, c.key("augment"), value)
    a.reject_unknown(_AUGMENT_KEYS)
    augment = AugmentSpec(**{f.name: read(a, AugmentSpec, f.name, getattr(start, f.name))
                             for f in spec_keys(AugmentSpec)})
    if augment.min_zoom > augment.max_zoom:
        a.fail(f"must be <= max_zoom ({augment.max_zoom}), got {augment.min_zoom}", "min_zoom")
    return augment


def _check_data_root(file: Path, data: DataSpec, given: str) -> None:
    """The data root exists (what `ledger check` promises). `given`: the root as the spec wrote it."""
    if not data.root.is_dir():
        relative = "" if Path(given).expanduser().is_absolute() else f" ({given} from the spec's folder)"
        raise spec_error(file, "data.root", f"no such folder: {data.root}{relative}")


def _parse_data(file: Path, raw: Any) -> DataSpec:
    c = Checker(file, "data", raw)
    c.reject_unknown(_keys(DataSpec))
    root = resolve_path(file, read(c, DataSpec, "root"))
    labels = read(c, DataSpec, "labels", "folders")
    extra = c.get("extra_targets", "list", [])
    if not all(isinstance(name, str) and name for name in extra):
        c.fail(f"expected a list of column names, got {extra!r}", "extra_targets")
    if extra and labels == "folders":
        c.fail("needs a label CSV (data.labels: train.csv): class folders hold one target only", "extra_targets")
    label_col = read(c, DataSpec, "label_col", "label")
    label_cols = (label_col,) if isinstance(label_col, str) else label_col
    if set(label_cols) & set(extra) or len(set(extra)) != len(extra):
        c.fail(f"each column once, and not label_col ({label_col!r}); got {extra!r}", "extra_targets")
    return DataSpec(
        root=root,
        labels=labels,
        extra_targets=tuple(extra),
        id_col=read(c, DataSpec, "id_col", "image_id"),
        label_col=label_col,
        train_dir=read(c, DataSpec, "train_dir", "train_images"),
        test_dir=read(c, DataSpec, "test_dir", "test_images"),
        sample_submission=read(c, DataSpec, "sample_submission", "sample_submission.csv"),
    )


def _parse_split(file: Path, raw: Any) -> SplitSpec:
    c = Checker(file, "split", raw)
    c.reject_unknown(_keys(SplitSpec))
    # Absent keys read as null here: the defaults depend on folds.
    folds, valid_pct, seed, group = (read(c, SplitSpec, key, None) for key in ("folds", "valid_pct", "seed", "group"))
    if folds is None:
        if group is not None:
            c.fail("needs split.folds (groups are kept whole by K-fold splits)", "group")
        return SplitSpec(valid_pct=0.2 if valid_pct is None else valid_pct, seed=seed)
    if valid_pct is not None:
        c.fail(f"cannot be used with split.valid_pct {valid_pct} (each fold holds out 1/{folds} of the "
               f"images); drop valid_pct or set it to null", "folds")
    # Folds must be the same partition in every run, so a null seed means 0, not a fresh one.
    return SplitSpec(valid_pct=1 / folds, seed=0 if seed is None else seed, folds=folds, group=group)


def _parse_model(c: Checker, train: TrainSpec, augment: AugmentSpec | None, split: SplitSpec) -> ModelSpec:
    c.reject_unknown(_MODEL_KEYS | _TRAIN_KEYS)
    model = ModelSpec(
        name=c.get("name", "str"),
        arch=read(c, ModelSpec, "arch"),
        size=read(c, ModelSpec, "size"),
        resize=read(c, ModelSpec, "resize", "squish"),
        presize=read(c, ModelSpec, "presize", None),
        # Bounded (MAX_RUNS), so that `check` never accepts a plan that would take hours to list.
        runs=read(c, ModelSpec, "runs", split.folds or 1),  # with folds: one run per fold
        weight=read(c, ModelSpec, "weight", 1.0),
        accum=read(c, ModelSpec, "accum", "auto"),
        model_kwargs=read(c, ModelSpec, "model_kwargs", {}),
        augment=_augment(c, augment),
        **_train_fields(c, train),
    )
    if isinstance(model.accum, int) and model.accum > model.batch_size:
        c.fail(f"must be <= batch_size ({model.batch_size}), got {model.accum}", "accum")
    _check_name(c, "names files")
    return model


# What a ledger home holds besides experiment folders: an experiment must not be named as one.
HOME_ENTRIES = {"ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.db-journal", "cache", "submissions"}


def _check_name(top: Checker, what: str = "names folders") -> str:
    """A name that becomes a file or folder name: an experiment's (runs/<name>) or a model
    entry's (lr-find plots, --set models.<name>.key)."""
    name = top.get("name", "str")
    if not all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name):
        top.fail(f"use letters, digits, '-', '_' and '.' only (it {what}), got {name!r}", "name")
    if name.startswith("."):  # '.', '..' and hidden folders: runs/<name> must be a folder of its own
        top.fail(f"must not start with '.' (it {what}), got {name!r}", "name")
    if name in HOME_ENTRIES or name.endswith(".lock"):
        top.fail(f"{name!r} is a file of the ledger home; choose another name", "name")
    return name


def parse_spec(
    raw: Any, file: Path, check_models: bool = True, overrides: list[str] | tuple[str, ...] = (), check_data: bool = False
) -> Spec:
    """Raw YAML -> Spec. `overrides` are `--set` items (`train.lr=0.003`, `models.vit.epochs=5`),
    applied to `raw` first and then validated like the file; an error they cause names the item.
    `check_data`: the data root must exist (what `ledger check` promises)."""
    raw, origins = apply_overrides(raw, overrides)
    try:
        return _parse(raw, file, check_models, check_data)
    except SpecError as error:
        item = blame(error.keypath, origins)
        if item is None:
            raise
        raise SpecError(f"--set {item}: {error.keypath}: {error.detail}", error.keypath, error.detail) from None


def _parse(raw: Any, file: Path, check_models: bool, check_data: bool) -> Spec:
    top = Checker(file, "", raw)
    top.reject_unknown(_keys(Spec))
    name = _check_name(top)
    task = read(top, Spec, "task", SINGLE_LABEL)
    metric = read(top, Spec, "metric", DEFAULT_METRIC[task])
    names = METRIC_NAMES if task == SINGLE_LABEL else tuple(TASK_METRICS[task])
    if metric not in names:
        top.fail(f"{metric!r} is not a {task} metric; choices: {', '.join(names)}", "metric")
    order = top.get("class_order", "list?", None)  # checked against the classes with the data (ledger check)
    if order is not None and task != SINGLE_LABEL:
        top.fail(f"orders the classes of a single_label task, not of {task}", "class_order")
    if order is not None and (len({str(c) for c in order}) != len(order) or not all(
            isinstance(c, (str, int)) and not isinstance(c, bool) for c in order)):
        top.fail(f"expected a list of distinct class names, got {order!r}", "class_order")
    # The data root is checked last: a typo in a key is the more useful error to see first.
    data = dataclasses.replace(_parse_data(file, top.get("data", "dict")), task=task)
    _check_task_data(file, task, data)
    split = _parse_split(file, top.get("split", "dict", {}))
    check_group_column(file, data, split)
    pseudo = parse_pseudo(file, top.get("pseudo", "dict?", None), data, split,
                          lambda teacher: load_spec(teacher, check_models=False))

    train_c = Checker(file, "train", top.get("train", "dict", {}))
    train_c.reject_unknown(_TRAIN_KEYS)
    train = TrainSpec(**_train_fields(train_c, TrainSpec()))
    augment = _augment(top, AugmentSpec())

    tta_c = Checker(file, "tta", top.get("tta", "dict", {}))
    tta_c.reject_unknown(_keys(TtaSpec))
    tta = TtaSpec(n=read(tta_c, TtaSpec, "n", 4), beta=read(tta_c, TtaSpec, "beta", 0.25), size=tta_sizes(tta_c))

    probe_c = Checker(file, "probe", top.get("probe", "dict", {}))
    probe_c.reject_unknown(_keys(ProbeSpec))
    probe = ProbeSpec(**{f.name: read(probe_c, ProbeSpec, f.name, f.default) for f in spec_keys(ProbeSpec)})
    try:
        probe.budget_bytes
    except ValueError as e:
        probe_c.fail(str(e), "budget")

    raw_models = top.get("models", "list")
    models = tuple(
        _parse_model(Checker(file, f"models[{i}]", m), train, augment, split) for i, m in enumerate(raw_models)
    )
    seen: dict[str, int] = {}
    for i, model in enumerate(models):
        if model.name in seen:
            raise spec_error(file, f"models[{i}].name", f"duplicate model name {model.name!r} (also models[{seen[model.name]}])")
        seen[model.name] = i
    for i, model in enumerate(models):
        if data.extra_targets and (model.mixup or model.cutmix):
            key = "mixup" if model.mixup else "cutmix"
            raise spec_error(file, f"models[{i}].{key}", "mixing is not supported with data.extra_targets")
        _check_task_model(file, i, task, model)
    if pseudo is not None and task != SINGLE_LABEL:
        raise spec_error(file, "pseudo", f"pseudo-labels are class labels: not with task {task}")
    check_pseudo_models(file, pseudo, models)
    _check_tta_pixels(file, tta, models)
    if check_data:
        _check_data_root(file, data, top.mapping["data"]["root"])
    if check_models:
        for i, model in enumerate(models):
            check_model(file, i, model)
    return Spec(name=name, data=data, models=models, split=split, train=train, tta=tta, probe=probe,
                augment=augment, task=task, metric=metric, class_order=None if order is None else tuple(str(c) for c in order),
                pseudo=pseudo, path=file)


def _check_task_data(file: Path, task: str, data: DataSpec) -> None:
    """What the task's labels need from the data section."""
    if task == SINGLE_LABEL:
        if not isinstance(data.label_col, str):
            raise spec_error(file, "data.label_col", "one column of class names with task single_label; a list "
                             "is for multi_label (a 0/1 column per tag) or regression")
        return
    if data.labels == "folders":
        raise spec_error(file, "data.labels", f"task {task} reads its labels from a label CSV (e.g. train.csv), "
                         f"not class folders")
    if data.extra_targets:
        raise spec_error(file, "data.extra_targets", f"extra targets are class columns of a single_label task, "
                         f"not of {task}")


def _check_task_model(file: Path, index: int, task: str, model: ModelSpec) -> None:
    """Settings that cannot apply to the task, refused in one line."""
    where = f"models[{index}]"
    if model.loss != "auto" and task != REGRESSION:
        raise spec_error(file, f"{where}.loss", f"{model.loss} is a regression loss; task {task} has its own "
                         f"(leave loss: auto)")
    if task == REGRESSION and model.label_smoothing:
        raise spec_error(file, f"{where}.label_smoothing", "smooths class labels; a regression target has none")
    if task == REGRESSION and model.cutmix:
        raise spec_error(file, f"{where}.cutmix", "pastes one image's patch into another; a number such as a size "
                         "or a grade does not mix by area (mixup mixes targets linearly: use it instead)")


MIN_TTA_PIXELS = 8  # below this a TTA pass sees a smudge, and some models cannot run at all


def _check_tta_pixels(file: Path, tta: TtaSpec, models) -> None:
    """A tta.size factor times an entry's size (or pixels given) leaves images of a few pixels."""
    for item in tta.size or ():
        for model in models:
            pixels = (min(item) if isinstance(item, tuple) else item if isinstance(item, int)
                      else min(model.size) * item)
            if pixels < MIN_TTA_PIXELS:
                raise spec_error(file, "tta.size", f"{item!r} leaves {model.name}'s {model.size_label} images "
                                 f"{pixels:g} pixels wide; at least {MIN_TTA_PIXELS} are needed")


def load_spec(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_models: bool = True, check_data: bool = False
) -> Spec:
    """Read, override (`--set` items, see `parse_spec`) and validate a spec file. Relative paths in
    it (data.root, pretrained weights) are relative to the file's folder."""
    file = Path(path)
    return parse_spec(read_yaml(file), file, check_models=check_models, overrides=overrides, check_data=check_data)


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
