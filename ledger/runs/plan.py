"""Which runs a spec still owes: `plan` is pure, so `train --dry-run`, top-up, resume and any
executor (local or Ray) agree on the same list.

A run is owed when its model entry has fewer `done` runs of the same fingerprint than it asks
for. Each planned run has a number within its entry (0, 1, 2, ...) that fixes its split and seeds,
so a top-up never repeats a run already done, and a run resumed after a kill gets the same ones.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ledger.store.rows import RunRow, RunStatus
from ledger.spec.fingerprint import run_fingerprint
from ledger.spec.objects import RunTta
from ledger.runs.pseudo_labels import PseudoPlan, TeacherRun, pseudo_plan
from ledger.spec.loader import DataSpec, ModelSpec, Spec


@dataclass(frozen=True)
class SplitPlan:
    """How a run's training images are split: a random stratified split, or fold `fold` of `folds`."""

    seed: int
    valid_pct: float = 0.2
    fold: int | None = None
    folds: int | None = None
    group: str | None = None  # a label-CSV column whose values each stay inside one fold

    def describe(self) -> str:
        if self.folds:
            by = f" by {self.group}" if self.group else ""
            return f"fold {self.fold + 1}/{self.folds}{by} seed {self.seed}"
        return f"random {self.valid_pct:.0%} seed {self.seed}"


@dataclass(frozen=True)
class RunPlan:
    """One run, resolved: what `execute` needs besides the data, and what `record` writes."""

    run_id: str
    experiment: str
    model: ModelSpec
    run_number: int  # within its entry's runs of this fingerprint
    split: SplitPlan
    train_seed: int
    accum: int
    fingerprint: str
    resume: bool = False  # an interrupted run of this id left a checkpoint to go on from
    data: DataSpec | None = None  # where the competition is (a Ray worker loads it itself)
    tta: RunTta = RunTta()  # how the run predicts its test and held-out images (seed: train_seed)
    metric: str = "accuracy"  # the competition's metric, scored after each epoch and on the TTA'd held-out images
    class_order: tuple[str, ...] | None = None  # the metric's class order (qwk)
    pseudo: PseudoPlan | None = None  # the teacher runs that held out this run's validation images


def split_for(spec: Spec, run_number: int, fresh_seed: Callable[[], int]) -> tuple[SplitPlan, int]:
    """The split and training seed of an entry's `run_number`-th run.

    k-fold: run r is fold r % K of the assignment seeded seed + r // K, so runs K..2K-1 repeat the
    folds on a new assignment. A fixed `valid_pct` seed: the same split for every run, which still
    differ in initialisation and augmentation (train seed = seed + r). No seed: a fresh one per run."""
    split = spec.split
    if split.folds:
        base = split.seed or 0
        seed = base + run_number // split.folds
        return (SplitPlan(seed=seed, fold=run_number % split.folds, folds=split.folds, group=split.group),
                seed * 1000 + run_number)
    if split.seed is not None:
        return SplitPlan(seed=split.seed, valid_pct=split.valid_pct), split.seed + run_number
    seed = fresh_seed()
    return SplitPlan(seed=seed, valid_pct=split.valid_pct), seed


def plan(spec: Spec, models: Sequence[ModelSpec], ledger_rows: Sequence[RunRow], accum_for: Callable[[ModelSpec], int],
         new_id: Callable[[], str], more: int = 0, resumable: Callable[[RunRow], bool] = lambda row: False,
         fresh_seed: Callable[[], int] | None = None, teachers: Sequence[TeacherRun] = ()) -> list[RunPlan]:
    """The runs `models` still owe, in spec order.

    `ledger_rows`: the experiment's rows from the ledger. `accum_for(model)` is asked only for
    entries that owe runs (it may have to probe memory). `resumable(row)`: whether an
    interrupted row left a checkpoint; such runs are planned again under their own id and numbers.
    `more`: runs to add per entry beyond the spec's `runs`. `teachers`: with `spec.pseudo`, the
    teacher bag's runs (pseudo.teacher_runs); each run gets those that held out its split."""
    fresh_seed = fresh_seed or (lambda: random.SystemRandom().randrange(2**31))
    plans = []
    for model in models:
        fingerprint = run_fingerprint(spec, model)
        mine = [r for r in ledger_rows if r.fingerprint == fingerprint and r.experiment == spec.name]
        done = [r for r in mine if r.status == RunStatus.DONE]
        resumes = [r for r in mine if r.status == RunStatus.INTERRUPTED and resumable(r)]
        owed = max(0, model.runs + more - len(done))
        if owed == 0:
            continue
        accum = accum_for(model)
        taken = {r.run_number for r in done if r.run_number is not None}
        for row in resumes[:owed]:
            split = SplitPlan(seed=row.split_seed, valid_pct=spec.split.valid_pct, fold=row.fold,
                              folds=row.folds, group=spec.split.group if row.folds else None)
            plans.append(_run_plan(spec, model, row.id, row.run_number, split, row.train_seed,
                                   accum, fingerprint, teachers, resume=True))
            taken.add(row.run_number)
        number = 0
        for _ in range(owed - len(resumes[:owed])):
            while number in taken:
                number += 1
            split, train_seed = split_for(spec, number, fresh_seed)
            plans.append(_run_plan(spec, model, new_id(), number, split, train_seed, accum, fingerprint, teachers))
            taken.add(number)
    return plans


def _run_plan(spec: Spec, model: ModelSpec, run_id: str, number: int, split: SplitPlan, train_seed: int, accum: int,
              fingerprint: str, teachers: Sequence[TeacherRun], resume: bool = False) -> RunPlan:
    pseudo = pseudo_plan(spec.pseudo, split, teachers) if spec.pseudo is not None else None
    return RunPlan(run_id=run_id, experiment=spec.name, model=model, run_number=number, split=split,
                   train_seed=train_seed, accum=accum, fingerprint=fingerprint, resume=resume,
                   tta=RunTta(spec.tta.n, spec.tta.beta, train_seed,
                              spec.tta.sizes_for(model.size) if spec.tta.size else ()),
                   data=spec.data, metric=spec.metric, class_order=spec.class_order,
                   pseudo=pseudo)


def promise(plans: Sequence[RunPlan]) -> list[dict]:
    """What `train --dry-run` showed of each new run, so that the real command keeps it: its id,
    split and seeds, keyed by recipe and run number."""
    return [dict(fingerprint=p.fingerprint, run_number=p.run_number, run_id=p.run_id, split_seed=p.split.seed,
                 train_seed=p.train_seed) for p in plans if not p.resume]


def keep_promise(plans: Sequence[RunPlan], promised: Sequence[Mapping], used_ids: set[str]) -> list[RunPlan]:
    """`plans` with the ids, splits and seeds a dry run showed for the same runs (same recipe and
    run number), unless an id is in the ledger already; resumed runs keep their own."""
    by_key = {(p["fingerprint"], p["run_number"]): p for p in promised if p.get("run_id") not in used_ids}
    kept = []
    for plan in plans:
        shown = None if plan.resume else by_key.get((plan.fingerprint, plan.run_number))
        if shown is not None:
            plan = dataclasses.replace(plan, run_id=shown["run_id"], train_seed=shown["train_seed"],
                                       tta=dataclasses.replace(plan.tta, seed=shown["train_seed"]),
                                       split=dataclasses.replace(plan.split, seed=shown["split_seed"]))
        kept.append(plan)
    return kept
