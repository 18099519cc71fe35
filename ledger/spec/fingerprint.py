"""A run's fingerprint: a hash of everything that shapes its predictions.

Two runs with the same fingerprint are draws of the same recipe (they differ only by split and
seed), so top-up counts them, resume matches them, and `ensemble` bags only runs whose fingerprint
an entry of the current spec has. What does not change predictions stays out: the run count, the
ensemble weight, the accumulation factor (exact by construction) and `save_weights`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

from ledger.spec.loader import load_spec
from ledger.spec.objects import DataSpec, ModelSpec, Spec, _plain

# ModelSpec fields that do not change what a run predicts.
_NOT_PREDICTIVE = {"name", "runs", "weight", "accum", "save_weights"}
# Settings added after runs were on record, with the value that means "off": left out of the hash
# while off, so runs trained before a setting existed keep their fingerprints (and are not retrained).
_ADDED_OFF = {"model": {"clip_grad": None, "ema": None, "loss": "auto"}, "augment": {"erasing": 0.0}, "split": {"group": None},
              "tta": {"size": None}}


def _without_added_off(section: str, fields: dict) -> dict:
    off = _ADDED_OFF[section]
    return {k: v for k, v in fields.items() if not (k in off and v == off[k])}


@functools.lru_cache(maxsize=16)
def _data_digest_cached(data: DataSpec, stamp: tuple) -> str:
    digest = hashlib.sha256(str(Path(data.root).resolve()).encode())
    root = Path(data.root)
    if data.labels == "folders":
        train_dir = root / data.train_dir
        listing = sorted(str(p.relative_to(train_dir)) for p in train_dir.rglob("*")
                         if p.is_file() and not any(part.startswith(".") for part in p.relative_to(train_dir).parts))
        digest.update("\n".join(listing).encode())
    else:
        digest.update((root / data.labels).read_bytes())
    return digest.hexdigest()


def data_digest(data: DataSpec) -> str:
    """Data root and label source: the CSV's bytes, or the listing of the class folders."""
    source = Path(data.root) / (data.train_dir if data.labels == "folders" else data.labels)
    try:
        stat = source.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = ()
    try:
        return _data_digest_cached(data, stamp)
    except OSError:
        return "missing"  # the data loader gives the user the clear error


def fingerprint_fields(spec: Spec, model: ModelSpec) -> dict:
    fields = {k: v for k, v in _plain(dataclasses.asdict(model)).items() if k not in _NOT_PREDICTIVE}
    split, tta = _plain(dataclasses.asdict(spec.split)), _plain(dataclasses.asdict(spec.tta))
    if fields.get("augment") is not None:
        fields["augment"] = _without_added_off("augment", fields["augment"])
    fields = _without_added_off("model", fields) | {"split": _without_added_off("split", split),
                                                   "tta": _without_added_off("tta", tta), "data": data_digest(spec.data)}
    if spec.task != "single_label":  # the same columns read as another task are another recipe
        fields["task"] = dict(task=spec.task, label_col=spec.data.label_col)
    if spec.pseudo is not None:

        # The teacher's recipe, not its file's path: a changed teacher retrains its students.
        fields["pseudo"] = dict(threshold=spec.pseudo.threshold, weight=spec.pseudo.weight,
                                teacher=teacher_fingerprints(spec.pseudo))
    return fields


def run_fingerprint(spec: Spec, model: ModelSpec) -> str:
    """12 hex digits: short enough to read in a table, long enough never to collide in a ledger."""
    text = json.dumps(fingerprint_fields(spec, model), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def teacher_fingerprints(pseudo) -> list[str]:
    """The teacher's current entries' fingerprints: a changed teacher changes its students'."""
    taught = load_spec(pseudo.teacher, check_models=False)
    return sorted(run_fingerprint(taught, model) for model in taught.models)
