"""`ledger export`: a bag as an offline inference bundle, for Kaggle's code competitions (a notebook
with no network predicts a hidden test set).

The bag is the one `ledger ensemble` makes: the same selection and weights, asked of
`submission.make_submission` on a dry run. The bundle folder holds:
  predict.py                      `python predict.py TEST_DIR SAMPLE_SUBMISSION OUT.csv`
  ledger_bundle/                  ledger's inference code, generated from its modules (bundle_code.py)
  bag.json                        the experiment, its runs in bag order, the classes
  runs/<run_id>/model.safetensors the run's weights
  runs/<run_id>/entry.json        its resolved entry: model settings, TTA n, beta and seed, classes,
                                  head sizes, entry name and normalised weight
  manifest.json                   sha256 and size of every other file; torch and timm that trained it
It is written under a temporary name next to the folder and renamed when complete, so a bundle
folder is always whole, and an existing one is replaced only with `force`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

import ledger
from ledger.runs import artifacts
from ledger.runs.checksums import recorded, verify
from ledger.export.runtime import BAG, ENTRY, MANIFEST, RUNS, WEIGHTS, RunEntry, sha256_file
from ledger.bag.submission import BagMember, BagOptions, bag_members
from ledger.durable import replace_folder
from ledger.export.bundle_code import write_code
from ledger.errors import LedgerError, first_line
from ledger.runs.outputs import BUNDLE, guard_output, reserved
from ledger.spec.objects import KEYED_DRAWS

FORMAT = 1  # of the manifest, for bundles read by a later ledger


@dataclass(frozen=True)
class Bundle:
    folder: Path
    weights: dict[str, float]  # run id -> normalised weight, in bag order
    size_bytes: int  # every file of the bundle
    files: int
    versions: dict[str, str]  # torch and timm that trained the bag
    notes: list[str]  # what the user should know: runs whose TTA cannot be repeated, versions


def check_weights(members: list[BagMember]) -> None:
    """Refuses, naming the runs and the setting, when a bagged run kept no weights."""
    without = [m for m in members if not (m.folder / artifacts.WEIGHTS).is_file()]
    if without:
        entries = sorted({m.entry for m in without})
        raise LedgerError(f"run(s) {', '.join(m.row.id for m in without)} kept no weights (`save_weights` is off for "
                          f"entry {', '.join(entries)}): set `save_weights: true` (train: or the model entry), train "
                          f"again, then export")
    for member in members:
        verify(member.row, member.folder, [artifacts.WEIGHTS])  # a damaged file is never shipped


def run_entry(member: BagMember, extra_targets: Sequence[str]) -> tuple[RunEntry, dict]:
    """The run's entry as the bundle keeps it, and its resolved spec.yaml as the run wrote it."""
    spec_file = member.folder / artifacts.SPEC
    try:
        resolved = yaml.safe_load(spec_file.read_text())
        model, tta = dict(resolved["model"]), resolved.get("tta") or {}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise LedgerError(f"{spec_file}: unreadable resolved spec ({first_line(e)})") from None
    vocab = [str(v) for v in artifacts.load_predictions(member.folder / artifacts.TEST_PREDS).vocab]
    # The head holds the submission's classes first, then each extra target's in the spec's order.
    extras = {p.name.removeprefix("test_preds_").removesuffix(".npz"): p for p in member.folder.glob("test_preds_*.npz")}
    order = [t for t in extra_targets if t in extras] + sorted(set(extras) - set(extra_targets))
    sizes = [len(vocab)] + [len(artifacts.load_predictions(extras[t]).vocab) for t in order]
    entry = RunEntry(run_id=member.row.id, entry=member.entry, weight=member.weight,
                     model=model | {"pretrained": False},  # its own weights replace any starting weights
                     tta=dict(tta), vocab=vocab, head_sizes=sizes,  # as the run recorded it
                     head=resolved.get("head"))
    return entry, resolved


def export_bag(spec, store, out: Path, options: BagOptions = BagOptions(), max_size: int | None = None,
               force: bool = False) -> Bundle:
    """Write the bag's bundle to `out`. `max_size` (bytes): refused above it, before anything is
    written when the weights alone exceed it."""
    from ledger.units import format_size

    # An existing folder is replaced only when it is an earlier bundle (its manifest) and with `force`.
    out = guard_output(out, BUNDLE, spec=spec, homes=[store.home], force=force)
    members, decision = bag_members(spec, store, options)
    check_weights(members)
    weights_bytes = sum((m.folder / artifacts.WEIGHTS).stat().st_size for m in members)
    if max_size is not None and weights_bytes > max_size:
        raise LedgerError(f"{out}: the bag's weights alone are {format_size(weights_bytes)}, over --max-size "
                          f"{format_size(max_size)}; bag fewer or smaller runs, or raise --max-size")

    entries = [run_entry(m, spec.data.extra_targets) for m in members]
    # Runs trained before TTA keyed its draws to each image drew them per batch: not repeatable here.
    notes = [f"run {e.run_id} was trained before TTA keyed its draws to each image: the bundle's {e.tta.get('n')} "
             f"augmented passes are not the run's own, so a few labels may differ from its submission"
             for e, resolved in entries if e.tta.get("n") and (resolved.get("tta") or {}).get("draws") != KEYED_DRAWS]
    versions, version_notes = _training_versions([resolved.get("versions") for _, resolved in entries])
    notes += version_notes

    with reserved(out):  # a second export to the same folder at the same moment is refused
        size, files = _write_bundle(spec, out, members, entries, options, versions, max_size, decision)
    return Bundle(out, {e.run_id: e.weight for e, _ in entries}, size, files, versions, notes)


def _write_bundle(spec, out: Path, members: list[BagMember], entries: list[tuple[RunEntry, dict]],
                  options: BagOptions, versions: dict[str, str], max_size: int | None,
                  decision=None) -> tuple[int, int]:
    """Build the bundle beside `out` and rename it into place; (bytes, files)."""
    from ledger.units import format_size
    from ledger.bag.submission import check_spec_shape

    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        write_code(partial)
        for member, (entry, _) in zip(members, entries):
            folder = partial / RUNS / entry.run_id
            folder.mkdir(parents=True)
            shutil.copyfile(member.folder / artifacts.WEIGHTS, folder / WEIGHTS)
            _write_json(folder / ENTRY, dataclasses.asdict(entry))
        shape = check_spec_shape(spec)  # the CSV's shape, from the sample submission and the metric
        _write_json(partial / BAG, {"experiment": spec.name, "runs": [e.run_id for e, _ in entries],
                                    "shape": None if shape is None else dataclasses.asdict(shape),
                                    "vocab": entries[0][0].vocab, "spec": str(spec.path) if spec.path else None,
                                    "weights": "tuned" if options.use_tuned else "spec" if not options.weights
                                    else dict(options.weights),
                                    "decision": None if decision is None else decision.to_dict()})
        files = sorted(p for p in partial.rglob("*") if p.is_file())
        manifest = {"format": FORMAT, "ledger": ledger.__version__, "experiment": spec.name,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions,
                    "files": {p.relative_to(partial).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                              for p in files}}
        for member in members:  # the manifest vouches for the weights the runs finished with, no others
            name = f"{RUNS}/{member.row.id}/{WEIGHTS}"
            sums = recorded(member.row)
            if artifacts.WEIGHTS in sums and manifest["files"][name]["sha256"] != sums[artifacts.WEIGHTS]:
                raise LedgerError(f"run {member.row.id}: {member.folder / artifacts.WEIGHTS} changed while it was "
                                  f"copied (its sha256 no longer matches the one recorded); export again")
        _write_json(partial / MANIFEST, manifest)
        size = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
        if max_size is not None and size > max_size:
            raise LedgerError(f"{out}: the bundle is {format_size(size)}, over --max-size {format_size(max_size)}")
        replace_folder(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return size, len(files) + 1


def _training_versions(recorded: list[dict[str, str] | None]) -> tuple[dict[str, str], list[str]]:
    """torch and timm that trained the runs; this environment's, with a note, where runs predate the
    record or disagree."""
    from ledger.training.device import library_versions

    here = library_versions()
    known = [v for v in recorded if v]
    if len(known) < len(recorded):
        return here, [f"{len(recorded) - len(known)} run(s) predate the record of torch and timm versions; "
                      f"the manifest names this environment's ({_versions_text(here)})"]
    distinct = {json.dumps(v, sort_keys=True) for v in known}
    if len(distinct) > 1:
        return here, [f"the runs were trained with different versions ({'; '.join(sorted(distinct))}); "
                      f"the manifest names this environment's ({_versions_text(here)})"]
    return dict(known[0]), []


def _versions_text(versions: Mapping[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
