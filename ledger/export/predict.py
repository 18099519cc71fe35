"""`ledger predict`: class probabilities for new images from runs that kept their weights.

One run (named by id or unique prefix), or a spec's bag: the current spec's done runs chosen and
weighted by the same code and options (`BagOptions`) as `ledger ensemble` and `ledger export`. Each
model is rebuilt from its run's resolved `spec.yaml` (arch, model_kwargs, size, resize, augmentation, TTA) with its saved weights,
so the images go through the transform the run was trained and tested with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from ledger.store.rows import RunRow, RunStatus
from ledger.runs import artifacts
from ledger.bag.submission import BagMember, BagOptions, bag_members
from ledger.runs.checksums import verify
from ledger.errors import LedgerError, first_line
from ledger.spec.objects import RunTta

Stage = Callable[[str, int, int], None]  # (what, done, total): decoding, then each run's prediction


@dataclass(frozen=True, eq=False)
class Prediction:
    ids: list[str]  # image file names, sorted
    vocab: list[str]  # classes, tags or target columns
    probs: np.ndarray  # (N, C) float32, the weighted mean over the runs: probabilities, or numbers
    weights: dict[str, float]  # run id -> weight
    task: str = "single_label"
    decision: object | None = None  # decisions.Decision the bag decides with (thresholds, cut-offs)

    def frame(self) -> pd.DataFrame:
        """id, then: the label and one probability column per class; the tags (at the bag's
        thresholds, else 0.5) and one probability column per tag; or the numbers (and the grade, at
        the bag's cut-offs)."""
        values = pd.DataFrame(self.probs, columns=self.vocab)
        if self.task == "regression":
            if self.decision is not None:
                values["grade"] = self.decision.apply(self.probs)[:, 0]
            return pd.concat([pd.DataFrame({"id": self.ids}), values], axis=1)
        if self.task == "multi_label":
            from ledger.bag.submission_shape import tag_cells

            tags = tag_cells(self.vocab, self.probs, self.decision)
            return pd.concat([pd.DataFrame({"id": self.ids, "tags": tags}), values], axis=1)
        labels = np.asarray(self.vocab)[self.probs.argmax(axis=1)]
        return pd.concat([pd.DataFrame({"id": self.ids, "label": labels}), values], axis=1)


def image_paths(where: Path) -> list[Path]:
    """One image file, or every image directly in a folder (hidden files skipped), by name."""
    from ledger.data.competition import IMAGE_SUFFIXES, image_files

    if where.is_file():
        return [where]
    if not where.is_dir():
        raise LedgerError(f"{where}: no such image file or folder")
    paths = image_files(where)
    if not paths:
        raise LedgerError(f"{where}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def members_of_run(store, prefix: str) -> list[BagMember]:
    from ledger.bag.submission import resolve_run_ids

    row = resolve_run_ids(store, [prefix])[0]
    if row.status != RunStatus.DONE:
        raise LedgerError(f"run {row.id}: status is {row.status}; only done runs can predict")
    return [BagMember(row, row.model, _folder(store, row), 1.0)]


def members_of_spec(spec, store, options: BagOptions = BagOptions()) -> tuple[list[BagMember], object | None]:
    """The bag `ledger ensemble SPEC` makes with these options, with its weights, and the thresholds
    or cut-offs it decides with (None: none to choose)."""
    members, decision = bag_members(spec, store, options)
    for member in members:
        _folder(store, member.row)
    return members, decision


def _folder(store, row: RunRow) -> Path:
    folder = store.artifact_path(row)
    if folder is None or not folder.is_dir():
        raise LedgerError(f"run {row.id}: its folder {folder} is gone")
    return folder


def check_weights(members: list[BagMember]) -> None:
    """Every run kept its weights, checked before any image is decoded."""
    for member in members:
        if not (member.folder / artifacts.WEIGHTS).is_file():
            raise LedgerError(f"run {member.row.id} kept no weights ({member.folder / artifacts.WEIGHTS} is "
                              f"missing): train with `save_weights: true` (train: or its model entry) to predict with it")
        verify(member.row, member.folder, [artifacts.WEIGHTS])  # the weights the run finished with


@dataclass(frozen=True)
class SavedRun:
    """What predicting with a run needs, read back from its folder."""

    model: object  # its ModelSpec, its own weights in place of any starting ones
    tta: RunTta
    vocab: list[str]  # the submission's classes, in the head's order
    head: int  # the head's size: the submission's classes, then any extra target's
    task_head: dict | None = None  # the resolved spec's `head:` (task, regression's scale); None: single-label


def run_model(folder: Path) -> SavedRun:
    """The run's model entry and TTA settings from its resolved spec.yaml, its classes and head size
    from its predictions."""
    from ledger.spec.objects import model_from_dict

    path = folder / artifacts.SPEC
    try:
        resolved = yaml.safe_load(path.read_text())
        # The run's own weights replace any starting weights.
        model = model_from_dict(dict(resolved["model"]) | {"pretrained": False})
        tta = resolved.get("tta") or {}
        task_head = resolved.get("head")
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise LedgerError(f"{path}: unreadable resolved spec ({first_line(e)})") from None
    vocab = [str(v) for v in artifacts.load_predictions(folder / artifacts.TEST_PREDS).vocab]
    # The head holds the submission's classes first, then any extra target's: its total size is
    # the sum over every test prediction file, whatever the targets' order.
    head = sum(len(artifacts.load_predictions(p).vocab) for p in folder.glob("test_preds*.npz"))
    return SavedRun(model, RunTta.from_dict(tta), vocab, head, task_head)


def predict_images(members: list[BagMember], paths: list[Path], device, use_tta: bool = True,
                   stage: Stage | None = None, decision=None) -> Prediction:
    """The weighted mean of each run's probabilities (TTA as the run did it, or the plain pass)."""
    from ledger.export.runtime import predict_run
    from ledger.data.images import load_images
    from ledger.probe.memory import release_memory
    from ledger.training.loss import Head

    check_weights(members)
    decoded: dict[tuple, np.ndarray] = {}  # runs of one item size and resize share the decoding
    total, vocab, task = None, None, "single_label"
    for member in members:
        saved = run_model(member.folder)
        model, tta = saved.model, saved.tta if use_tta else saved.tta.plain()
        if vocab is not None and saved.vocab != vocab:
            raise LedgerError(f"run {member.row.id}: its classes differ from run {members[0].row.id}'s; "
                              f"runs of one bag must share their classes")
        vocab = saved.vocab
        key = (model.item_size, model.resize)
        if key not in decoded:
            decoded[key] = load_images(tuple(paths), model.item_size, model.resize, cache_dir=None,
                                       progress=None if stage is None else
                                       (lambda done, count: stage("decoding", done, count)))
        images = decoded[key]
        label = f"run {member.row.id}" + (" (tta)" if tta.n else "")
        progress = None if stage is None else (lambda done, count, label=label: stage(label, done, count))
        sizes = (len(vocab), saved.head - len(vocab)) if saved.head > len(vocab) else (len(vocab),)
        # The bundle's own prediction: the run's micro-batches, TTA keyed to the run's TTA seed and
        # each image's name, at its sizes, so an image gets the answer the run gave it.
        head = Head.from_dict(saved.task_head, sizes)
        task = head.task
        probs = predict_run(model, head, member.folder / artifacts.WEIGHTS, images, device, tta, progress,
                            keys=[p.name for p in paths])
        total = probs * member.weight if total is None else total + probs * member.weight
        release_memory()
    weight_sum = sum(m.weight for m in members)
    return Prediction([p.name for p in paths], vocab, (total / weight_sum).astype(np.float32),
                      {m.row.id: m.weight / weight_sum for m in members}, task, decision)


def write_csv(prediction: Prediction, out: Path) -> Path:
    """Written under a temporary name and renamed: a CSV that exists is whole."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    prediction.frame().to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out
