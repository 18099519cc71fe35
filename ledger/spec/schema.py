"""The JSON Schema (draft 2020-12) of a spec, written from the fields of `spec/objects.py` and their
metadata (`spec/keys.py`): the keys, types, defaults, enums and ranges the loader checks by.

Editors (yaml-language-server, PyCharm) validate a spec as it is typed against the committed copy,
docs/spec.schema.json. The schema refuses only what `ledger check` refuses; `check` stays the full
judge: paths, timm architectures, the sample submission, and rules that tie keys together (accum at
most batch_size, min_zoom at most max_zoom) are beyond a schema, and so is `2.0` where an integer is
due (JSON Schema's integer is any number without a fraction). Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ledger.probe.targets import TARGETS
from ledger.spec.checks import WEIGHT_SUFFIXES
from ledger.spec.keys import spec_keys
from ledger.spec.loader import HOME_ENTRIES
from ledger.spec.objects import AugmentSpec, ModelSpec, Spec, TrainSpec
from ledger.training.packaged_weights import PACKAGED_WEIGHTS
from ledger.units import UNIT_NAMES

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE = "docs/spec.schema.json"  # the committed copy, relative to the repository root

# What a name may be: it names a folder (runs/<name>) or files, so no '/', no leading '.'.
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"


def _any_case(text: str) -> str:
    """A regex matching `text` in any case, '-' or '_' for '-' (JSON Schema's regexes take no flags),
    as the loader reads card names and file suffixes."""
    def one(ch: str) -> str:
        if ch.isalpha():
            return f"[{ch.lower()}{ch.upper()}]"
        return {"-": "[-_]", ".": "\\."}.get(ch, ch)

    return "".join(one(ch) for ch in text)


_SIZE = {"anyOf": [{"type": "integer", "minimum": 1},
                   {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}]}
_BUDGET = {"anyOf": [
    {"enum": list(TARGETS)},  # what an editor offers; the pattern below also takes T4, A100_80, ...
    {"type": "string", "pattern": "^\\s*(" + "|".join(_any_case(name) for name in TARGETS) + ")\\s*$"},
    # A memory size as ledger.units.parse_size reads it: a number and an optional unit, any case.
    {"type": "string", "pattern": "^\\s*([0-9]+(\\.[0-9]*)?|\\.[0-9]+)\\s*(" + "|".join(_any_case(u) for u in UNIT_NAMES)
                                  + ")?\\s*$"},
    {"type": "integer", "minimum": 0},
]}
_PRETRAINED = {"anyOf": [
    {"type": "boolean"},
    {"enum": list(PACKAGED_WEIGHTS)},
    {"type": "string", "pattern": "(" + "|".join(_any_case(s) for s in WEIGHT_SUFFIXES) + ")$"},
]}
_TTA_ITEM = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "number", "exclusiveMinimum": 0, "maximum": 16}]}
_TTA_SIZES = {"anyOf": [
    _TTA_ITEM,
    {"type": "array", "minItems": 1, "items": {"anyOf": [_TTA_ITEM, _SIZE["anyOf"][1]]}},
]}
_NAME = {"type": "string", "pattern": NAME_PATTERN,
         "not": {"anyOf": [{"enum": sorted(HOME_ENTRIES)}, {"type": "string", "pattern": "\\.lock$"}]}}
_PLAIN = {"int": {"type": "integer"}, "float": {"type": "number"}, "bool": {"type": "boolean"},
          "str": {"type": "string", "minLength": 1}, "dict": {"type": "object"},
          "list": {"type": "array", "minItems": 1}}
# Kinds the loader reads with more than one shape; each builds its schema when asked (models and
# sections hold the schemas of their own keys).
_COMPOUND = {
    "size": lambda _: _SIZE, "budget": lambda _: _BUDGET, "pretrained": lambda _: _PRETRAINED,
    "tta_sizes": lambda _: _TTA_SIZES, "name": lambda _: _NAME,
    "accum": lambda _: {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}]},
    "columns": lambda _: {"type": "array", "minItems": 1, "uniqueItems": True,
                          "items": {"type": "string", "minLength": 1}},
    "label_col": lambda _: {"anyOf": [{"type": "string", "minLength": 1},
                                      {"type": "array", "minItems": 1, "uniqueItems": True,
                                       "items": {"type": "string", "minLength": 1}}]},
    "classes": lambda _: {"type": "array", "minItems": 1, "uniqueItems": True,
                          "items": {"type": ["string", "integer"]}},
    "augment": lambda _: {"anyOf": [{"type": "boolean"}, _section(AugmentSpec)]},
    "models": lambda _: {"type": "array", "minItems": 1, "items": _model_entry()},
    "section": lambda section: _section(section),
}
_LIMITS = {"min": "minimum", "max": "maximum", "above": "exclusiveMinimum", "below": "exclusiveMaximum"}


def _kind_schema(kind: str, limits: dict[str, Any], section: type | None) -> dict:
    """The schema of one value of a `Checker.get` kind (or of a kind the loader reads by hand)."""
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if kind in _PLAIN:
        schema = dict(_PLAIN[kind])
    else:
        schema = json.loads(json.dumps(_COMPOUND[kind](section)))  # a copy: shared pieces stay as they are
    if "choices" in limits:
        schema["enum"] = list(limits["choices"])
    schema.update({_LIMITS[name]: value for name, value in limits.items() if name in _LIMITS})
    if nullable:
        if isinstance(schema.get("type"), str):
            schema["type"] = [schema["type"], "null"]
            if "enum" in schema:
                schema["enum"].append(None)
        else:
            schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def json_default(field: dataclasses.Field) -> tuple[bool, Any]:
    """(whether the key has a default a spec gets as it is, that default as JSON)."""
    if field.metadata.get("shown") is not None or field.default is dataclasses.MISSING and \
            field.default_factory is dataclasses.MISSING:
        return False, None
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if dataclasses.is_dataclass(value):
        return False, None  # a section: its keys have their own defaults
    if isinstance(value, tuple):
        value = list(value)
    return True, str(value) if isinstance(value, Path) else value


def _property(field: dataclasses.Field, inherited: bool = False) -> dict:
    meta = field.metadata
    schema = {"description": meta["doc"], **_kind_schema(meta["kind"], meta["limits"], meta["section"])}
    has_default, default = json_default(field)
    if has_default and not inherited:
        schema["default"] = default
    return schema


def _required(cls: type) -> list[str]:
    return [f.name for f in spec_keys(cls) if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING]


def _section(cls: type) -> dict:
    schema = {"type": "object", "additionalProperties": False,
              "properties": {f.name: _property(f) for f in spec_keys(cls)}}
    if required := _required(cls):
        schema["required"] = required
    if cls.__name__ == "SplitSpec":
        schema["allOf"] = _SPLIT_RULES
    return schema


# The rules of split: that tie two keys together, as the loader states them (and where it puts the fault).
_SPLIT_RULES = [
    {"if": {"required": ["valid_pct"], "properties": {"valid_pct": {"type": "number"}}},
     "then": {"properties": {"folds": {"type": "null"}}}},  # each fold holds out 1/folds
    {"if": {"required": ["group"], "properties": {"group": {"type": "string"}}},
     "then": {"required": ["folds"], "properties": {"folds": {"type": "integer"}}}},
]


def _model_entry() -> dict:
    """A model entry: its own keys, and every train setting, which it inherits unless it sets it."""
    train = {f.name for f in spec_keys(TrainSpec)}
    properties = {f.name: _property(f, inherited=f.name in train) for f in spec_keys(ModelSpec)}
    for name in train:
        properties[name]["description"] += " Default: train's."
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": _required(ModelSpec)}


def spec_schema() -> dict:
    """The JSON Schema of a spec file."""
    return {"$schema": DIALECT, "title": "ledger experiment spec",
            "description": "An experiment spec of ledger (`ledger check SPEC` is the full check; "
                           "the reference is docs/spec.md).",
            **_section(Spec)}


def schema_text() -> str:
    """The schema as `ledger schema` prints it and docs/spec.schema.json holds it."""
    return json.dumps(spec_schema(), indent=2, ensure_ascii=False) + "\n"
