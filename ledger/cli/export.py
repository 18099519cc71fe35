"""`ledger export`: a bag as an offline inference bundle for a code competition."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ledger.cli.common import HomeOpt, SetOpt, SpecArg, _load, app, console, err_console, friendly_errors
from ledger.cli.ensemble import _weights
from ledger.errors import SpecError


@app.command()
@friendly_errors
def export(
    spec_path: SpecArg,
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (a Kaggle dataset, or a folder "
                                                     "inside one).")],
    run: Annotated[Optional[list[str]], typer.Option("--run", "--runs", help="Bag exactly this run (id or unique id "
                                                                              "prefix; repeatable), as ensemble does.")] = None,
    weight: Annotated[Optional[list[str]], typer.Option("--weight", help="NAME=W: weight of a model entry, overriding "
                                                                          "the spec (repeatable).")] = None,
    use_tuned: Annotated[bool, typer.Option("--use-tuned", help="Bag with the greedy out-of-bag weights, as "
                                                                 "`ensemble --use-tuned` does.")] = False,
    steps: Annotated[int, typer.Option(min=1, max=1000, help="Greedy selection steps for --use-tuned.")] = 30,
    max_size: Annotated[str, typer.Option("--max-size", help="Refuse a bundle larger than this (Kaggle datasets "
                                                             "have a size limit), e.g. 20GB, 100GiB.")] = "20GB",
    force: Annotated[bool, typer.Option("--force", help="Replace the --out folder if it is an earlier bundle.")] = False,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Bag the runs there are while others of the "
                                                                         "spec still train or lost their folder.")] = False,
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
    bundle = export_bag(spec, Store(home, existing=True), out, run, _weights(weight), use_tuned=use_tuned,
                        steps=steps, max_size=limit, force=force, allow_missing=allow_missing)
    for note in bundle.notes:
        err_console.print(f"note: {note}", markup=False)
    runs = ", ".join(f"{run_id} ({weight:.3f})" for run_id, weight in bundle.weights.items())
    console.print(f"wrote {bundle.folder}: {len(bundle.weights)} run(s): {runs}")
    console.print(f"size {format_size(bundle.size_bytes)} in {bundle.files} files (limit {max_size}); "
                  f"trained with torch {bundle.versions['torch']}, timm {bundle.versions['timm']}")
    console.print(f"predict: python {bundle.folder / 'predict.py'} TEST_DIR SAMPLE_SUBMISSION OUT.csv")
