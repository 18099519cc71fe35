"""The `ledger` command: a thin Typer layer that parses, loads the spec, calls one function, prints.

User errors (`LedgerError`) print as one line on stderr with a non-zero exit and no traceback.
"""

from __future__ import annotations

import dataclasses
import contextlib
import functools
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ledger import __version__
from ledger.errors import LedgerError, SpecError

# `--help` lists the commands in the order of a competitor's week, not in registration order
# (Typer puts every group after every command).
WORKFLOW = ("data", "check", "probe-memory", "lr-find", "train", "ensemble", "predict", "report", "runs",
            "submissions", "submit", "score")


class WorkflowOrder(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: WORKFLOW.index(name) if name in WORKFLOW else len(WORKFLOW))


app = typer.Typer(
    cls=WorkflowOrder,
    help="Experiment runner for Kaggle-style image classification: probe memory, train timm models with TTA, "
    "bag them into a submission, and keep a ledger of every run.\n\n"
    "Example: ledger data fashion-mnist data/fashion && ledger train experiments/fashion.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
)
data_app = typer.Typer(help="Write an embedded competition folder.\n\nExample: ledger data fashion-mnist data/fashion",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(highlight=False, soft_wrap=True)  # never fold lines in logs
err_console = Console(stderr=True, highlight=False)

# Options shared by several commands, written once.
SpecArg = Annotated[Path, typer.Argument(help="Experiment spec (YAML).", show_default=False)]
HomeOpt = Annotated[Optional[Path], typer.Option("--home", help="Ledger folder (default: $LEDGER_HOME or ./runs).")]
ModelOpt = Annotated[Optional[list[str]], typer.Option("--model", help="Only this model entry (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N (default: the first GPU, else CPU).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY.PATH=VALUE",
    help="Change one spec value before validation (repeatable; values are YAML), e.g. --set train.lr=0.003 "
         "--set models.vit.epochs=5 --set augment.do_flip=false.")]


def friendly_errors(command):
    """One clear line and the error's exit code instead of a traceback, for errors a user can fix."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LedgerError as error:
            err_console.print(f"error: {error}", style="red", markup=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"ledger {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Road to the Top in four commands."""


def _load(spec_path: Path, check_models: bool = True, overrides: list[str] | None = None, check_data: bool = False):
    from ledger.spec import load_spec

    return load_spec(spec_path, overrides or (), check_models=check_models, check_data=check_data)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- data, check, score


@data_app.command("fashion-mnist")
@friendly_errors
def data_fashion_mnist(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the competition into.")],
    seed: Annotated[int, typer.Option(help="Seed for the sample and the ids.")] = 0,
    train_per_class: Annotated[int, typer.Option("--train-per-class", help="Training images per class.")] = 500,
    test: Annotated[int, typer.Option("--test", help="Test images.")] = 1000,
    full: Annotated[bool, typer.Option("--full", help="Read Debian's dataset-fashion-mnist (70,000 images).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty folder.")] = False,
) -> None:
    """Write the embedded Fashion-MNIST competition (Kaggle layout, hidden solution.csv).

    Example: ledger data fashion-mnist data/fashion --train-per-class 500 --test 1000
    """
    from ledger.fashion import write_competition

    summary = write_competition(out_dir, seed=seed, train_per_class=train_per_class, test=test, full=full, force=force)
    console.print(f"wrote {summary['out_dir']}: {summary['train_images']} training images in {summary['classes']} "
                  f"classes, {summary['test_images']} test images (source {summary['source']})")


@app.command()
@friendly_errors
def check(spec_path: SpecArg, overrides: SetOpt = None) -> None:
    """Validate a spec and print it resolved (every model with its inherited train settings), with
    --set overrides applied; the data root must exist.

    Example: ledger check experiments/fashion.yaml --set train.lr=0.003 --set models.vit.epochs=5
    """
    from ledger.spec import dump_yaml

    spec = _load(spec_path, overrides=overrides, check_data=True)
    resolved = spec.to_dict()
    resolved.pop("path")
    # Plain writes, never wrapped: the output is YAML a script may read back.
    sys.stdout.write(dump_yaml(resolved))
    sys.stdout.write(f"# {spec_path}: valid, {len(spec.models)} model(s), {sum(m.runs for m in spec.models)} run(s)\n")


@app.command()
@friendly_errors
def score(
    submission: Annotated[Path, typer.Argument(help="Submission CSV.")],
    solution: Annotated[Path, typer.Argument(help="Solution CSV with the true labels.")],
    as_json: JsonOpt = False,
) -> None:
    """Accuracy of a submission against a solution file, with per-class figures.

    Example: ledger score submissions/fashion.csv data/fashion/solution.csv
    """
    from ledger.score import score_submission

    report = score_submission(submission, solution)
    if as_json:
        _print_json({"accuracy": report.accuracy, "n": report.n, "per_class": report.per_class.to_dict("records")})
        return
    table = Table("class", "images", "correct", "accuracy", title=f"{submission}")
    for row in report.per_class.itertuples():
        table.add_row(str(row.label), str(row.n), str(row.correct), f"{row.accuracy:.4f}")
    console.print(table)
    console.print(f"accuracy {report.accuracy:.4f} on {report.n} images  ({submission})")


# ---------------------------------------------------------------- train and runs


def _override(models, runs: int | None, epochs: int | None):
    changes = {k: v for k, v in (("runs", runs), ("epochs", epochs)) if v is not None}
    return tuple(dataclasses.replace(m, **changes) for m in models)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a preempted machine, `kill`) is handled exactly as Ctrl-C."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _device(name: str | None):
    from ledger.train import default_device, parse_device

    return parse_device(name) if name else default_device()


def _plan_table(plans, console_: Console) -> Table:
    from ledger.tables import Column, fit_table

    columns = [Column("run", is_id=True), Column("model"), Column("arch", drop=3), Column("size", drop=2),
               Column("split", drop=4), Column("train seed", drop=5), Column("accum"), Column("epochs", drop=1),
               Column("resume")]
    rows = [[p.run_id, p.model.name, p.model.arch, p.model.size_label, p.split.describe(), str(p.train_seed),
             str(p.accum) if p.accum else "auto", str(p.model.epochs), "yes" if p.resume else ""] for p in plans]
    return fit_table(console_, columns, rows, title="plan")


def _results_table(plans, results, console_: Console) -> Table:
    from ledger.memory import format_size
    from ledger.tables import Column, fit_table

    columns = [Column("run", is_id=True), Column("model"), Column("status"), Column("accuracy"),
               Column("time", drop=1), Column("peak", drop=2)]
    by_id, rows = {r.run_id: r for r in results}, []
    for p in plans:
        r = by_id.get(p.run_id)
        if r is None:
            continue
        s = r.summary
        accuracy = "" if s.get("accuracy") is None else f"{s['accuracy']:.4f}"
        seconds = s.get("train_seconds")
        rows.append([p.run_id, p.model.name, r.status if r.status == "done" else f"{r.status}: {r.error}",
                     accuracy, "" if seconds is None else f"{seconds:.0f}s",
                     "" if s.get("peak_bytes") is None else format_size(s["peak_bytes"])])
    return fit_table(console_, columns, rows, title="runs trained")


@app.command()
@friendly_errors
def train(
    spec_path: SpecArg,
    model: ModelOpt = None,
    runs: Annotated[Optional[int], typer.Option(min=1, help="Runs per model, overriding the spec.")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs, overriding the spec.")] = None,
    more: Annotated[int, typer.Option(min=0, help="Runs to add per model beyond what the spec asks for.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (runs owed, splits, seeds, accum); train nothing.")] = False,
    device: DeviceOpt = None,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Train the runs the spec still owes; each run gets its own split, artifacts and ledger row.

    Runs already done with the same recipe (fingerprint) count; a run killed part-way resumes from
    its last finished epoch. A second call trains nothing.

    Example: ledger train experiments/fashion.yaml --model convnext --more 2
    """
    from ledger.experiment import plan_experiment, train_experiment
    from ledger.probe import accum_resolver
    from ledger.progress import ConsoleEvents, ProbeDisplay
    from ledger.store import Store

    spec = _load(spec_path, overrides=overrides, check_data=True)
    models = _override(spec.select(model), runs, epochs)
    store = Store(home)
    torch_device = _device(device)
    if dry_run:
        plans = plan_experiment(spec, models, store, accum_resolver(spec, store, ProbeDisplay(console), torch_device,
                                                                    may_probe=False), more)
        console.print(_plan_table(plans, console))
        console.print(f"{len(plans)} run(s) owed; nothing trained (--dry-run)")
        return
    plans = plan_experiment(spec, models, store, accum_resolver(spec, store, ProbeDisplay(console), torch_device), more)
    if not plans:
        console.print(f"nothing to train: every run the spec asks for is done (ledger in {store.home}); "
                      "--more N adds runs")
        return
    results = []
    try:
        with _sigterm_as_interrupt(), ConsoleEvents(console, plans) as events:
            results = train_experiment(spec, plans, store, events, torch_device)
    except KeyboardInterrupt:
        done = len([r for r in store.runs(spec.name, status="done")])
        console.print(f"interrupted: {done} done run(s) kept; the run in progress resumes from its last finished "
                      f"epoch when you run the same command again")
        raise typer.Exit(130)
    console.print(_results_table(plans, results, console))
    failed = [r for r in results if r.status != "done"]
    console.print(f"{len(results) - len(failed)} run(s) done, {len(failed)} failed; ledger in {store.home}")
    if failed:
        raise typer.Exit(1)


def _runs_table(rows: list[dict], console_: Console) -> Table:
    """Accuracy (1 - error rate), the one name the console uses for the metric everywhere."""
    from ledger.memory import format_size
    from ledger.tables import Column, fit_table

    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    columns = [Column("id", is_id=True), Column("experiment", drop=3), Column("model"), Column("arch", drop=4),
               Column("size", drop=2), Column("seed", drop=6), Column("k", drop=5), Column("epochs", drop=5),
               Column("status"), Column("valid loss", drop=4), Column("accuracy"), Column("img/s", drop=6),
               Column("peak", drop=5), Column("device", drop=7)]
    table_rows = []
    for r in rows:
        status = r["status"] if r["status"] != "failed" else f"failed: {r['error'] or ''}"[:60]
        accuracy = None if r["error_rate"] is None else 1 - r["error_rate"]
        table_rows.append([r["id"], r["experiment"], r["model"], r["arch"], r["size"], str(r["split_seed"]),
                           str(r["accum"]), str(r["epochs"]), status, fmt(r["valid_loss"], ".4f"), fmt(accuracy, ".4f"),
                           fmt(r["images_per_s"], ".0f"), "" if r["peak_bytes"] is None else format_size(r["peak_bytes"]),
                           r["device"] or ""])
    return fit_table(console_, columns, table_rows, title="runs")


def _submissions_table(submissions: list[dict], console_: Console) -> Table:
    """The out-of-bag estimate against the leaderboard; the sha256 prefix tells whether the file on
    disk is still the one recorded, the run count which runs made it (ids in --json)."""
    from ledger.tables import Column, fit_table

    score = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    columns = [Column("id", is_id=True), Column("experiment", drop=3), Column("out-of-bag acc"),
               Column("public"), Column("private", drop=1), Column("runs", drop=4), Column("images scored", drop=5),
               Column("message", drop=2), Column("path", drop=6), Column("sha256", drop=7), Column("created", drop=6)]
    rows = [[s["id"], s["experiment"], _accuracy(s["oob_accuracy"]), score(s["public_score"]),
             score(s["private_score"]), str(len(s["runs"])), _coverage(s["oob_images"], s["train_images"]),
             s["message"] or "", s["path"], (s["sha256"] or "")[:12], s["created_at"]] for s in submissions]
    return fit_table(console_, columns, rows, title="submissions")


@app.command("runs")
@friendly_errors
def runs_command(
    experiment: Annotated[Optional[str], typer.Option(help="Only this experiment.")] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """What the ledger holds: runs, memory probes, and the submissions made from them.

    Example: ledger runs --experiment fashion --json
    """
    from ledger.store import Store

    store = Store(home, existing=True)
    if experiment:
        store.check_experiment(experiment)
    rows, submissions, probes = store.runs(experiment), store.submissions(experiment), store.probes(experiment)
    if as_json:
        for row in rows:
            row["spec"] = json.loads(row["spec"]) if row["spec"] else None
        _print_json({"runs": rows, "probes": probes, "submissions": submissions})
        return
    console.print(_runs_table(rows, console))
    if probes:
        from ledger.memory import format_size
        from ledger.tables import Column, fit_table

        columns = [Column("experiment", drop=2), Column("model"), Column("size"), Column("device", drop=3),
                   Column("budget"), Column("chosen k"), Column("trials", drop=4), Column("created", drop=5)]
        console.print(fit_table(console, columns, [
            [p["experiment"], p["model"], p["size"], p["device"], format_size(p["budget_bytes"]),
             "nothing fits" if p["chosen_k"] is None else str(p["chosen_k"]), str(len(p["trials"])), p["created_at"]]
            for p in probes], title="memory probes"))
    if submissions:
        console.print(_submissions_table(submissions, console))


# ---------------------------------------------------------------- probe and ensemble


def _budget(text: str | None) -> int | None:
    from ledger.memory import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as e:
        raise SpecError(f"--budget: {e}") from None


@app.command("probe-memory")
@friendly_errors
def probe_memory(
    spec_path: SpecArg,
    model: ModelOpt = None,
    budget: Annotated[Optional[str], typer.Option(help="Memory budget, e.g. 16GiB, 15.9GB, 800MiB (default: the spec's probe.budget).")] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = None,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Measure peak training memory on the smallest class and pick each model's accumulation factor.

    Each trial trains probe.steps real steps in a fresh child process, for k = 1, 2, 4, ... and stops at
    the first k whose peak fits the budget less probe.margin. `accum: auto` in train uses the choice.

    Example: ledger probe-memory experiments/fashion.yaml --budget 16GiB
    """
    from ledger.memory import format_size
    from ledger.probe import micro_batch_size, nothing_fits_message, probe_models, usable_bytes
    from ledger.progress import ProbeDisplay
    from ledger.store import Store

    spec = _load(spec_path, overrides=overrides, check_data=True)
    budget_bytes = _budget(budget) or spec.probe.budget_bytes
    store = Store(home)
    # With --json, stdout carries only the JSON: the trials show on stderr.
    probes = probe_models(spec, spec.select(model), store, budget_bytes, device=_device(device),
                          display=ProbeDisplay(err_console if as_json else console))
    limit = usable_bytes(budget_bytes, spec.probe.margin)
    if as_json:
        _print_json([
            {"model": p.model.name, "arch": p.model.arch, "size": p.model.size_label, "device": p.device,
             "budget_bytes": p.budget_bytes, "limit_bytes": limit, "chosen_k": p.result.chosen_k,
             "trials": [dataclasses.asdict(t) | {"fits": t.fits(limit)} for t in p.result.trials]}
            for p in probes])
    else:
        table = Table("model", "size", "k", "micro-batch", "peak", "fits", "seconds", "start-up s",
                      title=f"memory probe, budget {format_size(budget_bytes)} "
                            f"({format_size(limit)} usable), {probes[0].device if probes else ''}")
        for p in probes:
            for t in p.result.trials:
                verdict = "yes" if t.fits(limit) else ("OOM" if t.out_of_memory else ("error" if t.error else "no"))
                table.add_row(p.model.name, p.model.size_label, str(t.k), str(t.micro_batch),
                              "-" if t.peak_bytes is None else format_size(t.peak_bytes), verdict,
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


def _weights(pairs: list[str] | None) -> dict[str, float]:
    weights = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = float(value)
        except ValueError:
            raise SpecError(f"--weight {pair!r}: expected NAME=NUMBER, e.g. --weight vit=2") from None
    return weights


def _accuracy(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"  # value != value: nan


def _coverage(images: int | None, train_images: int | None) -> str:
    return "" if images is None else f"{images}/{train_images if train_images is not None else '?'}"


def _submission_json(submission) -> dict:
    estimate = submission.estimate
    data = {
        "oob_accuracy": None if estimate.accuracy != estimate.accuracy else estimate.accuracy,
        "oob_images": estimate.images,
        "train_images": estimate.train_images,
        "runs": list(submission.weights),
        "weights": submission.weights,
        "entry_weights": submission.entry_weights,
        "entries": {run_id: submission.selection.entry[run_id] for run_id in submission.weights},
        "excluded": [{"run_id": e.run_id, "reason": e.reason} for e in submission.excluded],
        "missing_entries": submission.selection.missing,
        "out": None if submission.path is None else str(submission.path),
        "sha256": submission.sha256,
        "submission_id": submission.submission_id,
    }
    if submission.tuned is not None:
        table = submission.comparison
        data["tuned"] = {"weights": submission.tuned.counts, "steps": submission.tuned.steps,
                         "comparison": [dict(row, accuracy=None if row["accuracy"] != row["accuracy"] else row["accuracy"])
                                        for row in table.to_dict("records")]}
    return data


def _print_submission(submission) -> None:
    rows_by_entry: dict[str, list[str]] = {}
    for run_id, entry in submission.selection.entry.items():
        rows_by_entry.setdefault(entry, []).append(run_id)
    table = Table("entry", "runs", "weight", "run ids", title="entries bagged")
    for entry, weight in submission.entry_weights.items():
        table.add_row(entry, str(len(rows_by_entry.get(entry, []))), f"{weight:.3f}", " ".join(rows_by_entry.get(entry, [])))
    console.print(table)
    if submission.excluded:
        from ledger.tables import Column, fit_table

        console.print(fit_table(console, [Column("run", is_id=True), Column("reason")],
                                [[e.run_id, e.reason] for e in submission.excluded], title="runs not bagged"))
    for entry in submission.selection.missing:
        console.print(f"note: entry {entry!r} has no done run of its current recipe; it is not in the bag")
    if submission.comparison is not None:
        table = Table("weights", "out-of-bag acc", "images", title="out-of-bag accuracy, all on the images every entry covers")
        for row in submission.comparison.itertuples():
            label = row.name if row.kind == "weights" else f"{row.name} alone"
            table.add_row(label, _accuracy(row.accuracy), _coverage(row.images, row.train_images))
        console.print(table)
        console.print("tuned weights (greedy selection on these same images, so its figure is optimistic); "
                      "to use them, paste into the spec's models or pass --use-tuned:")
        for entry, count in submission.tuned.counts.items():
            console.print(f"  {entry}: {count}")
    estimate = submission.estimate
    console.print(f"{len(submission.weights)} run(s); out-of-bag accuracy {_accuracy(estimate.accuracy)} on "
                  f"{_coverage(estimate.images, estimate.train_images)} training images (held out by every weighted entry)")
    if submission.path is not None:
        console.print(f"wrote {submission.path} (sha256 {submission.sha256[:12]}, submission {submission.submission_id})")


@app.command()
@friendly_errors
def ensemble(
    spec_path: SpecArg,
    out: Annotated[Optional[Path], typer.Option(help="Submission CSV (default: <ledger home>/submissions/<experiment>-<time>.csv).")] = None,
    weight: Annotated[Optional[list[str]], typer.Option("--weight", help="NAME=W: weight of a model entry, overriding the spec (repeatable).")] = None,
    run: Annotated[Optional[list[str]], typer.Option("--run", "--runs", help="Bag exactly this run (id or unique id prefix; repeatable).")] = None,
    tune_weights: Annotated[bool, typer.Option("--tune-weights", help="Search entry weights on the out-of-bag predictions (greedy selection) and print them; the spec is never written.")] = False,
    use_tuned: Annotated[bool, typer.Option("--use-tuned", help="Bag with the tuned weights instead of the spec's (implies --tune-weights).")] = False,
    steps: Annotated[int, typer.Option(min=1, max=1000, help="Greedy selection steps for --tune-weights.")] = 30,  # oob.DEFAULT_STEPS
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="A note kept with the submission in the ledger.")] = None,
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
    from ledger.store import Store
    from ledger.submission import make_submission

    spec = _load(spec_path, check_models=False, overrides=overrides)
    submission = make_submission(spec, Store(home, existing=True), run, _weights(weight), out, dry_run=dry_run,
                                 tune=tune_weights, use_tuned=use_tuned, steps=steps, message=message)
    if as_json:
        _print_json(_submission_json(submission))
    else:
        _print_submission(submission)


# ---------------------------------------------------------------- lr-find and report


def _lr_find_progress(console_: Console, model: str):
    """A rich bar on a terminal, a plain line every 10 batches otherwise (logs stay readable).
    Returns (callback, close)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    if not console_.is_terminal:
        def line(batch, total, lr, loss):
            if batch == 1 or batch % 10 == 0:
                console_.print(f"{model} lr-find batch {batch}/{total}: lr {lr:.2e}  smoothed loss {loss:.4f}",
                               highlight=False)
        return line, lambda: None
    bar = Progress(TextColumn(f"{model} lr-find"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("lr {task.fields[lr]:.2e}  loss {task.fields[loss]:.4f}"),
                   console=console_, transient=True)
    task = bar.add_task("", total=None, lr=0.0, loss=float("nan"))
    bar.start()
    return (lambda batch, total, lr, loss: bar.update(task, completed=batch, total=total, lr=lr, loss=loss)), bar.stop


@app.command("lr-find")
@friendly_errors
def lr_find_command(
    spec_path: SpecArg,
    model: Annotated[Optional[str], typer.Option("--model", help="Model entry to test (may be left out when the spec has one).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Plot PNG (default: <home>/<experiment>/lr_find/<id>-<model>.png).")] = None,
    num_it: Annotated[int, typer.Option("--num-it", min=6, help="Mini-batches (effective batches) to try.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help='Print only {"suggestions": {...}, "plot": PATH}.')] = False,
    device: DeviceOpt = None,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """fastai's learning-rate range test: suggestions (valley, slide, minimum/10, steep) and a plot.

    Trains a fresh model (head only with finetune: true) for up to --num-it batches at learning
    rates growing exponentially from 1e-7 to 10, stops when the smoothed loss passes 4x its minimum,
    then throws the model away. The result is recorded in the ledger.

    Example: ledger lr-find experiments/fashion.yaml --model convnext --json
    """
    from ledger.lr_find import lr_find
    from ledger.probe import accum_resolver
    from ledger.progress import ProbeDisplay
    from ledger.store import Store

    spec = _load(spec_path, overrides=overrides)
    if model is None and len(spec.models) != 1:
        raise SpecError(f"{spec_path}: --model is needed: the spec has {len(spec.models)} models "
                        f"({', '.join(m.name for m in spec.models)})")
    entry = spec.model(model) if model else spec.models[0]
    store = Store(home)
    # With --json stdout carries only the JSON: every message goes to stderr.
    chatter = err_console if as_json else console
    torch_device = _device(device)
    accum = accum_resolver(spec, store, ProbeDisplay(chatter), torch_device)(entry)
    progress, close = _lr_find_progress(chatter, entry.name)
    try:
        result = lr_find(spec, entry, store, accum, out=out, device=torch_device, num_it=num_it, progress=progress)
    finally:
        close()
    if as_json:
        _print_json({"suggestions": result.suggested_lrs(), "plot": str(result.plot)})
        return
    table = Table("method", "suggested lr", title=f"lr-find {entry.name}: {len(result.test.lrs)} batches, "
                                                  f"stopped: {result.test.stopped}")
    for name, lr in result.suggested_lrs().items():
        table.add_row("minimum/10" if name == "minimum" else name, "-" if lr is None else f"{lr:.2e}")
    console.print(table)
    console.print(f"plot {result.plot}; recorded as {result.id} in {store.home}")


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
    from ledger.report import write_report
    from ledger.store import Store

    spec = _load(spec_path, check_models=False, overrides=overrides)
    result = write_report(spec, Store(home, existing=True), out, run=run, top_losses=top_losses)
    for section in result.sections:
        console.print(f"{section.heading}: accuracy {section.interp.accuracy:.4f} on {len(section.interp.ids)} images")
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
    device: DeviceOpt = None,
    overrides: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Class probabilities and labels for new images from runs that kept their weights.

    Example: ledger predict 20260101-1200 new_images/ --out predictions.csv --no-tta
    """
    from ledger.predict import image_paths, members_of_run, members_of_spec, predict_images, write_csv
    from ledger.progress import StageDisplay
    from ledger.store import Store

    store = Store(home, existing=True)
    is_spec = target.endswith((".yaml", ".yml")) or Path(target).is_file()
    members = members_of_spec(_load(Path(target), check_models=False, overrides=overrides), store) if is_spec \
        else members_of_run(store, target)
    paths = image_paths(images)
    with StageDisplay(console) as stage:
        prediction = predict_images(members, paths, _device(device), use_tta=use_tta, stage=stage)
    written = write_csv(prediction, out)
    runs = ", ".join(f"{run_id} ({weight:.3f})" for run_id, weight in prediction.weights.items())
    console.print(f"wrote {written}: {len(prediction.ids)} image(s), {len(prediction.vocab)} classes, "
                  f"from {len(prediction.weights)} run(s): {runs}")


# ---------------------------------------------------------------- the leaderboard

submissions_app = typer.Typer()  # its help is the callback's docstring, with its example
app.add_typer(submissions_app, name="submissions")
SubmissionArg = Annotated[str, typer.Argument(help="Submission id, or any unique prefix of it.", show_default=False)]


@submissions_app.callback(invoke_without_command=True)
@friendly_errors
def submissions_list(
    ctx: typer.Context,
    experiment: Annotated[Optional[str], typer.Option(help="Only this experiment.")] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Every submission: its out-of-bag estimate beside the public and private scores Kaggle gave it.

    Example: ledger submissions --experiment fashion
    """
    if ctx.invoked_subcommand is not None:
        return
    from ledger.store import Store

    store = Store(home, existing=True)
    if experiment:
        store.check_experiment(experiment)
    rows = store.submissions(experiment)
    if as_json:
        _print_json(rows)
    else:
        console.print(_submissions_table(rows, console))


@submissions_app.command("score")
@friendly_errors
def submissions_score(
    submission_id: SubmissionArg,
    public: Annotated[float, typer.Argument(help="Public leaderboard score.", show_default=False)],
    private: Annotated[Optional[float], typer.Argument(help="Private leaderboard score (after the deadline).")] = None,
    home: HomeOpt = None,
) -> None:
    """Record the scores Kaggle gave a submission, next to its out-of-bag estimate.

    Example: ledger submissions score 20260101-1200 0.9712 0.9698
    """
    from ledger.leaderboard import record_scores
    from ledger.store import Store

    row = record_scores(Store(home, existing=True), submission_id, public, private)
    private_text = "" if row.get("private_score") is None else f", private {row['private_score']:.4f}"
    console.print(f"submission {row['id']}: out-of-bag {_accuracy(row['oob_accuracy'])}, "
                  f"public {row['public_score']:.4f}{private_text}")


@app.command()
@friendly_errors
def submit(
    submission_id: SubmissionArg,
    message: Annotated[str, typer.Option("--message", "-m", help="The submission's description on Kaggle.")],
    competition: Annotated[Optional[str], typer.Option(
        envvar="LEDGER_COMPETITION", help="Kaggle competition slug, e.g. paddy-disease-classification.")] = None,
    home: HomeOpt = None,
) -> None:
    """Hand a recorded submission's CSV to `kaggle competitions submit` and keep the message and
    kaggle's exit status in the ledger (kaggle is not a dependency: `pip install kaggle`).

    Example: ledger submit 20260101-1200 -m "convnext + vit, tuned weights" --competition paddy-disease-classification
    """
    from ledger.leaderboard import submit as hand_to_kaggle
    from ledger.store import Store

    handed = hand_to_kaggle(Store(home, existing=True), submission_id, message, competition)
    if handed.output:
        console.print(handed.output, markup=False)
    row = handed.submission
    if handed.exit_code != 0:
        raise LedgerError(f"kaggle exited with status {handed.exit_code} for submission {row['id']} "
                          f"({row['path']}); the attempt is recorded")
    console.print(f"submission {row['id']} handed to kaggle ({row['competition']}); when it is scored: "
                  f"ledger submissions score {row['id']} PUBLIC")
