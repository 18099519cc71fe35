"""The probe of a spec, for a target card: running it over the spec's models, and reading its
answers back (`accum: auto`, a run's predicted peak and timings). What a probe answers for (its
setting and key) is ledger.probe.setting; a planned run's time, ledger.probe.planned_time.

The search and the child runner are ledger.probe.accumulation; the trial itself is ledger.probe.trial.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.probe.setting import probe_key, probe_setting

from ledger.probe.accumulation import (SearchResult, Trial, micro_batch_size, nothing_fits_message, run_in_child, search_accum,
                          usable_bytes)
from ledger.units import format_size



@dataclass(frozen=True)
class ModelProbe:
    model: object  # ModelSpec
    device: str
    budget: object  # ledger.probe.targets.Budget
    precision: str  # what `auto` resolved to for the target
    result: SearchResult

    @property
    def budget_bytes(self) -> int:
        return self.budget.capacity_bytes

    @property
    def label(self) -> str:
        return f"{self.model.arch} at {self.model.size_label}"


def probe_models(spec, models, store, budget=None, device=None, display=None, jobs: int = 1) -> list[ModelProbe]:
    """Probe each model on the smallest class for `budget` (a ledger.probe.targets.Budget; default the spec's)
    and record every trial and the choice in the ledger. `display` (optional; the command line's
    progress.ProbeDisplay) is told of decoding and of each trial as it starts and ends: nothing here prints.
    `jobs`: for runs trained that many at a time (CPU): each trial gets a run's share of the cores."""
    from ledger.data.competition import load_competition
    from ledger.data.images import load_images
    from ledger.data.splits import smallest_class_indices
    from ledger.probe.memory import device_name
    from ledger.probe.trial import TrialTarget, training_trial
    from ledger.training.device import default_device

    device = device or default_device()
    setting = probe_setting(spec, device, budget, jobs)
    budget_bytes = setting.budget.capacity_bytes
    limit = usable_bytes(budget_bytes, spec.probe.margin)
    competition = load_competition(spec.data)
    subset = smallest_class_indices(competition.strata)
    paths = tuple(competition.train_paths[i] for i in subset)
    cache_dir = store.home / "cache"
    probes = []
    for model in models:
        # Decoded once here (no torch device touched), then read from the cache by every child.
        load_images(paths, model.item_size, model.resize, cache_dir,
                    progress=None if display is None else (lambda done, total, name=model.name:
                                                           display.decoding(name, done, total)))
        precision = setting.precision(model)
        # On CUDA the trial runs as the target will; on a CPU as training there does (float32 for auto).
        target = (TrialTarget(budget_bytes if setting.budget.target else None, setting.capability, precision)
                  if device.type == "cuda" else TrialTarget(precision=model.precision, cpu_threads=setting.cpu_threads))

        def trial(k: int, model=model, target=target) -> Trial:
            micro_batch = micro_batch_size(model.batch_size, k)
            if display is not None:
                display.trial_started(model.name, k, micro_batch)
            result = run_in_child(training_trial, model, paths, sum(competition.head_sizes), spec.probe.steps,
                                  str(device), str(cache_dir), target, k=k, micro_batch=micro_batch)
            if display is not None:
                display.trial_finished(model.name, result, limit)
            return result

        result = search_accum(model.batch_size, trial, limit)
        name = device_name(device)
        store.record_probe(spec.name, model.name, probe_key(model, setting), model.size_label, name, budget_bytes,
                           spec.probe.margin, result.chosen_k, result.trials, target=setting.budget.target_name,
                           precision=precision)
        probes.append(ModelProbe(model, name, setting.budget, precision, result))
    return probes


def recorded_trial(store, spec, model, device, accum: int, jobs: int = 1):
    """The latest probe's trial of `model` at factor `accum` on `device`, for the spec's budget: its
    peak is the run's predicted peak, its timings the run's estimate. None when nothing is on record."""
    from ledger.probe.memory import device_name

    setting = probe_setting(spec, device, jobs=jobs)
    latest = store.latest_probe(probe_key(model, setting), device_name(device), setting.budget.capacity_bytes,
                                spec.probe.margin)
    if latest is None:
        return None
    return next((trial for trial in latest.trials if trial.k == accum and trial.error is None), None)


def record_peak_check(store, run_id: str, predicted_bytes: int | None, measured_bytes: int | None,
                      margin: float) -> None:
    """A done run's measured peak against the probe's prediction, in its row: how far apart they are,
    and whether the peak went over the prediction by more than the margin (the train log says so)."""
    from ledger.probe.targets import check_peak

    check = check_peak(predicted_bytes, measured_bytes, margin)
    if check is not None:
        store.update_run(run_id, {"peak_vs_prediction": check.describe(), "peak_over_prediction": int(check.exceeds)})


def accum_resolver(spec, store, display=None, device=None, may_probe: bool = True, workers_device: str | None = None,
                   jobs: int = 1):
    """`accum: auto` -> the factor the latest probe chose for this model, target and device; with no
    probe on record, probe first (and say so through `display`, a progress.ProbeDisplay, if given),
    or, with `may_probe=False`, answer 0 (unknown). The one place `auto` is decided, for `train`, its
    dry run and the Ray executor: `workers_device` names the device the runs will train on when it is
    not this one (Ray workers); a probe for it is run here only when this machine has the same kind."""
    from ledger.training.device import default_device
    from ledger.errors import LedgerError
    from ledger.probe.memory import device_name

    device = device or default_device()
    say = display.say if display is not None else (lambda line: None)
    setting = probe_setting(spec, device, jobs=jobs)
    budget = setting.budget.capacity_bytes
    described = f"{setting.budget.target_name or format_size(budget)}"
    where = workers_device or device_name(device)

    def resolve(model) -> int:
        if model.accum != "auto":
            return model.accum
        latest = store.latest_probe(probe_key(model, setting), where, budget, spec.probe.margin)
        if latest is None and not may_probe:
            return 0
        if latest is None:
            if where != device_name(device):
                raise LedgerError(f"{model.name}: accum is auto and no memory probe is on record for {described} on "
                                  f"the workers' device ({where}); run `ledger probe-memory` on a worker node with "
                                  f"the same --home, or set accum")
            say(f"{model.name}: accum is auto and no probe is on record for {described} on {where}; probing first")
            probe = probe_models(spec, [model], store, setting.budget, device, display, jobs)[0]
            chosen, trials = probe.result.chosen_k, probe.result.trials
        else:
            chosen, trials = latest.chosen_k, None
        if chosen is None:
            if trials is None:
                trials = [Trial(r.k, r.micro_batch, r.peak_bytes, bool(r.out_of_memory), r.seconds, r.error)
                          for r in latest.trials]
            raise LedgerError(nothing_fits_message(f"{model.name} ({model.arch} at {model.size_label}) on {where}",
                                                   trials, budget, usable_bytes(budget, spec.probe.margin)))
        say(f"{model.name}: accum {chosen} (from the memory probe, budget {described})")
        return chosen

    return resolve
