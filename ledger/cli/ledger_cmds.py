"""`ledger runs`, `submissions` and `submit`: reading the ledger, and the leaderboard in it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ledger.store.rows import RunRow, RunStatus
from ledger.cli.common import (HomeOpt, JsonOpt, _accuracy, _coverage, _print_json, app, console, err_console,
                               friendly_errors)
from ledger.errors import LedgerError


def _runs_table(rows: list[RunRow], console_: Console) -> Table:
    """Accuracy (1 - error rate), the one name the console uses for the metric everywhere."""
    from ledger.cli.tables import Column, fit_table, shorten

    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731

    # The accuracy is the last epoch's, without TTA (`report` shows the TTA'd one): so labelled.
    columns = [Column("id", is_id=True), Column("experiment", drop=3), Column("model"), Column("arch", drop=4),
               Column("size", drop=2), Column("seed", drop=6), Column("k", drop=5), Column("epochs", drop=5),
               Column("status"), Column("valid loss", drop=4), Column("acc no TTA"), Column("img/s", drop=6),
               Column("peak", drop=5), Column("predicted", drop=5), Column("device", drop=7)]
    table_rows = []
    for r in rows:
        status = r.status if r.status not in (RunStatus.FAILED, RunStatus.MISSING) else shorten(f"{r.status}: {r.error or ''}", 60)
        table_rows.append([r.id, r.experiment, r.model, r.arch, r.size, str(r.split_seed),
                           str(r.accum), str(r.epochs), status, fmt(r.valid_loss, ".4f"), fmt(r.accuracy, ".4f"),
                           fmt(r.images_per_s, ".0f"), _peak(r), _predicted(r), r.device or ""])
    return fit_table(console_, columns, table_rows, title="runs")


def _peak(row: RunRow) -> str:
    """The measured peak; flagged when it went over the probe's prediction by more than the margin."""
    from ledger.units import format_size

    if row.peak_bytes is None:
        return ""
    return format_size(row.peak_bytes) + (" (over the probe)" if row.peak_over_prediction else "")


def _predicted(row: RunRow) -> str:
    """The probe's predicted peak for the run's configuration, and how far the measured one is from it."""
    from ledger.units import format_size

    if not row.predicted_peak_bytes:
        return ""
    text = format_size(row.predicted_peak_bytes)
    return f"{text}: {row.peak_vs_prediction}" if row.peak_vs_prediction else text


def _submissions_table(submissions: list, console_: Console) -> Table:
    """The out-of-bag estimate (on the competition's metric, accuracy beside it) against the
    leaderboard; the sha256 prefix tells whether the file on disk is still the one recorded, the run
    count which runs made it (ids in --json)."""
    from ledger.cli.tables import Column, fit_table

    score = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    columns = [Column("id", is_id=True), Column("experiment", drop=3), Column("metric"), Column("out-of-bag"),
               Column("oob acc", drop=5), Column("public"), Column("private", drop=1), Column("runs", drop=4),
               Column("images scored", drop=5), Column("message", drop=2), Column("path", drop=6),
               Column("sha256", drop=7), Column("created", drop=6)]
    rows = []
    for s in submissions:
        metric, oob = s.oob
        rows.append([s.id, s.experiment, metric, _accuracy(oob), _accuracy(s.oob_accuracy),
                     score(s.public_score), score(s.private_score), str(len(s.runs)),
                     _coverage(s.oob_images, s.train_images), s.message or "", s.path,
                     (s.sha256 or "")[:12], s.created_at])
    return fit_table(console_, columns, rows, title="submissions")


@app.command("runs")
@friendly_errors
def runs_command(
    experiment: Annotated[Optional[str], typer.Option(help="Only this experiment.")] = None,
    as_json: JsonOpt = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Re-record the finished runs from their folders (after "
                                                             "ledger.db was lost), then show the ledger.")] = False,
    home: HomeOpt = None,
) -> None:
    """What the ledger holds: runs, memory probes, and the submissions made from them.

    Example: ledger runs --experiment fashion --json
    """
    from ledger.store.database import Store

    if rebuild:
        from ledger.runs.rebuild import rebuild as rebuild_runs

        found = rebuild_runs(Store(home, rebuild=True))
        (err_console if as_json else console).print(
            f"re-recorded {len(found.recorded)} finished run(s) from their folders"
            + "".join(f"\nnot re-recorded: {folder}: {why}" for folder, why in found.skipped), markup=False)
    store = Store(home, existing=True)
    if experiment:
        store.check_experiment(experiment)
    rows, submissions, probes = store.runs(experiment), store.submissions(experiment), store.probes(experiment)
    if as_json:
        _print_json({"runs": [row.to_dict() | {"spec": row.entry or None} for row in rows],
                     "probes": [p.to_dict() for p in probes], "submissions": [s.to_dict() for s in submissions]})
        return
    console.print(_runs_table(rows, console))
    if probes:
        from ledger.units import format_size
        from ledger.cli.tables import Column, fit_table

        columns = [Column("experiment", drop=2), Column("model"), Column("size"), Column("device", drop=3),
                   Column("budget"), Column("precision", drop=4), Column("chosen k"), Column("trials", drop=4),
                   Column("created", drop=5)]
        console.print(fit_table(console, columns, [
            [p.experiment, p.model, p.size, p.device, (f"{p.target} " if p.target else "") + format_size(p.budget_bytes),
             p.precision or "", "nothing fits" if p.chosen_k is None else str(p.chosen_k), str(len(p.trials)),
             p.created_at]
            for p in probes], title="memory probes"))
    if submissions:
        console.print(_submissions_table(submissions, console))


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
    from ledger.store.database import Store

    store = Store(home, existing=True)
    if experiment:
        store.check_experiment(experiment)
    rows = store.submissions(experiment)
    if as_json:
        _print_json([row.to_dict() for row in rows])
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
    from ledger.bag.leaderboard import record_scores
    from ledger.store.database import Store

    row = record_scores(Store(home, existing=True), submission_id, public, private)
    private_text = "" if row.private_score is None else f", private {row.private_score:.4f}"
    metric, oob = row.oob
    console.print(f"submission {row.id}: out-of-bag {metric} {_accuracy(oob)}, "
                  f"public {row.public_score:.4f}{private_text}")


@app.command()
@friendly_errors
def submit(
    submission_id: SubmissionArg,
    message: Annotated[str, typer.Option("--message", "-m", help="The submission's description on Kaggle.")],
    competition: Annotated[Optional[str], typer.Option(
        envvar="LEDGER_COMPETITION", help="Kaggle competition slug: the name in its address.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for kaggle before stopping it (the "
                                                             "attempt is recorded).")] = 300,
    home: HomeOpt = None,
) -> None:
    """Hand a recorded submission's CSV to `kaggle competitions submit` and keep the message and
    kaggle's exit status in the ledger (kaggle is not a dependency: `pip install kaggle`).

    Example: ledger submit 20260101-1200 -m "convnext + vit, tuned weights" --competition paddy-disease-classification
    """
    from ledger.bag.leaderboard import submit as hand_to_kaggle
    from ledger.store.database import Store

    if not timeout > 0:  # a float range in the option would widen --help past 80 columns
        raise LedgerError(f"--timeout {timeout}: expected a number of seconds above 0")
    handed = hand_to_kaggle(Store(home, existing=True), submission_id, message, competition, timeout)
    if handed.output:
        console.print(handed.output, markup=False)
    row = handed.submission
    if handed.exit_code != 0:
        raise LedgerError(f"kaggle exited with status {handed.exit_code} for submission {row.id} "
                          f"({row.path}); the attempt is recorded")
    console.print(f"submission {row.id} handed to kaggle ({row.competition}); when it is scored: "
                  f"ledger submissions score {row.id} PUBLIC")
