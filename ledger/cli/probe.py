"""`ledger probe-memory`: what fits the card you will train on, and with which accumulation factor."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Optional

import typer
from rich.table import Table

from ledger.cli.common import (DeviceOpt, HomeOpt, JsonOpt, ModelOpt, SetOpt, SpecArg, _device, _load, _print_json, app,
                        console, err_console, friendly_errors)
from ledger.errors import SpecError
from ledger.cli.tables import trial_verdict
from ledger.probe.targets import TARGETS

# ---------------------------------------------------------------- probe-memory


def _budget(text: str | None):
    """--budget as a ledger.probe.targets.Budget (a card or a size), None when not given."""
    from ledger.probe.targets import parse_budget

    if text is None:
        return None
    try:
        return parse_budget(text)
    except ValueError as e:
        raise SpecError(f"--budget: {e}") from None


@app.command("probe-memory")
@friendly_errors
def probe_memory(
    spec_path: SpecArg,
    model: ModelOpt = None,
    budget: Annotated[Optional[str], typer.Option(help=f"Target card ({', '.join(TARGETS)}) or a size such as 16GiB (default: the spec's probe.budget).")] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = None,
    overrides: SetOpt = None,
    home: HomeOpt = None,
    jobs: Annotated[int, typer.Option(min=1, max=64, help="Probe for `train --jobs N` (CPU): each trial gets a run's "
                                      "share of the cores, as the runs will.")] = 1,
) -> None:
    """Measure peak training memory on the smallest class and pick each model's accumulation factor.

    Each trial trains probe.steps real steps in a fresh child process, for k = 1, 2, 4, ... and stops at
    the first k whose peak fits the budget less probe.margin. A target card's budget is its real
    total_memory, and its compute capability decides `precision: auto` and the attention kernels; on
    CUDA the trial is also capped at the card's capacity. `accum: auto` in train uses the choice.

    Example: ledger probe-memory experiments/fashion.yaml --budget t4 --json
    Example: ledger probe-memory experiments/fashion.yaml --jobs 2   (before train --jobs 2 on a CPU)
    """
    from ledger.probe.accumulation import micro_batch_size, nothing_fits_message, usable_bytes
    from ledger.probe.spec_probe import probe_models
    from ledger.cli.progress import ProbeDisplay
    from ledger.store.database import Store
    from ledger.units import format_size

    spec = _load(spec_path, overrides=overrides, check_data=True)
    chosen_budget = _budget(budget) or spec.probe.target
    store = Store(home)
    # With --json, stdout carries only the JSON: the trials show on stderr.
    torch_device = _device(device)
    from ledger.executors.process_pool import check_jobs

    check_jobs(jobs, torch_device)
    probes = probe_models(spec, spec.select(model), store, chosen_budget, device=torch_device,
                          display=ProbeDisplay(err_console if as_json else console), jobs=jobs)
    budget_bytes = chosen_budget.capacity_bytes
    limit = usable_bytes(budget_bytes, spec.probe.margin)
    if as_json:
        _print_json([
            {"model": p.model.name, "arch": p.model.arch, "size": p.model.size_label, "device": p.device,
             "target": chosen_budget.target_name, "capacity_bytes": budget_bytes, "budget_bytes": budget_bytes,
             "usable_bytes": limit, "limit_bytes": limit, "margin": spec.probe.margin, "precision": p.precision,
             "chosen_k": p.result.chosen_k,
             "trials": [dataclasses.asdict(t) | {"fits": t.fits(limit)} for t in p.result.trials]}
            for p in probes])
    else:
        what = chosen_budget.target_name or "budget"
        table = Table("model", "size", "precision", "k", "micro-batch", "peak", "fits", "step s", "seconds",
                      "start-up s",
                      title=f"memory probe, {what} {format_size(budget_bytes)} "
                            f"({format_size(limit)} usable), {probes[0].device if probes else ''}")
        for p in probes:
            for t in p.result.trials:
                verdict = trial_verdict(t, limit)
                table.add_row(p.model.name, p.model.size_label, p.precision, str(t.k), str(t.micro_batch),
                              "-" if t.peak_bytes is None else format_size(t.peak_bytes), verdict,
                              "-" if t.step_seconds is None else f"{t.step_seconds:.3f}",
                              f"{t.seconds:.1f}", f"{t.startup_seconds:.1f}")
        console.print(table)
        for p in probes:
            if p.result.chosen_k is not None:
                console.print(f"{p.model.name}: accum {p.result.chosen_k} "
                              f"(micro-batch {micro_batch_size(p.model.batch_size, p.result.chosen_k)})")
    failed = [p for p in probes if p.result.chosen_k is None]
    for p in failed:
        err_console.print(nothing_fits_message(f"{p.model.name} ({p.label})", p.result.trials, budget_bytes, limit),
                          style="red", markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)
