"""`ledger export`: a bag as an offline inference bundle for a code competition."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ledger.cli.common import (AllowMissingOpt, HomeOpt, ResamplesOpt, RunsOpt, SetOpt, SpecArg, StepsOpt, UseTunedOpt,
                               WeightOpt, _bag_options, _load, app, console, err_console, friendly_errors)
from ledger.errors import SpecError


@app.command()
@friendly_errors
def export(
    spec_path: SpecArg,
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (a Kaggle dataset, or a folder "
                                                     "inside one).")],
    run: RunsOpt = None,
    weight: WeightOpt = None,
    use_tuned: UseTunedOpt = False,
    steps: StepsOpt = 30,  # out_of_bag.DEFAULT_STEPS
    resamples: ResamplesOpt = 20,  # out_of_bag.DEFAULT_RESAMPLES
    max_size: Annotated[str, typer.Option("--max-size", help="Refuse a bundle larger than this (Kaggle datasets "
                                                             "have a size limit), e.g. 20GB, 100GiB.")] = "20GB",
    force: Annotated[bool, typer.Option("--force", help="Replace the --out folder if it is an earlier bundle.")] = False,
    allow_missing: AllowMissingOpt = False,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Write the bag `ledger ensemble` makes as a folder that predicts offline with torch, timm, numpy,
    pandas, Pillow and safetensors only: each run's weights and resolved entry, the bag's weights, a
    manifest with sha256 sums and the torch and timm versions, and predict.py. The runs must have been
    trained with `save_weights: true`.

    Then, in the notebook: python DIR/predict.py TEST_DIR SAMPLE_SUBMISSION OUT.csv

    Example: ledger export experiments/fashion.yaml --out bundles/fashion
    """
    from ledger.export.bundle import export_bag
    from ledger.units import format_size, parse_size
    from ledger.store.database import Store

    try:
        limit = parse_size(max_size)
    except ValueError as e:
        raise SpecError(f"--max-size {max_size!r}: {e}") from None
    spec = _load(spec_path, check_models=False, overrides=overrides)
    bundle = export_bag(spec, Store(home, existing=True), out,
                        _bag_options(run, weight, use_tuned, steps, resamples, allow_missing=allow_missing),
                        max_size=limit, force=force)
    for note in bundle.notes:
        err_console.print(f"note: {note}", markup=False)
    runs = ", ".join(f"{run_id} ({weight:.3f})" for run_id, weight in bundle.weights.items())
    console.print(f"wrote {bundle.folder}: {len(bundle.weights)} run(s): {runs}")
    console.print(f"size {format_size(bundle.size_bytes)} in {bundle.files} files (limit {max_size}); "
                  f"trained with torch {bundle.versions['torch']}, timm {bundle.versions['timm']}")
    console.print(f"predict: python {bundle.folder / 'predict.py'} TEST_DIR SAMPLE_SUBMISSION OUT.csv")
