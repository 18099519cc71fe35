"""Reading a spec file's YAML and checking its values, one key at a time, with the key path for errors.

`spec/loader.py` says what a spec is; this module is the plumbing it checks raw YAML with: a strict YAML
loader, a `Checker` for one mapping, value kinds with limits, and the meta-device model check.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ledger.errors import SpecError, first_line
from ledger.training.packaged_weights import PACKAGED_WEIGHTS

# Files timm's load_state_dict reads: safetensors by its suffix, the rest with torch.load.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


# ---------------------------------------------------------------- YAML


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """The same key twice in one mapping: plain PyYAML keeps the last silently, so a spec that sets
    `lr` twice would train with whichever came second."""


class AliasBombError(yaml.constructor.ConstructorError):
    """Aliases that expand past the budget: a few lines of anchors (billion laughs) can stand for
    billions of values, which every walk of the spec (checks, fingerprint, JSON) would then visit."""


# Values a spec may hold once its aliases are expanded: real specs hold hundreds.
EXPANSION_BUDGET = 100_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values under `node` with every alias expanded; each node is counted once (memoised), so the
    count itself takes time linear in the file, however large the expansion."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        total = 1
    sizes[id(node)] = min(total, EXPANSION_BUDGET + 1)  # capped: the budget is all that matters
    return sizes[id(node)]


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load's loader (no tags, no Python objects) that refuses duplicate keys at any depth and
    aliases that expand past EXPANSION_BUDGET, and reads `3e-3` as a number, as YAML 1.2 and every
    fastai notebook do (YAML 1.1 needs `3.0e-3`)."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded_size(node, {}) > EXPANSION_BUDGET:
            raise AliasBombError(None, None, f"its aliases expand to more than {EXPANSION_BUDGET:,} values; "
                                 "write the values out instead", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line_of: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then a key of its own is an override, not a duplicate
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in first_line_of
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise DuplicateKeyError(
                    None, None, f"duplicate key {key!r} (first at line {first_line_of[key]})", key_node.start_mark
                )
            first_line_of[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_problem(error: yaml.YAMLError) -> str:
    """' at line N (problem)': where and what, in a few words."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    return f"{where} ({getattr(error, 'problem', None) or first_line(error)})"


def read_yaml(file: Path) -> Any:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{file}: spec file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{file}: is a folder, not a spec file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{file}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except (DuplicateKeyError, AliasBombError) as e:
        raise SpecError(f"{file}: line {e.problem_mark.line + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{file}: not valid YAML{yaml_problem(e)}") from None


# ---------------------------------------------------------------- one mapping


def spec_error(file: Path, keypath: str, message: str) -> SpecError:
    return SpecError(f"{file}: {keypath}: {message}", keypath=keypath, detail=message)


def resolve_path(file: Path, value: str) -> Path:
    """A path from a spec, relative to the spec file's folder (not the cwd: a spec means the same
    files wherever it is run from). Absolute, with `..` folded, but symlinks kept as written."""
    return Path(os.path.abspath(file.parent / Path(value).expanduser()))


class Checker:
    """Reads one mapping of the YAML, recording which keys were used, with the key path for errors."""

    def __init__(self, file: Path, keypath: str, mapping: Any):
        self.file, self.keypath = file, keypath
        if not isinstance(mapping, dict):
            self.fail(f"expected a mapping, got {type_name(mapping)}")
        self.mapping = mapping

    def key(self, key: str) -> str:
        return f"{self.keypath}.{key}" if self.keypath else key

    def fail(self, message: str, key: str | None = None) -> None:
        raise spec_error(self.file, self.key(key) if key is not None else (self.keypath or "(top level)"), message)

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
        return convert(self, key, self.mapping[key], kind, **limits)


def type_name(value: Any) -> str:
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


def convert(checker: Checker, key: str, value: Any, kind: str, **limits: Any) -> Any:
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
            fail(f"expected {expected}, got {type_name(value)} {value!r}")
        if kind == "float":
            value = float(value)
            if not math.isfinite(value):  # .nan passes every comparison below, .inf most of them
                fail(f"expected a finite number, got {value!r}")
    elif kind == "size":
        value = _size(value, fail)
    elif kind == "budget":  # "16GiB", "15.9GB", or a plain number of bytes
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            fail(f"expected a size such as 16GiB, got {type_name(value)} {value!r}")
        value = str(value)
    elif kind == "pretrained":
        value = _pretrained(checker.file, value, fail)
    elif kind == "label_col":  # one column, or a list of distinct ones
        columns = [value] if isinstance(value, str) else value
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns) \
                or len(set(columns)) != len(columns):
            fail(f"expected a column name or a list of distinct column names, got {value!r}")
        value = value if isinstance(value, str) else tuple(columns)
    elif kind == "accum":
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(f"expected 'auto' or a positive integer, got {value!r}")
    if "choices" in limits and value not in limits["choices"]:
        fail(f"expected one of {', '.join(limits['choices'])}, got {value!r}")
    if "min" in limits and value < limits["min"]:
        fail(f"must be >= {limits['min']}, got {value!r}")
    if "above" in limits and value <= limits["above"]:
        fail(f"must be > {limits['above']}, got {value!r}")
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


def _pretrained(file: Path, value: Any, fail) -> bool | Path | str:
    """true (timm's hub), false, a packaged weights name (kept as the name), or a weights file,
    which must exist now: a typo should fail at `ledger check`, not hours into a run."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value:
        fail(f"expected true, false, a weights file or one of {', '.join(PACKAGED_WEIGHTS)}; got {type_name(value)} {value!r}")
    if value in PACKAGED_WEIGHTS:
        return value
    path = resolve_path(file, value)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        fail(f"expected a weights file ({', '.join(WEIGHT_SUFFIXES)}) or one of {', '.join(PACKAGED_WEIGHTS)}, got {value!r}")
    if not path.is_file():
        fail(f"weights file not found: {path}")
    return path


# ---------------------------------------------------------------- models


def check_model(file: Path, index: int, model) -> None:
    """The arch exists, takes the model_kwargs, and accepts the size: checked on the meta device,
    so even a large model costs no memory and no time."""
    import timm
    import torch

    where = f"models[{index}]"
    if not timm.is_model(model.arch):
        hint = difflib.get_close_matches(model.arch, timm.list_models(), n=3)
        extra = f" (close: {', '.join(hint)})" if hint else ""
        raise spec_error(file, f"{where}.arch", f"unknown timm architecture {model.arch!r}{extra}")
    from ledger.training.layers import timm_kwargs

    try:
        with torch.device("meta"):
            net = timm.create_model(model.arch, pretrained=False, num_classes=2, **timm_kwargs(model.model_kwargs))
    except TypeError as e:
        raise spec_error(file, f"{where}.model_kwargs", f"{model.arch} does not take them ({e})") from None
    except Exception as e:  # noqa: BLE001 - any construction failure is the user's kwargs
        raise spec_error(file, f"{where}.model_kwargs", f"{model.arch} cannot be built with them ({first_line(e)})") from None
    net.eval()  # BatchNorm in training mode refuses a single image at a 1x1 feature map
    try:
        with torch.no_grad():
            net(torch.empty(1, 3, *model.size, device="meta"))
    except NotImplementedError:
        return  # an op without a meta kernel: nothing learned about the size
    except Exception as e:  # noqa: BLE001 - fixed-size models assert on the input shape
        h, w = model.size
        if model.model_kwargs and not _runs_at_default_size(net):  # the kwargs built a broken model
            raise spec_error(file, f"{where}.model_kwargs", f"{model.arch} built with them fails on any input, "
                             f"its default size too ({first_line(e)})") from None
        raise spec_error(
            file,
            f"{where}.size",
            f"{model.arch} cannot take {h}x{w} images ({first_line(e)}); "
            f"pick the size it was built for or set model_kwargs img_size",
        ) from None


def _runs_at_default_size(net) -> bool:
    import torch

    size = tuple((getattr(net, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))[1:]
    try:
        with torch.no_grad():
            net(torch.empty(1, 3, *size, device="meta"))
    except NotImplementedError:
        return True
    except Exception:  # noqa: BLE001 - any failure: broken at every size
        return False
    return True


def tta_sizes(c: Checker) -> tuple | None:
    """tta.size: one item or a list of them; an item is pixels (288, or [288, 320] as [height,
    width] inside a list of sizes) or a positive factor of the entry's size (1.25)."""
    raw = c.mapping.get("size")
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        c.fail("expected a size, a factor or a non-empty list of them", "size")
    sizes = []
    for item in items:
        if isinstance(item, float) and not isinstance(item, bool) and 0 < item <= 16:
            sizes.append(item)
        elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
            if item < 8:  # `size: 1` is one pixel: surely a factor written without its decimal point
                c.fail(f"{item} pixels is too small; write a factor of the entry's size as {item}.0", "size")
            sizes.append(item)
        elif (isinstance(item, list) and len(item) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item)):
            sizes.append((item[0], item[1]))
        else:
            c.fail(f"expected pixels (288 or [height, width]) or a factor in (0, 16] (1.25), got {item!r}", "size")
    return tuple(sizes)


def check_group_column(file: Path, data, split) -> None:
    """split.group must name a column of the label CSV (checked when the CSV is there to read)."""
    if split.group is None:
        return
    if data.labels == "folders":
        raise spec_error(file, "split.group", "needs a label CSV (data.labels: train.csv): class folders have no columns")
    csv = Path(data.root) / data.labels
    if csv.is_file():
        import pandas as pd

        columns = list(pd.read_csv(csv, nrows=0, dtype=str).columns)
        if split.group not in columns:
            raise spec_error(file, "split.group", f"{csv} has no column {split.group!r} (columns: {', '.join(columns)})")
