"""A spec key in one place: its default, its check and what it means, as the metadata of a dataclass
field of `spec/objects.py`. The loader checks a key by it (`check_of`), and `spec/schema.py` writes
the JSON Schema and docs/spec.md from it, so the three cannot disagree about a key."""

from __future__ import annotations

import dataclasses
from typing import Any

REQUIRED = object()  # the default of a key a spec must give


def setting(default: Any, kind: str, doc: str, *, shown: str | None = None, section: type | None = None,
            **limits: Any) -> Any:
    """A dataclass field for one spec key.

    kind: how `Checker.get` reads the value ("int", "float?", "size", ...; `spec/checks.py`), or how
    the loader reads it by hand ("augment", "tta_sizes", "columns", "classes", "name", "models",
    "section"); limits: what `Checker.get` enforces (min, max, above, below, choices); doc: one line
    for the reference; shown: the default as the reference states it, where the field's own default
    is not what a spec gets (a model entry inherits `train:`); section: the dataclass of a section.
    """
    metadata = {"kind": kind, "limits": limits, "doc": doc, "shown": shown, "section": section}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def key_field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def check_of(cls: type, name: str) -> tuple[str, dict[str, Any]]:
    """(kind, limits) of a key: the arguments `Checker.get` takes after the key and its default."""
    metadata = key_field(cls, name).metadata
    return metadata["kind"], metadata["limits"]


def spec_keys(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` a spec writes (every field that carries a key's metadata)."""
    return [f for f in dataclasses.fields(cls) if "doc" in f.metadata]


def read(checker: Any, cls: type, name: str, default: Any = ...) -> Any:
    """The value of key `name` of a `Checker`'s mapping, checked as its field says; `default`: what an
    absent key gives (`...`: the key is required)."""
    kind, limits = check_of(cls, name)
    return checker.get(name, kind, default, **limits)
