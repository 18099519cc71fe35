"""`ledger lr-find` for one model entry of a spec: load its training split, run fastai's range test
(`lr_find.range_test`: the `Learner` with lr-find's callback) on a throw-away copy of the model, plot
the curve and record it in the ledger. The algorithm and its suggestions are in `training/lr_find.py`;
this module only orchestrates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ledger.data.batches import Batches
from ledger.data.competition import load_competition
from ledger.data.images import load_images
from ledger.training.device import Runtime, default_device, model_on_device, resolve_precision
from ledger.training.loss import Criterion, Head
from ledger.training.lr_find import NUM_IT, LrFindProgress, RangeTest, Suggestion, range_test, suggest
from ledger.probe.memory import device_name, release_memory
from ledger.training.models import freeze_body
from ledger.report.plots import plot_lr_find
from ledger.data.splits import split_indices
from ledger.training.step import StepSettings
from ledger.store.database import new_id


@dataclass(frozen=True)
class LrFindResult:
    id: str
    model: str
    accum: int
    test: RangeTest
    suggestions: dict[str, Suggestion | None]
    plot: Path
    frozen: bool = False  # finetune: only the head was trained, as on a fresh fastai vision_learner
    extra: dict = field(default_factory=dict)

    def suggested_lrs(self) -> dict[str, float | None]:
        return {name: None if s is None else s.lr for name, s in self.suggestions.items()}


def lr_find(spec, model, store, accum: int, out: Path | None = None, device: torch.device | None = None,
            num_it: int = NUM_IT, seed: int = 0, progress: LrFindProgress | None = None) -> LrFindResult:
    """Run the range test for one model entry of `spec` on its training split, plot it, record it."""
    device = device or default_device()
    precision = resolve_precision(model.precision, device)
    competition = load_competition(spec.data)
    images = load_images(competition.train_paths, model.item_size, model.resize, store.home / "cache")
    # The training part of a split, as a run would see it: the held-out images stay unseen.
    split_seed = spec.split.seed if spec.split.seed is not None else seed
    train_idx, _ = split_indices(competition.strata, spec.split.valid_pct, split_seed)
    torch.manual_seed(seed)
    head = Head.of(competition, train_idx)
    net, transform = model_on_device(model, head.outputs, device)
    if model.finetune:
        freeze_body(net, True)  # fastai's lr_find on a fresh vision_learner trains the head only
    runtime = Runtime(device, precision, accum, transform, torch.Generator().manual_seed(seed))
    batches = Batches(images, competition.train_labels, train_idx, model.batch_size, shuffle=True,
                      drop_last=True, seed=seed)
    criterion = Criterion(head, model.label_smoothing, model.mixup, model.cutmix, loss=model.loss)
    try:
        test = range_test(net, batches, runtime, criterion, StepSettings.of(model), num_it=num_it,
                          progress=progress)
    finally:
        del net  # the model and its optimizer are thrown away, as fastai restores its saved state
        release_memory()
    suggestions = suggest(test.lrs, test.losses, num_it)
    run_id = new_id()
    plot = Path(out) if out is not None else store.home / spec.name / "lr_find" / f"{run_id}-{model.name}.png"
    plot_lr_find(test.lrs, test.losses, suggestions, plot,
                 title=f"{spec.name} / {model.name} ({model.arch} at {model.size_label}, batch {model.batch_size}"
                       f"{f', accum {accum}' if accum > 1 else ''}{', head only' if model.finetune else ''})")
    result = LrFindResult(run_id, model.name, accum, test, suggestions, plot, frozen=model.finetune)
    store.record_lr_find(dict(
        id=run_id, experiment=spec.name, model=model.name, arch=model.arch, size=model.size_label,
        accum=accum, frozen=int(model.finetune), device=device_name(device), stopped=test.stopped,
        batches=len(test.lrs), suggestions=json.dumps(result.suggested_lrs()),
        curve=json.dumps({"lrs": test.lrs, "losses": test.losses}), plot=str(plot)))
    return result
