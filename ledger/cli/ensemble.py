"""`ledger ensemble`, `predict` and `report`: what the finished runs make."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ledger.cli.common import (AllowMissingOpt, DeviceOpt, HomeOpt, ResamplesOpt, RunsOpt, SetOpt, SpecArg, StepsOpt,
                               UseTunedOpt, WeightOpt, _accuracy, _bag_options, _coverage, _device, _load, _print_json,
                               app, console, friendly_errors)
from ledger.errors import SpecError

def _number(value: float) -> float | None:
    return None if value != value else value  # nan (no image scored) is null in JSON


def _submission_json(submission) -> dict:
    estimate = submission.estimate
    data = {
        "metric": estimate.metric,
        "oob_score": _number(estimate.score),
        "oob_accuracy": _number(estimate.accuracy),
        "oob_images": estimate.images,
        "train_images": estimate.train_images,
        "oob_by_runs": [] if submission.gain is None else [
            {k: _number(v) if isinstance(v, float) else v for k, v in row.items()}
            for row in submission.gain.to_dict("records")],
        "shape": None if submission.shape is None else submission.shape.kind,
        "columns": None if submission.shape is None else list(submission.shape.columns),
        "runs": list(submission.weights),
        "weights": submission.weights,
        "entry_weights": submission.entry_weights,
        "entries": {run_id: submission.selection.entry[run_id] for run_id in submission.weights},
        "excluded": [{"run_id": e.run_id, "reason": e.reason} for e in submission.excluded],
        "missing_entries": submission.selection.missing,
        "out": None if submission.path is None else str(submission.path),
        "sha256": submission.sha256,
        "submission_id": submission.submission_id,
        "decision": None if submission.decision is None else submission.decision.to_dict(),
    }
    if submission.tuned is not None:
        table = submission.comparison
        data["tuned"] = {"weights": submission.tuned.weights, "picked": submission.tuned.picked,
                         "passes": submission.tuned.passes, "steps": submission.tuned.steps,
                         "comparison": [dict(row, score=_number(row["score"]), accuracy=_number(row["accuracy"]))
                                        for row in table.to_dict("records")]}
    return data


def _figure(metric: str, score: float, accuracy: float) -> str:
    """'log_loss 0.3012 (accuracy 0.9100)', or 'accuracy 0.9100' when the metric is accuracy (or
    the task, tags or numbers, has no accuracy)."""
    beside = "" if metric == "accuracy" or accuracy != accuracy else f" (accuracy {_accuracy(accuracy)})"
    return f"{metric} {_accuracy(score)}{beside}"


def _print_submission(submission) -> None:
    rows_by_entry: dict[str, list[str]] = {}
    for run_id, entry in submission.selection.entry.items():
        rows_by_entry.setdefault(entry, []).append(run_id)
    table = Table("entry", "runs", "weight", "run ids", title="entries bagged")
    for entry, weight in submission.entry_weights.items():
        table.add_row(entry, str(len(rows_by_entry.get(entry, []))), f"{weight:.3f}", " ".join(rows_by_entry.get(entry, [])))
    console.print(table)
    if submission.excluded:
        from ledger.cli.tables import Column, fit_table

        console.print(fit_table(console, [Column("run", is_id=True), Column("reason")],
                                [[e.run_id, e.reason] for e in submission.excluded], title="runs not bagged"))
    for entry in submission.selection.missing:
        console.print(f"note: entry {entry!r} has no done run of its current recipe; it is not in the bag")
    metric = submission.estimate.metric
    task_accuracy = submission.estimate.accuracy == submission.estimate.accuracy or submission.estimate.images == 0
    extra = () if metric == "accuracy" or not task_accuracy else ("accuracy",)
    if submission.comparison is not None:
        table = Table("weights", f"out-of-bag {metric}", *extra, "images",
                      title=f"out-of-bag {metric}, all on the images every entry covers")
        for row in submission.comparison.itertuples():
            label = row.name if row.kind == "weights" else f"{row.name} alone"
            table.add_row(label, _accuracy(row.score), *(_accuracy(row.accuracy) for _ in extra),
                          _coverage(row.images, row.train_images))
        console.print(table)
        tuned = submission.tuned
        how = "one pass on these images" if tuned.passes == 1 else \
            f"the mean of {tuned.passes} passes, each on a bootstrap resample of these images"
        console.print(f"tuned weights (greedy selection on {metric}, {how}, so its figure is optimistic); "
                      "to use them, paste into the spec's models or pass --use-tuned:")
        for entry, share in tuned.weights.items():
            console.print(f"  {entry}: {share:g}" + (f"  (weighted by {tuned.picked[entry]} of {tuned.passes} passes)"
                                                     if tuned.passes > 1 else ""))
    if submission.gain is not None:
        table = Table("runs averaged per entry", "images", f"{metric}", f"{metric}, one run per entry",
                      title="the bagging gain: images held out by several runs of every weighted entry")
        for row in submission.gain.itertuples():
            table.add_row(str(row.runs), str(row.images), _accuracy(row.score), _accuracy(row.one_run_score))
        console.print(table)
    estimate = submission.estimate
    console.print(f"{len(submission.weights)} run(s); out-of-bag {_figure(metric, estimate.score, estimate.accuracy)} "
                  f"on {_coverage(estimate.images, estimate.train_images)} training images held out by every "
                  f"weighted entry, each predicted only by the runs that held it out (one per entry with K "
                  f"folds, where the submission averages all K)")
    if submission.decision is not None:
        console.print(f"decided with {submission.decision.describe(list(submission.result.vocab))}, chosen on "
                      f"those held-out images")
    if submission.path is not None:
        shape = f", {submission.shape.describe()}" if submission.shape is not None else ""
        console.print(f"wrote {submission.path} (sha256 {submission.sha256[:12]}, submission "
                      f"{submission.submission_id}{shape})")


@app.command()
@friendly_errors
def ensemble(
    spec_path: SpecArg,
    out: Annotated[Optional[Path], typer.Option(help="Submission CSV (default: a new file in <home>/submissions/ named <experiment>-<time>.csv).")] = None,
    weight: WeightOpt = None,
    run: RunsOpt = None,
    tune_weights: Annotated[bool, typer.Option("--tune-weights", help="Search entry weights on the out-of-bag predictions (greedy selection) and print them; the spec is never written.")] = False,
    use_tuned: UseTunedOpt = False,
    steps: StepsOpt = 30,  # out_of_bag.DEFAULT_STEPS
    resamples: ResamplesOpt = 20,  # out_of_bag.DEFAULT_RESAMPLES
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="A note kept with the submission in the ledger.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file (never a recorded submission, the data or the ledger).")] = False,
    allow_missing: AllowMissingOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print runs, weights and out-of-bag figures; write nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts instead of tables.")] = False,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Bag the current spec's finished runs into a submission CSV, with an out-of-bag estimate.

    Only done runs whose fingerprint matches an entry of the spec are bagged; others are listed with
    the reason. The bag is a weighted mean of entries, each the mean of its runs' TTA probabilities,
    checked against the sample submission's ids, order and columns and recorded in the ledger with
    its runs, weights, out-of-bag figure and the CSV's sha256.

    Example: ledger ensemble experiments/fashion.yaml --tune-weights --dry-run
    """
    from ledger.store.database import Store
    from ledger.bag.submission import make_submission

    spec = _load(spec_path, check_models=False, overrides=overrides)
    options = _bag_options(run, weight, use_tuned, steps, resamples, tune=tune_weights, allow_missing=allow_missing)
    submission = make_submission(spec, Store(home, existing=True), options, out, dry_run=dry_run, message=message,
                                 force=force)
    if as_json:
        _print_json(_submission_json(submission))
    else:
        _print_submission(submission)


@app.command()
@friendly_errors
def report(
    spec_path: SpecArg,
    out: Annotated[Path, typer.Option(help="Folder for report.html and its pictures and tables.")],
    run: Annotated[Optional[str], typer.Option("--run", help="Only this run (a unique id prefix is enough).")] = None,
    top_losses: Annotated[int, typer.Option("--top-losses", min=0, help="Images in each top-losses grid.")] = 9,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """What the finished runs got wrong: confusion matrices, most confused, per-class accuracy,
    training curves and top losses, for each run and for their bag, in one report.html.

    Example: ledger report experiments/fashion.yaml --out reports/fashion
    """
    from ledger.report.page import write_report
    from ledger.runs.outputs import REPORT, guard_output
    from ledger.store.database import Store

    spec = _load(spec_path, check_models=False, overrides=overrides)
    store = Store(home, existing=True)
    out = guard_output(out, REPORT, spec=spec, homes=[store.home])  # an empty folder or an earlier report's
    result = write_report(spec, store, out, run=run, top_losses=top_losses)
    for section in result.sections:
        console.print(f"{section.heading}: TTA {section.figures} on {len(section.interp.ids)} held-out images")
    console.print(f"wrote {result.html}")


# ---------------------------------------------------------------- predict


@app.command()
@friendly_errors
def predict(
    target: Annotated[str, typer.Argument(metavar="RUN_OR_SPEC", show_default=False,
                                          help="A run id (or unique prefix) trained with save_weights: true, or a "
                                               "spec: then its bag, chosen and weighted as `ledger ensemble` does.")],
    images: Annotated[Path, typer.Argument(metavar="IMAGES_OR_FOLDER", show_default=False,
                                           help="An image file, or a folder of images.")],
    out: Annotated[Path, typer.Option(help="CSV to write: id, label, one probability column per class.")],
    use_tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Test-time augmentation as each run's spec says, "
                                                                  "or the plain pass only.")] = True,
    run: RunsOpt = None,
    weight: WeightOpt = None,
    use_tuned: UseTunedOpt = False,
    steps: StepsOpt = 30,  # out_of_bag.DEFAULT_STEPS
    resamples: ResamplesOpt = 20,  # out_of_bag.DEFAULT_RESAMPLES
    allow_missing: AllowMissingOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    device: DeviceOpt = None,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Class probabilities and labels for new images from runs that kept their weights.

    Given a spec, it bags the runs `ledger ensemble` bags with the same --run, --weight, --use-tuned,
    --steps and --allow-missing. Each image's TTA is keyed to the image, so an image gets the same probabilities
    alone, in any folder, and in the ensemble's submission.

    Example: ledger predict experiments/fashion.yaml new_images/ --out predictions.csv --use-tuned
    """
    from ledger.export.predict import image_paths, members_of_run, members_of_spec, predict_images, write_csv
    from ledger.cli.progress import StageDisplay
    from ledger.runs.outputs import FILE, guard_output, reserved
    from ledger.store.database import Store

    store = Store(home, existing=True)
    is_spec = target.endswith((".yaml", ".yml")) or Path(target).is_file()
    if not is_spec and (run or weight or use_tuned or allow_missing):
        raise SpecError("--run, --weight, --use-tuned and --allow-missing choose a spec's bag; give a spec, "
                        "not a run id")
    spec = _load(Path(target), check_models=False, overrides=overrides) if is_spec else None
    paths = image_paths(images)
    out = guard_output(out, FILE, spec=spec, homes=[store.home], reads=[images], force=force)
    members, decision = members_of_spec(spec, store, _bag_options(run, weight, use_tuned, steps, resamples,
                                                                  allow_missing=allow_missing)) \
        if is_spec else (members_of_run(store, target), None)
    with StageDisplay(console) as stage:
        prediction = predict_images(members, paths, _device(device), use_tta=use_tta, stage=stage, decision=decision)
    with reserved(out):
        written = write_csv(prediction, guard_output(out, FILE, spec=spec, homes=[store.home], reads=[images],
                                                     force=force))  # again: the file may have appeared since
    runs = ", ".join(f"{run_id} ({weight:.3f})" for run_id, weight in prediction.weights.items())
    console.print(f"wrote {written}: {len(prediction.ids)} image(s), {len(prediction.vocab)} classes, "
                  f"from {len(prediction.weights)} run(s): {runs}")
