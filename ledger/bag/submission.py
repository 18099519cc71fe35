"""From the ledger to a submission: which runs make the bag, their weights, the out-of-bag figure,
the CSV, and the ledger row that says how it was made.

Only `done` runs of the current spec version are bagged: a run belongs to the entry whose
`run_fingerprint` it carries. Runs of older recipes and of removed entries are listed as excluded
with their reason, never bagged silently. `run_ids` (the CLI's --run) bags exactly the runs named.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from ledger.store.rows import RunRow, RunStatus, SubmissionRow
from ledger.runs.artifacts import TEST_PREDS, VALID_PREDS, load_predictions
from ledger.runs.checksums import verify
from ledger.runs.outputs import FILE, guard_output, reservation, reserved
from ledger.bag.completeness import check_whole
from ledger.bag.ensemble import BagResult, RunInput, bag, normalise_weights
from ledger.bag.submission_csv import read_sample_submission, write_submission
from ledger.ids import match_id
from ledger.errors import LedgerError
from ledger.spec.fingerprint import run_fingerprint
from ledger.bag.metrics import Metric
from ledger.bag.out_of_bag import (DEFAULT_RESAMPLES, DEFAULT_STEPS, Estimate, HeldOut, Tuned, by_runs, compare,
                                   estimate, held_out, tune_weights)
from ledger.bag.submission_shape import Shape, spec_metric, submission_shape


@dataclass(frozen=True)
class BagOptions:
    """How a bag's runs are chosen and weighed: one set of options for `ensemble`, `predict SPEC` and
    `export`, so the three bag the same runs with the same weights."""

    run_ids: tuple[str, ...] = ()  # --run: exactly these runs (ids or unique prefixes); () for the spec's
    weights: Mapping[str, float] = field(default_factory=dict)  # --weight: entry weights over the spec's
    tune: bool = False  # --tune-weights: search greedy weights out of bag and report them
    use_tuned: bool = False  # --use-tuned: bag with those weights (implies tune)
    steps: int = DEFAULT_STEPS  # greedy selection steps
    resamples: int = DEFAULT_RESAMPLES  # bootstrap resamples whose greedy weights are averaged; 0: one pass
    allow_missing: bool = False  # --allow-missing: bag the runs there are while others train or lost their folder

    def __post_init__(self):
        if self.use_tuned and self.weights:
            raise LedgerError("--use-tuned and --weight both set the weights: give one of them")


@dataclass(frozen=True)
class BagMember:
    """A run of a bag, with what predicting with it needs."""

    row: RunRow
    entry: str  # the spec entry it is a run of
    folder: Path
    weight: float  # normalised over the bag


@dataclass(frozen=True)
class Excluded:
    run_id: str
    reason: str


@dataclass(frozen=True, eq=False)
class Selection:
    rows: list[dict]  # ledger rows to bag, in spec entry order (then the order they started)
    entry: dict[str, str]  # run_id -> the spec entry (model name) it is a run of
    excluded: list[Excluded]  # done runs of the experiment left out, with the reason
    missing: list[str]  # spec entries without one matching done run


@dataclass(frozen=True, eq=False)
class Submission:
    selection: Selection
    result: BagResult  # the runs weighted above 0, bagged
    entry_weights: dict[str, float]  # normalised weight of each entry bagged
    weights: dict[str, float]  # normalised weight of each run bagged (what the row records)
    estimate: Estimate  # out-of-bag figure of these weights, with its coverage
    comparison: pd.DataFrame | None  # oob.compare table (with --tune-weights)
    tuned: Tuned | None
    excluded: list[Excluded]  # the selection's, plus runs of entries weighted 0
    path: Path | None  # None on a dry run
    sha256: str | None = None
    submission_id: str | None = None
    shape: Shape | None = None  # what the CSV holds: labels or probabilities
    gain: pd.DataFrame | None = None  # oob.by_runs: the figure by the number of runs averaged
    decision: object | None = None  # decisions.Decision: thresholds or cut-offs chosen out of bag


# ---------------------------------------------------------------- which runs


def resolve_run_ids(store, prefixes: Sequence[str]) -> list[RunRow]:
    """Ledger rows for run ids given in full or as any unique prefix, in the order given."""
    rows = {row.id: row for row in store.runs()}
    found: dict[str, RunRow] = {}
    for prefix in prefixes:
        run_id = match_id(list(rows), prefix, "run", store.home)
        found.setdefault(run_id, rows[run_id])
    return list(found.values())


def resolve_submission_id(store, prefix: str) -> SubmissionRow:
    """The submissions row whose id is `prefix` or the one id starting with it."""
    rows = {row.id: row for row in store.submissions()}
    return rows[match_id(list(rows), prefix, "submission", store.home)]


def select_runs(spec, store, run_ids: Sequence[str] | None = None) -> Selection:
    """The runs to bag: the named ones (done, of this experiment), or every done run whose
    fingerprint is that of an entry of the current spec."""
    if run_ids:
        rows = resolve_run_ids(store, run_ids)
        for row in rows:
            if row.status != RunStatus.DONE:
                raise LedgerError(f"run {row.id}: status is {row.status}; only done runs are bagged")
            if row.experiment != spec.name:
                raise LedgerError(f"run {row.id}: belongs to experiment {row.experiment!r}, not {spec.name!r}")
        # Named runs bag under the entry they were trained as, whatever their fingerprint.
        return Selection(rows, {r.id: r.model for r in rows}, [], [])

    now_of = {model.name: run_fingerprint(spec, model) for model in spec.models}
    by_fingerprint: dict[str, list[str]] = {}
    for name, fingerprint in now_of.items():
        by_fingerprint.setdefault(fingerprint, []).append(name)
    chosen: dict[str, list[dict]] = {model.name: [] for model in spec.models}
    excluded, entry = [], {}
    for row in store.runs(spec.name, status=RunStatus.DONE):
        names = by_fingerprint.get(row.fingerprint or "")
        if names:
            # Two entries with one recipe share their runs' fingerprint: prefer the one of the same name.
            name = row.model if row.model in names else names[0]
            chosen[name].append(row)
            entry[row.id] = name
        elif row.model not in now_of:
            excluded.append(Excluded(row.id, f"model entry {row.model!r} removed from the spec"))
        elif not row.fingerprint:
            excluded.append(Excluded(row.id, "no fingerprint on record (trained before fingerprints); "
                                                "bag it by naming it with --run"))
        else:
            excluded.append(Excluded(row.id, f"recipe changed since (fingerprint {row.fingerprint}, "
                                                f"entry {row.model!r} now {now_of[row.model]})"))
    rows = [row for model in spec.models for row in chosen[model.name]]
    if not rows:
        stale = f"; {len(excluded)} done run(s) of other spec versions, e.g. {excluded[0].run_id}: " \
                f"{excluded[0].reason}" if excluded else ""
        raise LedgerError(f"experiment {spec.name!r}: no done runs of this spec in {store.home} "
                          f"(run `ledger train` first){stale}")
    return Selection(rows, entry, excluded, [m.name for m in spec.models if not chosen[m.name]])


# ---------------------------------------------------------------- the submission


def _train_images(spec) -> int | None:
    """Training images in the competition; None when its folder cannot be read here (the figure
    then counts the images some run held out)."""
    from ledger.data.competition import load_competition

    try:
        return len(load_competition(spec.data).train_ids)
    except LedgerError:
        return None


def default_out(home: Path, experiment: str) -> Path:
    folder = Path(home).absolute() / "submissions"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"{experiment}-{stamp}.csv", 2
    while path.exists() or reservation(path).exists():  # two submissions in one second: two names
        path, n = folder / f"{experiment}-{stamp}-{n}.csv", n + 1
    return path


def bag_members(spec, store, options: BagOptions = BagOptions()) -> tuple[list[BagMember], object | None]:
    """The runs `ledger ensemble` bags with these options, weighted as it weighs them (runs weighted 0
    left out), and the thresholds or cut-offs it decides with (None: a single-label bag, or a metric
    that takes probabilities or numbers as they are): what `predict SPEC` and `export` predict with."""
    submission = make_submission(spec, store, options, dry_run=True)
    rows = {row.id: row for row in submission.selection.rows}
    return [BagMember(rows[run_id], submission.selection.entry[run_id], store.artifact_path(rows[run_id]), weight)
            for run_id, weight in submission.weights.items()], submission.decision


def make_submission(spec, store, options: BagOptions = BagOptions(), out: Path | None = None,
                    dry_run: bool = False, message: str | None = None, force: bool = False) -> Submission:
    """Bag the runs `options` choose into a checked submission CSV and record in the ledger which
    runs, with which weights and out-of-bag figure, made it. `force` replaces an existing `out` that
    no ledger records."""
    run_ids, weight_overrides, allow_missing = options.run_ids, options.weights, options.allow_missing
    tune, use_tuned, steps = options.tune, options.use_tuned, options.steps
    if not Path(spec.data.root).is_dir():  # else every run's fingerprint (which lists the data) looks changed
        raise LedgerError(f"{spec.data.root}: data folder not found (data.root in {spec.path}); the bag checks its "
                          f"runs against it and writes the sample submission's ids")
    selection = select_runs(spec, store, run_ids)
    if not run_ids:  # runs named by id are the bag the user chose; else it holds every run of the spec
        left = check_whole(spec, store, allow_missing)
        selection = dataclasses.replace(selection, excluded=selection.excluded + [Excluded(*pair) for pair in left])
    runs = []
    for row in selection.rows:
        folder = store.artifact_path(row)
        if folder is None:
            raise LedgerError(f"run {row.id}: done but no artifact folder on record")
        valid_path = folder / VALID_PREDS
        verify(row, folder, [TEST_PREDS, VALID_PREDS])  # the predictions the run finished with
        runs.append(RunInput(row.id, selection.entry[row.id], load_predictions(folder / TEST_PREDS),
                             load_predictions(valid_path) if valid_path.exists() else None))
    entries = list(dict.fromkeys(run.model for run in runs))
    spec_weights = {m.name: m.weight for m in spec.models if m.name in entries}
    normalise_weights(runs, weight_overrides or {})  # refuses unknown names and bad values first
    given = {e: float(spec_weights.get(e, 1.0)) for e in entries} | dict(weight_overrides or {})

    sample_path = spec.data.root / spec.data.sample_submission
    frame, id_col, _ = read_sample_submission(sample_path)
    vocab = sorted(str(v) for v in runs[0].test.vocab)
    metric = spec_metric(spec, vocab)
    shape = submission_shape(sample_path, list(frame.columns), vocab, metric, spec.task)  # fails before any work
    held = held_out([(r.run_id, r.model, r.valid) for r in runs if r.valid is not None and r.valid.truth is not None],
                    vocab, _train_images(spec))
    tuned = tune_weights(held, steps, metric, options.resamples) if (tune or use_tuned) else None
    comparison = compare(held, {e: w for e, w in given.items() if e in held.entries}, tuned, metric) \
        if tuned is not None else None
    chosen = {e: float(tuned.weights.get(e, 0)) for e in entries} if use_tuned else given

    weights = normalise_weights(runs, chosen)
    excluded = list(selection.excluded) + [Excluded(r.run_id, f"entry {r.model!r} has weight 0")
                                           for r in runs if weights[r.run_id] == 0]
    bagged = [r for r in runs if weights[r.run_id] > 0]
    result = bag(bagged, {r.run_id: weights[r.run_id] for r in bagged}, frame[id_col].to_numpy(str))
    total = sum(chosen.values())
    entry_weights = {e: w / total for e, w in chosen.items()}
    figure, gain = _estimate(held, entry_weights, metric)

    submission = Submission(selection, result, entry_weights, result.weights, figure, comparison, tuned, excluded,
                            None, shape=shape, gain=gain, decision=figure.decision)
    if dry_run:
        return submission
    path = Path(out).absolute() if out else default_out(store.home, spec.name)
    with reserved(path):  # the name is ours until the row is recorded: a second writer is refused
        _refuse_recorded(store, path)
        guard_output(path, FILE, spec=spec, homes=[store.home], force=force or not out)
        return _write_and_record(spec, store, path, sample_path, submission, bagged, excluded, figure, metric,
                                 message)


def _write_and_record(spec, store, path, sample_path, submission, bagged, excluded, figure, metric,
                      message) -> Submission:
    result, shape = submission.result, submission.shape
    recorded: dict[str, str] = {}

    def record(sha256: str) -> None:
        # Runs right after the rename: the CSV stands only once this row exists.
        recorded["sha256"] = sha256
        recorded["id"] = store.record_submission(
            spec.name, path, [r.run_id for r in bagged], result.weights,
            None if math.isnan(figure.accuracy) else figure.accuracy,
            metric=figure.metric, oob_score=None if math.isnan(figure.score) else figure.score, oob_images=figure.images, train_images=figure.train_images, sha256=sha256,
            excluded=json.dumps([{"run_id": e.run_id, "reason": e.reason} for e in excluded]), message=message,
            decision=None if submission.decision is None else json.dumps(submission.decision.to_dict()))

    write_submission(sample_path, result, path, commit=record, shape=shape, decision=submission.decision)
    return dataclasses.replace(submission, path=path, sha256=recorded["sha256"], submission_id=recorded["id"])


def _refuse_recorded(store, path: Path) -> None:
    """A recorded submission's file is never replaced: its row keeps the sha256 of what it wrote,
    and `submit` must hand Kaggle that file, not a later one."""
    if path.is_dir():
        raise LedgerError(f"--out {path}: is a folder; give a CSV file name")
    owner = store.submission_at(path) if path.exists() else None
    if owner is not None:
        raise LedgerError(f"--out {path}: holds submission {owner.id} (recorded files are never replaced); "
                          f"choose another name or leave out --out")


def _estimate(held: HeldOut, entry_weights: Mapping[str, float], metric: Metric) -> tuple[Estimate, pd.DataFrame | None]:
    """The bag's out-of-bag figure (with the thresholds or cut-offs the submission decides with) and
    its bagging gain (None when no image is held out twice by every weighted entry); none (nan, 0
    images, no decision: 0.5 or the nearest grade) when a weighted entry has no held-out predictions,
    since no image is then predicted by the whole bag."""
    weighted = {e: w for e, w in entry_weights.items() if w > 0}
    if not weighted or set(weighted) - set(held.entries):
        return Estimate(metric.name, float("nan"), float("nan"), 0, held.train_images), None
    gain = by_runs(held, weighted, metric)
    return estimate(held, weighted, metric=metric), None if gain.empty else gain


def read_vocab(spec) -> tuple[str, ...]:
    """The competition's classes, from its training labels."""
    from ledger.data.competition import load_competition

    return tuple(load_competition(spec.data).vocab)


def check_spec_shape(spec) -> Shape | None:
    """`ledger check`: the spec's metric can score the CSV its sample submission asks for, and its
    class_order names the competition's classes. None when the folder has no sample submission yet."""
    sample = spec.data.root / spec.data.sample_submission
    if not sample.is_file():
        return None
    vocab = read_vocab(spec)
    metric = spec_metric(spec, vocab)
    frame, _, _ = read_sample_submission(sample)
    return submission_shape(sample, list(frame.columns), vocab, metric, spec.task)
