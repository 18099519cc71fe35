"""The runtime of an exported bundle (`ledger export`): check the bundle's files, predict each bagged
run's TTA probabilities for a test folder, bag them, and write the submission in the sample's shape.

This module is copied into every bundle together with the ledger modules it uses (see
`export/bundle_code.py`), so it imports nothing but the standard library, torch, timm, numpy, pandas,
Pillow, safetensors and those ledger modules. `predict_run` is also what `ledger predict` runs for
each run, so the two predict alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ledger.errors import LedgerError, first_line
from ledger.runs.artifacts import sha256_file
from ledger.spec.objects import RunTta

MANIFEST = "manifest.json"
BAG = "bag.json"
ENTRY = "entry.json"
WEIGHTS = "model.safetensors"
RUNS = "runs"
CODE = "ledger_bundle"
LAUNCHER = "predict.py"
VERSIONED = ("torch", "timm")  # the libraries whose versions can change a prediction


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LedgerError(f"{path}: missing from the bundle") from None
    except (OSError, ValueError) as e:
        raise LedgerError(f"{path}: unreadable ({first_line(e)})") from None


def check_files(root: Path) -> dict:
    """Every file the manifest lists is there with its sha256; returns the manifest. A missing run or
    a corrupted weights file fails here, naming the file, before anything is computed."""
    manifest = read_json(root / MANIFEST)
    if not isinstance(manifest.get("files"), dict):
        raise LedgerError(f"{root / MANIFEST}: lists no files; export the bag again")
    for name, expected in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise LedgerError(f"{path}: missing from the bundle (listed in {MANIFEST})")
        if path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            raise LedgerError(f"{path}: corrupted (its sha256 differs from the one in {MANIFEST})")
    return manifest


def version_warnings(manifest: dict) -> list[str]:
    """A line for each of torch and timm whose version here differs from the one that trained the bag."""
    from ledger.training.device import library_versions

    here = library_versions()
    return [f"{name} {here[name]} here, the bag was trained with {manifest['versions'][name]}: "
            f"probabilities may differ slightly" for name in VERSIONED
            if manifest.get("versions", {}).get(name) not in (None, here[name])]


@dataclass(frozen=True)
class RunEntry:
    """One bagged run as a bundle keeps it (runs/<id>/entry.json, written by `ledger export`)."""

    run_id: str
    entry: str  # the spec's model entry it is a run of
    weight: float  # its normalised weight in the bag
    model: dict  # the resolved model entry (spec.model_to_dict), its own weights in place of any start
    tta: dict  # the run's resolved `tta:` section, as its spec.yaml holds it (read by RunTta.from_dict)
    vocab: list[str]  # the submission's classes (tags, targets), in the head's order
    head_sizes: list[int]  # the submission's classes, then each extra target's
    head: dict | None = None  # the run's resolved head (task, regression's scale); None: single-label

    @classmethod
    def read(cls, path: Path) -> "RunEntry":
        data = read_json(path)
        try:
            return cls(**data)
        except TypeError as e:
            raise LedgerError(f"{path}: not a run entry ({first_line(e)})") from None


def predict_run(model, head, weights_file: Path, images: np.ndarray, device,
                tta: RunTta, progress: Callable[[int, int], None] | None = None,
                keys: Sequence[str] | None = None) -> np.ndarray:
    """(N, C) float32 probabilities of the submission's classes (tags' probabilities, or numbers:
    `head` is a training.loss.Head, or a single-label head's class counts) from one run's saved weights, with
    fastai's TTA (`tta.n` 0: the plain pass). The batches are the run's training micro-batches and
    each image's augmented passes are keyed to `tta.seed` and its key (its file name), as the run's
    own test TTA was, so the run's test images, in any order or subset, give back its predictions."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ledger.data.batches import Batches
    from ledger.training.device import Runtime, model_on_device, resolve_precision
    from ledger.training.inference import tta_at_sizes
    from ledger.probe.accumulation import micro_batch_size
    from ledger.training.loss import Head

    head = head if isinstance(head, Head) else Head(tuple(head))
    net, transform = model_on_device(model, head.outputs, device)
    try:
        net.load_state_dict(load_file(str(weights_file), device=str(device)))
    except RuntimeError as e:
        raise LedgerError(f"{weights_file}: does not fit {model.arch} with {head.outputs} outputs "
                          f"({first_line(e)})") from None
    except (OSError, SafetensorError) as e:  # a truncated or corrupt file
        raise LedgerError(f"{weights_file}: unreadable weights file ({type(e).__name__}: {first_line(e)})") from None
    accum = model.accum if isinstance(model.accum, int) and model.accum > 0 else 1
    # TTA draws nothing from the runtime's generator (its draws are keyed to each image).
    runtime = Runtime(device, resolve_precision(model.precision, device), accum, transform, torch.Generator())
    batches = Batches(images, None, np.arange(len(images)), micro_batch_size(model.batch_size, accum), keys=keys)
    # At each of the run's test-time sizes (tta.size; none: its training size), averaged as the run did.
    probs = tta_at_sizes(net, batches, runtime, tta, head=head, progress=progress)
    return probs[:, : head.sizes[0]].numpy()


def sample_images(test_dir: Path, sample_submission: Path) -> tuple[np.ndarray, list[Path]]:
    """The sample submission's ids, in its order, and each one's image in `test_dir` (ids may carry
    the file extension or not), as `data.load_competition` finds the test images."""
    from ledger.data.competition import _resolve, image_files
    from ledger.bag.submission_csv import read_sample_submission

    if not test_dir.is_dir():
        raise LedgerError(f"{test_dir}: test image folder not found")
    frame, id_col, _ = read_sample_submission(sample_submission)
    ids = frame[id_col].to_numpy(str)
    files = {path.name: path for path in image_files(test_dir)}
    return ids, _resolve(list(ids), files, sample_submission)


def predict_bag(root: Path, test_dir: Path, sample_submission: Path, device,
                say: Callable[[str], None] = lambda line: None):
    """The bag's weighted mean over its runs for the test images, as an `ensemble.BagResult`."""
    from ledger.runs.artifacts import Predictions
    from ledger.data.images import load_images
    from ledger.bag.ensemble import RunInput, bag
    from ledger.probe.memory import release_memory
    from ledger.spec.objects import model_from_dict
    from ledger.training.loss import Head

    ids, paths = sample_images(test_dir, sample_submission)
    runs, weights, decoded = [], {}, {}
    for run_id in read_json(root / BAG)["runs"]:
        folder = root / RUNS / run_id
        entry = RunEntry.read(folder / ENTRY)
        model = model_from_dict(entry.model)
        key = (model.item_size, model.resize)  # runs of one item size and resize share the decoding
        if key not in decoded:
            say(f"decoding {len(paths)} test images at {model.item_size} ({model.resize})")
            decoded[key] = load_images(tuple(paths), model.item_size, model.resize, cache_dir=None)
        tta = RunTta.from_dict(entry.tta)
        say(f"run {run_id} ({entry.entry}, weight {entry.weight:.3f}, TTA n={tta.n})")
        probs = predict_run(model, Head.from_dict(entry.head, tuple(entry.head_sizes)), folder / WEIGHTS,
                            decoded[key], device, tta, keys=[path.name for path in paths])
        runs.append(RunInput(run_id, entry.entry, Predictions(ids, probs, np.asarray(entry.vocab))))
        weights[run_id] = entry.weight
        release_memory()
    return bag(runs, weights, ids)


def main(root: Path, argv: list[str] | None = None) -> int:
    """`python predict.py TEST_DIR SAMPLE_SUBMISSION OUT.csv`: the bundle's one entry point."""
    parser = argparse.ArgumentParser(prog="predict.py", description="Predict a test folder with this bag of "
                                     "runs, as `ledger ensemble` did, and write the submission CSV.")
    parser.add_argument("test_dir", type=Path, help="folder of test images")
    parser.add_argument("sample_submission", type=Path, help="the sample submission: ids, order and columns")
    parser.add_argument("out", type=Path, help="the submission CSV to write")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the first GPU, else the CPU)")
    parser.add_argument("--probs", type=Path, help="also write the bag's probabilities (ids, vocab, probs) to this .npz")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        manifest = check_files(root)  # first, and before torch is imported: a broken bundle fails at once
        say(f"bundle {root}: {len(manifest['files'])} files match {MANIFEST}")
        from ledger.training.device import default_device, parse_device
        from ledger.bag.submission_csv import write_submission
        from ledger.bag.submission_shape import Shape

        for warning in version_warnings(manifest):
            say(f"warning: {warning}")
        device = parse_device(args.device) if args.device else default_device()
        say(f"device: {device}")
        result = predict_bag(root, args.test_dir, args.sample_submission, device, say)
        # The shape the export read from the sample submission and the metric (bundles without one: labels).
        described = read_json(root / BAG)
        shape = described.get("shape")
        shape = None if shape is None else Shape(**shape | {"columns": tuple(shape["columns"]),
                                                           "names": tuple(shape.get("names") or ())})
        # The thresholds or cut-offs `ledger ensemble` chose out of bag, so the bundle decides as it did.
        decision = described.get("decision")
        if decision is not None:
            from ledger.bag.decisions import Decision

            decision = Decision.from_dict(decision)
        write_submission(args.sample_submission, result, args.out, shape=shape, decision=decision)
        if args.probs is not None:
            with open(args.probs, "wb") as file:
                np.savez(file, ids=result.ids, vocab=result.vocab, probs=result.probs)
    except LedgerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(result.ids)} images, {len(result.weights)} run(s)")
    return 0
