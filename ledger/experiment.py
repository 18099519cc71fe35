"""Runs of an experiment: every model entry x `runs`, one after another, each on its own random
split, each leaving a ledger row and (when done) a complete artifact folder."""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from ledger import artifacts
from ledger.artifacts import Predictions, RunFolder
from ledger.data import Competition, load_competition, load_images, split_indices
from ledger.errors import first_line
from ledger.memory import (
    PeakMemory,
    device_name,
    format_size,
    is_out_of_memory,
    release_memory,
)
from ledger.models import save_weights
from ledger.probe import micro_batch_size
from ledger.progress import ConsoleProgress
from ledger.spec import ModelSpec, Spec, dump_yaml, model_to_dict
from ledger.store import Store, new_id
from ledger.train import Batches, fine_tune, model_on_device, predict, resolve_precision, tta


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    model: str
    status: str  # done or failed
    error: str | None = None
    error_rate: float | None = None
    folder: Path | None = None


@dataclass
class ImageSet:
    """A model entry's decoded images (train and test) at its item size, shared by its runs."""

    train: np.ndarray
    test: np.ndarray


def cached_images(competition: Competition, model: ModelSpec, cache_dir: Path) -> ImageSet:
    return ImageSet(
        train=load_images(competition.train_paths, model.item_size, model.resize, cache_dir),
        test=load_images(competition.test_paths, model.item_size, model.resize, cache_dir),
    )


def one_line_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


def train_run(spec: Spec, model: ModelSpec, competition: Competition, images: ImageSet, split_seed: int,
              train_seed: int, accum: int, device: torch.device, folder: RunFolder, console: Console,
              label: str) -> dict:
    """Train one run and write its artifacts into `folder` (not yet committed). Returns the summary."""
    precision = resolve_precision(model.precision, device)
    train_idx, valid_idx = split_indices(competition.train_labels, spec.split.valid_pct, split_seed)
    torch.manual_seed(train_seed)
    generator = torch.Generator().manual_seed(train_seed)
    meter = PeakMemory(device)  # measured from here: the model, its optimizer and activations

    net, transform = model_on_device(model, len(competition.vocab), device)
    micro_batch = micro_batch_size(model.batch_size, accum)  # evaluation batches no larger than a training one

    batches = Batches(images.train, competition.train_labels, train_idx, model.batch_size, shuffle=True,
                      drop_last=True, seed=train_seed)
    valid = (Batches(images.train, competition.train_labels, valid_idx, micro_batch) if len(valid_idx) else None)
    history = fine_tune(net, batches, model.epochs, model.lr, accum, transform, device, precision,
                        model.weight_decay, model.finetune, model.freeze_epochs, valid=valid,
                        progress=ConsoleProgress(console, label), generator=generator)

    test_batches = Batches(images.test, None, np.arange(len(images.test)), micro_batch)
    test_probs = tta(net, test_batches, transform, device, precision, spec.tta.n, spec.tta.beta)
    vocab = np.array(competition.vocab)
    artifacts.save_predictions(folder.path(artifacts.TEST_PREDS),
                               Predictions(ids=np.array(competition.test_ids), probs=test_probs.numpy(), vocab=vocab))
    valid_loss = error_rate = None
    if valid is not None:
        valid_probs, valid_labels = predict(net, valid, transform, device, precision)
        valid_loss, error_rate = history[-1].valid_loss, history[-1].error_rate
        artifacts.save_predictions(folder.path(artifacts.VALID_PREDS), Predictions(
            ids=np.array(competition.train_ids)[valid_idx], probs=valid_probs.numpy(), vocab=vocab,
            labels=vocab[valid_labels.numpy()]))
    if model.save_weights:
        save_weights(net, folder.path(artifacts.WEIGHTS))
    peak_bytes = meter.read()

    pd.DataFrame([dataclasses.asdict(m) | {"images_per_s": m.images_per_s} for m in history]).to_csv(
        folder.path(artifacts.METRICS), index=False)
    seconds = sum(m.train_seconds for m in history)
    summary = dict(
        experiment=spec.name, model=model.name, arch=model.arch, size=model.size_label, split_seed=split_seed,
        train_seed=train_seed, accum=accum, micro_batch=micro_batch, epochs=model.epochs,
        train_images=len(train_idx), valid_images=len(valid_idx), test_images=len(competition.test_ids),
        valid_loss=valid_loss, error_rate=error_rate, precision=precision.name, device=device_name(device),
        images_per_s=sum(m.train_images for m in history) / seconds if seconds else 0.0, peak_bytes=peak_bytes,
    )
    artifacts.write_json(folder.path(artifacts.SUMMARY), summary)
    resolved = spec.to_dict()
    resolved.pop("models")
    resolved.pop("path")
    resolved["model"] = model_to_dict(model) | {"accum": accum}
    resolved["split"]["seed"] = split_seed
    folder.path(artifacts.SPEC).write_text(dump_yaml(resolved))
    return summary


def train_experiment(spec: Spec, models: tuple[ModelSpec, ...], store: Store, accum_for, console: Console,
                     device: torch.device | None = None) -> list[RunOutcome]:
    """Every model x runs, sequentially. `accum_for(model)` gives each model's accumulation factor
    (resolving `auto` through the probe) before any training starts."""
    from ledger.train import default_device

    device = device or default_device()
    competition = load_competition(spec.data)
    accums = {model.name: accum_for(model) for model in models}
    outcomes = []
    from ledger.plan import plan as plan_runs
    from ledger.record import RunResult, record, record_start
    import os, socket

    plans = plan_runs(spec, models, store.runs(spec.name), accums, new_id)
    for model in models:
        images = cached_images(competition, model, store.home / "cache")
        mine = [p for p in plans if p.model.name == model.name]
        for index, run in enumerate(mine):
            split_seed, train_seed, run_id = run.split.seed, run.train_seed, run.run_id
            label = f"{model.name} run {index + 1}/{len(mine)}"
            record_start(store, run, device_name(device), resolve_precision(model.precision, device).name,
                         socket.gethostname(), os.getpid())
            folder = RunFolder(store.run_dir(spec.name, run_id))
            started = time.perf_counter()
            try:
                summary = train_run(spec, model, competition, images, split_seed, train_seed, run.accum,
                                    device, folder, console, label)
                final = folder.commit()
                record(store, RunResult(run_id, "done", final, summary))
                outcomes.append(RunOutcome(run_id, model.name, "done", error_rate=summary["error_rate"], folder=final))
                error = "-" if summary["error_rate"] is None else f"{summary['error_rate']:.4f}"
                console.print(f"{label}: done {run_id}  error_rate {error}  {summary['images_per_s']:.0f} img/s"
                              f"  peak {format_size(summary['peak_bytes'])}  {time.perf_counter() - started:.0f}s",
                              highlight=False)
            except KeyboardInterrupt:
                folder.discard()
                record(store, RunResult(run_id, "interrupted", error="interrupted"))
                raise
            except Exception as error:  # noqa: BLE001 - a failed run is recorded; the next ones go on
                folder.discard()
                message = ("out of memory: " if is_out_of_memory(error) else "") + one_line_error(error)
                record(store, RunResult(run_id, "failed", error=message))
                outcomes.append(RunOutcome(run_id, model.name, "failed", error=message))
                console.print(f"{label}: failed {run_id}  {message}", highlight=False, style="red")
            finally:
                release_memory()  # this run's model, optimizer and cached blocks, before the next run
    return outcomes
