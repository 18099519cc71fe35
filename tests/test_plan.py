"""The plan is pure: which runs a spec owes, with which split and seeds, from the ledger's rows."""

import itertools

import pytest
from conftest import TINY_CONVNEXT, write_spec

from ledger.spec.fingerprint import run_fingerprint
from ledger.store.rows import RunRow
from ledger.runs.plan import plan
from ledger.spec.loader import load_spec

MODELS = (f"  - {{name: a, arch: convnext_atto, size: 32, runs: 2, model_kwargs: {TINY_CONVNEXT}}}\n"
          f"  - {{name: b, arch: convnext_atto, size: 32, lr: 0.001, model_kwargs: {TINY_CONVNEXT}}}\n")


@pytest.fixture
def spec(tmp_path, tiny_competition):
    return load_spec(write_spec(tmp_path / "s.yaml", tiny_competition, MODELS, "split: {valid_pct: 0.2, seed: 10}\n"),
                     check_models=False)


def ids():
    counter = itertools.count()
    return lambda: f"run{next(counter)}"


def done_row(spec, model, number, status="done", **extra):
    return RunRow(**dict(id=f"old{number}{model.name}", experiment=spec.name, model=model.name, arch=model.arch,
                         size=model.size_label, started_at="2026-01-01T00:00:00+00:00",
                         fingerprint=run_fingerprint(spec, model), status=status, run_number=number, split_seed=10,
                         train_seed=10 + number, fold=None, folds=None) | extra)


def test_a_fresh_ledger_owes_every_run_with_fixed_seeds_differing_per_run(spec):
    plans = plan(spec, spec.models, [], lambda m: 1, ids())
    assert [(p.model.name, p.run_number) for p in plans] == [("a", 0), ("a", 1), ("b", 0)]
    assert [p.split.seed for p in plans] == [10, 10, 10]  # the spec fixes the split ...
    assert [p.train_seed for p in plans] == [10, 11, 10]  # ... runs still differ in their training seed


def test_done_runs_of_the_same_recipe_count_and_top_up_never_repeats_a_run(spec):
    a, b = spec.models
    rows = [done_row(spec, a, 0), done_row(spec, b, 0)]
    plans = plan(spec, spec.models, rows, lambda m: 1, ids())
    assert [(p.model.name, p.run_number, p.train_seed) for p in plans] == [("a", 1, 11)]
    assert plan(spec, spec.models, rows + [done_row(spec, a, 1)], lambda m: 1, ids()) == []
    # --more 1: one more per entry, numbered after the done ones (new seeds, never a repeat).
    more = plan(spec, spec.models, rows + [done_row(spec, a, 1)], lambda m: 1, ids(), more=1)
    assert [(p.model.name, p.run_number, p.train_seed) for p in more] == [("a", 2, 12), ("b", 1, 11)]


def test_runs_of_another_recipe_or_status_do_not_count(spec):
    a, _ = spec.models
    rows = [done_row(spec, a, 0, fingerprint="stale"), done_row(spec, a, 1, status="failed"),
            done_row(spec, a, 0, experiment="other")]
    assert [p.run_number for p in plan(spec, spec.models[:1], rows, lambda m: 1, ids())] == [0, 1]


def test_an_interrupted_run_with_a_checkpoint_is_resumed_under_its_own_id(spec):
    a, _ = spec.models
    rows = [done_row(spec, a, 0), done_row(spec, a, 1, status="interrupted", id="half")]
    plans = plan(spec, spec.models[:1], rows, lambda m: 1, ids(), resumable=lambda row: row.id == "half")
    assert [(p.run_id, p.run_number, p.train_seed, p.resume) for p in plans] == [("half", 1, 11, True)]
    # Without a checkpoint it is trained again from the start, with the same numbers.
    fresh = plan(spec, spec.models[:1], rows, lambda m: 1, ids())
    assert [(p.run_id, p.run_number, p.resume) for p in fresh] == [("run0", 1, False)]


def test_accumulation_is_resolved_only_for_entries_that_owe_runs(spec):
    a, b = spec.models
    asked = []
    plan(spec, spec.models, [done_row(spec, b, 0)], lambda m: asked.append(m.name) or 2, ids())
    assert asked == ["a"]


def test_without_a_seed_every_run_gets_a_fresh_split(tmp_path, tiny_competition):
    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_competition, MODELS), check_models=False)
    seeds = iter([5, 6, 7])
    plans = plan(spec, spec.models, [], lambda m: 1, ids(), fresh_seed=lambda: next(seeds))
    assert [(p.split.seed, p.train_seed) for p in plans] == [(5, 5), (6, 6), (7, 7)]
