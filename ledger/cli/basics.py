"""`ledger data`, `check`, `schema` and `score`: the competition folder, the spec, and scoring a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ledger.cli.common import (JsonOpt, SetOpt, SpecArg, _load, _print_json, app, console, data_app, err_console,
                               friendly_errors)
from ledger.bag.metrics import DEFAULT_METRIC, NAMES as METRIC_NAMES, format_score
from ledger.errors import LedgerError



# The options the embedded competitions' writers share.
OutDirArg = Annotated[Path, typer.Argument(help="Folder to write the competition into.")]
TestImagesOpt = Annotated[int, typer.Option("--test", help="Test images.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a non-empty folder.")]
TrainImagesOpt = Annotated[int, typer.Option("--train", help="Training images.")]
SceneSeedOpt = Annotated[int, typer.Option(help="Seed for the scenes and the ids.")]


@data_app.command("fashion-mnist")
@friendly_errors
def data_fashion_mnist(
    out_dir: OutDirArg,
    seed: Annotated[int, typer.Option(help="Seed for the sample and the ids.")] = 0,
    train_per_class: Annotated[int, typer.Option("--train-per-class", help="Training images per class.")] = 500,
    test: TestImagesOpt = 1000,
    full: Annotated[bool, typer.Option("--full", help="Read Debian's dataset-fashion-mnist (70,000 images).")] = False,
    force: ForceOpt = False,
) -> None:
    """Write the embedded Fashion-MNIST competition (Kaggle layout, hidden solution.csv).

    Example: ledger data fashion-mnist data/fashion --train-per-class 500 --test 1000
    """
    from ledger.data.fashion_mnist import write_competition

    summary = write_competition(out_dir, seed=seed, train_per_class=train_per_class, test=test, full=full, force=force)
    console.print(f"wrote {summary['out_dir']}: {summary['train_images']} training images in {summary['classes']} "
                  f"classes, {summary['test_images']} test images (source {summary['source']})")


@data_app.command("fashion-tags")
@friendly_errors
def data_fashion_tags(
    out_dir: OutDirArg,
    train: TrainImagesOpt = 4000,
    test: TestImagesOpt = 1000,
    seed: SceneSeedOpt = 0,
    layout: Annotated[str, typer.Option("--layout", help="tags: one column of space-separated tags (Planet); "
                                                         "columns: a 0/1 column per tag (CheXpert).")] = "tags",
    force: ForceOpt = False,
) -> None:
    """Write a multi-label competition: 0 to 3 Fashion-MNIST items of different classes per image,
    tagged with the classes present (a tenth of the images hold none).

    Example: ledger data fashion-tags data/fashion-tags --train 4000 --test 1000
    """
    from ledger.data.task_competitions import write_tags_competition

    summary = write_tags_competition(out_dir, seed=seed, train=train, test=test, layout=layout, force=force)
    console.print(f"wrote {summary['out_dir']}: {summary['train_images']} training images, "
                  f"{summary['test_images']} test images, {summary['target']}")


@data_app.command("fashion-size")
@friendly_errors
def data_fashion_size(
    out_dir: OutDirArg,
    train: TrainImagesOpt = 4000,
    test: TestImagesOpt = 1000,
    seed: SceneSeedOpt = 0,
    grades: Annotated[bool, typer.Option("--grades", help="An ordinal grade 0-4 (the size in five equal bins) "
                                                          "instead of the size.")] = False,
    force: ForceOpt = False,
) -> None:
    """Write a regression competition: one Fashion-MNIST item per image at a random scale; the target
    `size` is its longest edge in pixels, 12 to 36.

    Example: ledger data fashion-size data/fashion-size --train 4000 --test 1000
    """
    from ledger.data.task_competitions import write_size_competition

    summary = write_size_competition(out_dir, seed=seed, train=train, test=test, grades=grades, force=force)
    console.print(f"wrote {summary['out_dir']}: {summary['train_images']} training images, "
                  f"{summary['test_images']} test images, target {summary['target']}")


@app.command()
@friendly_errors
def check(spec_path: SpecArg, overrides: SetOpt = None) -> None:
    """Validate a spec and print it resolved (every model with its inherited train settings), with
    --set overrides applied; the data root must exist, and the spec's metric must be able to score
    the submission its sample submission asks for.

    Example: ledger check experiments/fashion.yaml --set train.lr=0.003 --set models.vit.epochs=5
    """
    from ledger.spec.loader import dump_yaml
    from ledger.bag.submission import check_spec_shape

    from ledger.data import sanity
    from ledger.data.competition import load_competition

    spec = _load(spec_path, overrides=overrides, check_data=True)
    shape = check_spec_shape(spec)  # None without a sample submission: nothing to check yet
    if shape is not None:  # the folder is whole enough to read: what would fail only after training
        competition = load_competition(spec.data)
        sanity.check_groups(competition, spec.split)
        for warning in sanity.warnings(spec, competition):
            err_console.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    resolved = spec.to_dict()
    resolved.pop("path")
    resolved["data"].pop("task")  # the top-level task, which the data section carries for reading labels
    # Plain writes, never wrapped: the output is YAML a script may read back.
    sys.stdout.write(dump_yaml(resolved))
    scored = f"; metric {spec.metric}, submission: {shape.describe()}" if shape else ""
    sys.stdout.write(f"# {spec_path}: valid, {len(spec.models)} model(s), {sum(m.runs for m in spec.models)} run(s)"
                     f"{scored}\n")


@app.command()
@friendly_errors
def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the reference of every key (docs/spec.md) "
                                                              "instead.")] = False,
) -> None:
    """Print the spec's JSON Schema (draft 2020-12), which editors check a spec with as it is typed.

    docs/spec.schema.json is its copy, and --markdown prints docs/spec.md, the reference of every
    key. `ledger check` stays the full check: paths, timm architectures, the sample submission.

    Example: ledger schema > docs/spec.schema.json
    """
    if markdown:
        from ledger.spec.reference import spec_markdown

        sys.stdout.write(spec_markdown())
    else:
        from ledger.spec.schema import schema_text

        sys.stdout.write(schema_text())


@app.command()
@friendly_errors
def score(
    submission: Annotated[Path, typer.Argument(help="Submission CSV.")],
    solution: Annotated[Path, typer.Argument(help="Solution CSV with the true labels.")],
    metric: Annotated[Optional[str], typer.Option(
        help=f"The competition's metric: {', '.join(METRIC_NAMES)}; with tags f1_samples, f2_samples, f1_macro, "
             "roc_auc, log_loss; with numbers rmse, mae, qwk (default: accuracy for a label column, log_loss for "
             "probabilities, f2_samples for tags, rmse for numbers).")] = None,
    class_order: Annotated[Optional[str], typer.Option(
        "--class-order", help="The classes in order, comma-separated (qwk; with two classes the last is the "
                              "positive one). Default: sorted, numerically when every class is a number.")] = None,
    task: Annotated[str, typer.Option(help="single_label, multi_label (tags) or regression (numbers); default: "
                                           "multi_label for f1_samples and f2_samples, regression for rmse and mae, "
                                           "else single_label.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """The competition's metric of a submission against a solution file, with accuracy per class
    (per tag, or the RMSE per target).

    Example: ledger score submissions/fashion.csv data/fashion/solution.csv --metric f1_macro
    """
    from ledger.bag.score import score_submission, score_vectors

    from ledger.bag.task_metrics import TASK_METRICS

    # A metric only one task has names it (f2_samples: tags; rmse: numbers); the others mean classes.
    task = task or next((name for name, metrics in TASK_METRICS.items()
                         if metric in metrics and metric not in METRIC_NAMES), "single_label")
    if task not in ("single_label", "multi_label", "regression"):
        raise LedgerError(f"--task {task!r}: expected single_label, multi_label or regression")
    if task != "single_label":
        report = score_vectors(submission, solution, metric or DEFAULT_METRIC[task], task)
        if as_json:
            _print_json({"metric": report.metric, "score": None if report.score != report.score else report.score,
                         "n": report.n, "task": task, "per_target": report.per_class.to_dict("records")})
            return
        console.print(f"{report.metric} {format_score(report.score)} on {report.n} images  ({submission})")
        return
    order = None if class_order is None else [c.strip() for c in class_order.split(",")]
    report = score_submission(submission, solution, metric, order)
    if as_json:
        _print_json({"metric": report.metric, "score": None if report.score != report.score else report.score,
                     "accuracy": report.accuracy, "n": report.n, "shape": report.shape,
                     "per_class": report.per_class.to_dict("records")})
        return
    table = Table("class", "images", "correct", "accuracy", title=f"{submission}")
    for row in report.per_class.itertuples():
        table.add_row(str(row.label), str(row.n), str(row.correct), f"{row.accuracy:.4f}")
    console.print(table)
    beside = "" if report.metric == "accuracy" else f"{report.metric} {format_score(report.score)}, "
    console.print(f"{beside}accuracy {report.accuracy:.4f} on {report.n} images  ({submission})")
