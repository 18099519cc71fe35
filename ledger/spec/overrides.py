"""Command-line overrides of a spec: `--set train.lr=0.003 --set models.vit.epochs=5`.

Each item changes the raw YAML mapping before validation, so an overridden value is checked exactly
as if the file had said it. Values are YAML (`false`, `0.003`, `[1, 2]`, `{max_rotate: 0}`);
`models.NAME.key` addresses a model entry by its name, since list positions are easy to get wrong.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from ledger.errors import SpecError
from ledger.spec.checks import AliasBombError, DuplicateKeyError, UniqueKeyLoader, type_name, yaml_problem


@dataclass(frozen=True)
class Override:
    item: str  # as typed, for error messages
    keys: tuple[str, ...]  # "models.vit.epochs" -> ("models", "vit", "epochs")
    value: Any


def parse_override(item: str) -> Override:
    key, sep, text = item.partition("=")
    keys = tuple(part.strip() for part in key.split("."))
    if not sep or not all(keys):
        raise SpecError(f"--set {item}: expected KEY.PATH=VALUE, e.g. --set train.lr=0.003 or --set models.vit.epochs=5")
    try:
        value = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except (DuplicateKeyError, AliasBombError) as e:
        raise SpecError(f"--set {item}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"--set {item}: the value is not valid YAML{yaml_problem(e)}") from None
    return Override(item=item, keys=keys, value=value)


def apply_overrides(raw: Any, items: list[str] | tuple[str, ...]) -> tuple[Any, dict[str, str]]:
    """A changed copy of `raw` and, for each key path set (as the validator spells it, e.g.
    `models[1].epochs`), the item that set it: later items win, as they would on a command line."""
    if not items or not isinstance(raw, dict):
        return raw, {}  # not a mapping: validation says so, naming the file
    raw = copy.deepcopy(raw)
    origins: dict[str, str] = {}
    for item in items:
        override = parse_override(item)
        keypath = _set(raw, override)
        origins.pop(keypath, None)  # re-insert, so the latest item is the last one blamed
        origins[keypath] = override.item
    return raw, origins


def _set(raw: dict, override: Override) -> str:
    node, keys, where = raw, list(override.keys), []
    if keys[0] == "models" and len(keys) > 1:
        index = _model_index(raw.get("models"), keys[1], override.item)
        where = [f"models[{index}]"]
        if len(keys) == 2:  # models.NAME=VALUE replaces the whole entry
            raw["models"][index] = override.value
            return where[0]
        node, keys = raw["models"][index], keys[2:]
    for key in keys[:-1]:
        child = node.get(key)
        if child is None or child is True:  # absent, or `augment: true`: a mapping of its defaults
            child = node[key] = {}
        elif not isinstance(child, dict):
            place = ".".join([*where, key])
            raise SpecError(f"--set {override.item}: {place} is {type_name(child)} {child!r}, not a mapping")
        node = child
        where.append(key)
    node[keys[-1]] = override.value
    return ".".join([*where, keys[-1]])


def _model_index(models: Any, name: str, item: str) -> int:
    entries = models if isinstance(models, list) else []
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in entries]
    if name not in names:
        known = ", ".join(str(n) for n in names if n is not None) or "no named models"
        raise SpecError(f"--set {item}: no model named {name!r} (the spec has: {known})")
    return names.index(name)


def blame(keypath: str | None, origins: dict[str, str]) -> str | None:
    """The `--set` item behind an error at `keypath`: one that set that key, a key inside it (a
    mapping that an override replaced), or a key below it (an unknown key the override made)."""
    if not keypath:
        return None
    for path, item in reversed(origins.items()):
        if keypath == path or _inside(keypath, path) or _inside(path, keypath):
            return item
    return None


def _inside(inner: str, outer: str) -> bool:
    return inner.startswith(outer + ".") or inner.startswith(outer + "[")
