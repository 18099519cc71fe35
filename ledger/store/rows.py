"""The ledger's own schema, typed: a run's summary (its `summary.json`, and what its ledger row takes
from it) and a row of the `runs` table. Torch-free, so every reader can use them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, fields
from typing import Any


class RunStatus(str, enum.Enum):
    """A run's state in the ledger. A str, so rows, JSON and SQLite read it as the plain word."""

    RUNNING = "running"
    DONE = "done"  # committed: its folder is whole, and only done runs are bagged
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped (a signal, a lost process); resumable from its checkpoint
    MISSING = "missing"  # done, but its folder is gone: it no longer counts until the folder returns

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__  # f"{status}" is the word, on every Python


def _known(cls, values: dict[str, Any]) -> dict[str, Any]:
    """The values `cls` has fields for: a newer schema's or file's extra keys are left out."""
    names = {f.name for f in fields(cls)}
    return {name: value for name, value in values.items() if name in names}


class _Row:
    """A row of one ledger table, typed: built from the database's columns (those a newer schema
    added and this code does not know are ignored), and handed to `--json` as a dict."""

    @classmethod
    def from_columns(cls, columns: dict[str, Any]):
        return cls(**_known(cls, columns))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunSummary:
    """A finished run's figures, written as `summary.json` in its folder."""

    experiment: str
    model: str  # the spec's entry name
    arch: str
    size: str
    fingerprint: str
    run_number: int
    train_seed: int
    split_seed: int | None
    fold: int | None
    folds: int | None
    accum: int
    micro_batch: int
    epochs: int
    train_images: int
    valid_images: int
    test_images: int
    valid_loss: float | None  # the last epoch's, plain (no TTA)
    error_rate: float | None  # the last epoch's, plain
    tta_accuracy: float | None  # on the held-out images, TTA'd as the submission is
    train_seconds: float
    images_per_s: float
    precision: str  # what ran: fp32, bf16 or fp16
    device: str
    resumed_epochs: int
    peak_bytes: int
    metric: str = "accuracy"  # the competition's metric (spec `metric:`)
    valid_metric: float | None = None  # that metric, the last epoch's, plain
    tta_metric: float | None = None  # that metric on the held-out images, TTA'd

    @property
    def accuracy(self) -> float | None:
        """The last epoch's plain accuracy on the held-out images."""
        return None if self.error_rate is None else 1.0 - self.error_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, values: dict) -> "RunSummary":
        """From a `summary.json`; keys it lacks (an older run) take their defaults, unknown keys are
        ignored."""
        return cls(**_known(cls, values))


@dataclass(frozen=True)
class RunRow(_Row):
    """One row of the `runs` table. Written only by `ledger.runs.recording`; read everywhere else."""

    id: str
    experiment: str
    model: str
    arch: str
    size: str
    status: RunStatus
    started_at: str
    split_seed: int | None = None
    accum: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    finished_at: str | None = None
    valid_loss: float | None = None
    error_rate: float | None = None
    images_per_s: float | None = None
    peak_bytes: int | None = None
    device: str | None = None
    precision: str | None = None
    artifact_dir: str | None = None  # relative to the ledger home (absolute in older ledgers)
    error: str | None = None
    pid: int | None = None
    spec: str | None = None  # the resolved model entry, as JSON
    host: str | None = None
    fingerprint: str | None = None
    run_number: int | None = None
    fold: int | None = None
    folds: int | None = None
    train_seed: int | None = None
    resumed_epochs: int | None = None
    metric: str | None = None  # the competition's metric (None: a run recorded before metrics, on accuracy)
    valid_metric: float | None = None  # that metric, the last epoch's, plain
    tta_metric: float | None = None  # that metric on the held-out images, TTA'd
    tta_accuracy: float | None = None  # accuracy on the held-out images, TTA'd
    predicted_peak_bytes: int | None = None  # the memory probe's prediction for the run's configuration
    peak_vs_prediction: str | None = None  # how the measured peak compares with it, in words
    peak_over_prediction: int | None = None  # 1 when the peak went over it by more than the probe's margin
    checksums: str | None = None  # JSON {file name: sha256} of the run's weights and predictions when it finished

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "RunRow":
        return super().from_columns(dict(columns, status=RunStatus(columns["status"])))

    @property
    def accuracy(self) -> float | None:
        """The last epoch's plain accuracy on the held-out images (no TTA)."""
        return None if self.error_rate is None else 1.0 - self.error_rate

    @property
    def entry(self) -> dict:
        """The resolved model entry the run trained (`spec`), as a dict; {} when not recorded."""
        return json.loads(self.spec) if self.spec else {}


@dataclass(frozen=True)
class ProbeTrialRow(_Row):
    """One trial of a probe (`probe_trials`): a factor k, its peak and its timings."""

    probe_id: str
    k: int
    micro_batch: int
    peak_bytes: int | None
    fits: int  # 1 when the peak fitted the budget less the margin
    out_of_memory: int
    seconds: float
    startup_seconds: float | None = None
    error: str | None = None
    allocated_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None
    alloc_retries: int | None = None
    step_seconds: float | None = None
    predict_seconds_per_image: float | None = None
    augmented_seconds_per_image: float | None = None


@dataclass(frozen=True)
class ProbeRow(_Row):
    """A probe's choice (`probe_choices`) for one model entry and target, with its trials."""

    id: str
    experiment: str
    model: str
    probe_key: str
    size: str
    device: str
    budget_bytes: int
    margin: float
    chosen_k: int | None
    created_at: str
    target: str | None = None  # the target card, when the budget named one
    precision: str | None = None
    trials: tuple[ProbeTrialRow, ...] = ()


@dataclass(frozen=True)
class SubmissionRow(_Row):
    """A submission (`submissions`): its file, the runs and weights that made it, its out-of-bag
    estimate, and what Kaggle said of it."""

    id: str
    experiment: str
    path: str  # relative to the ledger home when inside it (Store.home_path)
    created_at: str
    runs: list[str]
    weights: dict[str, float]
    oob_accuracy: float | None = None
    oob_images: int | None = None
    train_images: int | None = None
    sha256: str | None = None
    public_score: float | None = None
    private_score: float | None = None
    message: str | None = None
    excluded: str | None = None  # JSON: the runs left out of the bag, with the reason
    submitted_at: str | None = None
    competition: str | None = None
    kaggle_exit: int | None = None
    metric: str | None = None  # None: made before metrics were recorded, on accuracy
    oob_score: float | None = None
    decision: str | None = None  # JSON: thresholds (multi_label) or cut-offs (qwk) chosen out of bag

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "SubmissionRow":
        columns = dict(columns, runs=json.loads(columns["runs"]), weights=json.loads(columns["weights"]))
        return super().from_columns(columns)

    @property
    def oob(self) -> tuple[str, float | None]:
        """The metric the submission was estimated on and its figure (accuracy for old rows)."""
        return (self.metric, self.oob_score) if self.metric else ("accuracy", self.oob_accuracy)


@dataclass(frozen=True)
class LrFindRow(_Row):
    """A learning-rate range test (`lr_finds`): its suggestions and curve."""

    id: str
    experiment: str
    model: str
    suggestions: dict[str, float]
    created_at: str
    arch: str | None = None
    size: str | None = None
    accum: int | None = None
    frozen: int | None = None
    device: str | None = None
    stopped: str | None = None
    batches: int | None = None
    curve: str | None = None  # JSON
    plot: str | None = None  # relative to the ledger home when inside it

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "LrFindRow":
        return super().from_columns(dict(columns, suggestions=json.loads(columns["suggestions"])))
