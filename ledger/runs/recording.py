"""The only code that writes run rows to the ledger: a run's start (from its plan) and its end
(from its result). Under Ray this runs on the driver; workers only return results."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ledger.store.rows import RunStatus, RunSummary
from ledger.runs.plan import RunPlan
from ledger.spec.objects import model_to_dict
from ledger.store.database import Store, now


@dataclass(frozen=True)
class RunResult:
    """What an executed run reports back: small, picklable, no tensors."""

    run_id: str
    status: RunStatus  # done, failed or interrupted
    folder: Path | None = None  # the committed run folder (done runs only)
    summary: RunSummary | None = None  # what summary.json holds (done runs only)
    error: str | None = None
    resumed_epochs: int = 0  # epochs taken from a checkpoint instead of trained again
    host: str | None = None
    pid: int | None = None
    checksums: dict[str, str] | None = None  # sha256 of the folder's weights and predictions (done runs)


def record_start(store: Store, plan: RunPlan, device: str, precision: str, host: str, pid: int,
                 predicted_peak_bytes: int | None = None) -> None:
    """A `running` row, with the host and pid that let a later command see the process is gone."""
    row = dict(status=RunStatus.RUNNING, started_at=now(), finished_at=None, error=None, device=device, precision=precision,
               host=host, pid=pid, accum=plan.accum, predicted_peak_bytes=predicted_peak_bytes)
    if plan.resume and store.runs(ids=[plan.run_id]):
        store.update_run(plan.run_id, row)
        return
    model = plan.model
    store.insert_run(row | dict(
        id=plan.run_id, experiment=plan.experiment, model=model.name, arch=model.arch, size=model.size_label,
        split_seed=plan.split.seed, fold=plan.split.fold, folds=plan.split.folds, train_seed=plan.train_seed,
        run_number=plan.run_number, fingerprint=plan.fingerprint, batch_size=model.batch_size, epochs=model.epochs,
        spec=json.dumps(model_to_dict(model) | {"accum": plan.accum})))


def record(store: Store, result: RunResult) -> None:
    """A run's end: done with its figures and folder (relative to the home), or failed / interrupted
    with its reason."""
    changes = dict(status=result.status, finished_at=now(), error=result.error, resumed_epochs=result.resumed_epochs)
    if result.host is not None:
        changes |= dict(host=result.host, pid=result.pid)
    if result.status == RunStatus.DONE:
        summary = result.summary
        folder = Path(result.folder)
        try:
            folder = folder.resolve().relative_to(store.home.resolve())
        except ValueError:
            folder = folder.resolve()  # outside the home (a shared path seen differently): keep it absolute
        changes |= dict(artifact_dir=str(folder), valid_loss=summary.valid_loss, error_rate=summary.error_rate,
                        images_per_s=summary.images_per_s, peak_bytes=summary.peak_bytes, device=summary.device,
                        precision=summary.precision, metric=summary.metric, valid_metric=summary.valid_metric,
                        tta_metric=summary.tta_metric, tta_accuracy=summary.tta_accuracy,
                        checksums=json.dumps(result.checksums, sort_keys=True) if result.checksums else None)
    store.update_run(result.run_id, changes)


def record_found(store: Store, result: RunResult, summary: RunSummary, entry: dict, started_at: str,
                 finished_at: str) -> None:
    """A finished run re-recorded from its folder (`ledger runs --rebuild`, after ledger.db was
    lost): its start as `record_start` writes it, from the summary and resolved entry the folder
    keeps, then its end as `record` writes it, with the times the folder's files show."""
    store.insert_run(dict(
        id=result.run_id, experiment=summary.experiment, model=summary.model, arch=summary.arch, size=summary.size,
        status=RunStatus.RUNNING, started_at=started_at, split_seed=summary.split_seed, fold=summary.fold,
        folds=summary.folds, train_seed=summary.train_seed, run_number=summary.run_number,
        fingerprint=summary.fingerprint, batch_size=entry.get("batch_size"), epochs=summary.epochs,
        accum=summary.accum, spec=json.dumps(entry)))
    record(store, result)
    store.update_run(result.run_id, {"finished_at": finished_at})
