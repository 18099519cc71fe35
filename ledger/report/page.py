"""`ledger report`: what each finished run (and their bag) got wrong, as PNGs, CSVs and one
self-contained report.html (pictures embedded as base64, so the page opens anywhere, no server).

Layout of the output folder:
  report.html
  <run id>/ and bag/   confusion.png, confusion_normalised.png, top_losses.png, most_confused.csv,
                       per_class.csv, and for runs curves.png (from the run's metrics.csv)
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ledger.store.rows import RunRow, RunStatus
from ledger.runs import artifacts
from ledger.runs.checksums import verify
from ledger.errors import LedgerError
from ledger.ids import match_id
from ledger.report.interpretation import Interpretation, bag, interpretation, most_confused, per_class_accuracy
from ledger.bag.metrics import format_score
from ledger.report.plots import (plot_confusion, plot_predicted_vs_true, plot_residuals_by_range, plot_top_losses,
                                 plot_training_curves)
from ledger.report.task_views import per_tag, residuals_by_range, vector_interpretation

TOP_LOSSES = 9
THUMBNAIL = 224  # top-loss images are shown at most this many pixels a side


@dataclass
class Section:
    """One run's (or the bag's) part of the report."""

    name: str  # run id or "bag"
    heading: str
    interp: Interpretation
    folder: Path
    images: dict[str, Path] = field(default_factory=dict)  # caption -> PNG
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # heading -> table
    notes: list[str] = field(default_factory=list)
    metric: str = "accuracy"  # the spec's metric, shown with accuracy beside it
    score: float = float("nan")

    @property
    def figures(self) -> str:
        """'log_loss 0.3012, accuracy 0.9100', or 'accuracy 0.9100' when the metric is accuracy
        (or 'rmse 1.2000' for numbers or tags, which have no accuracy)."""
        if self.interp.accuracy != self.interp.accuracy:
            return f"{self.metric} {format_score(self.score)}"
        beside = "" if self.metric == "accuracy" else f"{self.metric} {format_score(self.score)}, "
        return f"{beside}accuracy {format_score(self.interp.accuracy)}"


@dataclass(frozen=True)
class Report:
    html: Path
    sections: list[Section]


def runs_to_report(store, experiment: str, run: str | None) -> list[RunRow]:
    """The experiment's done runs, or the one run whose id starts with `run`."""
    if run:
        rows = {r.id: r for r in store.runs(experiment)}
        row = rows[match_id(list(rows), run, "run", f"{store.home} (experiment {experiment!r})")]
        if row.status != RunStatus.DONE:
            raise LedgerError(f"run {row.id}: status {row.status}; only done runs have predictions")
        return [row]
    rows = store.runs(experiment, status=RunStatus.DONE)
    if not rows:
        raise LedgerError(f"{store.home}: no done runs of experiment {experiment!r} (train first: ledger train SPEC)")
    return rows


def _run_predictions(store, row: dict) -> tuple[artifacts.Predictions, Path]:
    folder = store.artifact_path(row)
    if folder is None or not folder.is_dir():
        raise LedgerError(f"run {row.id}: artifact folder {folder} not found")
    path = folder / artifacts.VALID_PREDS
    if not path.is_file():
        raise LedgerError(f"{path}: run {row.id} has no held-out predictions (split.valid_pct 0?)")
    verify(row, folder, [artifacts.VALID_PREDS])  # the predictions the run finished with
    return artifacts.load_predictions(path), folder


def _thumbnail(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError) as e:
        raise LedgerError(f"{path}: unreadable image ({e})") from None
    rgb.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(rgb)


def _top_losses_png(section: Section, paths: dict[str, Path], k: int, source: str) -> Path:
    interp = section.interp
    chosen = interp.top_losses(k)
    missing = [str(interp.ids[i]) for i in chosen if str(interp.ids[i]) not in paths]
    if missing:
        raise LedgerError(f"{source}: image id(s) not in the competition's training set ({', '.join(missing[:5])})")
    if hasattr(interp, "title"):  # tags or numbers
        titles = [interp.title(i) for i in chosen]
    else:
        predicted, losses = interp.predicted, interp.losses
        titles = [f"{interp.vocab[predicted[i]]} / {interp.vocab[interp.actual[i]]}\n"
                  f"{losses[i]:.2f} / {interp.probs[i, predicted[i]]:.2f}" for i in chosen]
    images = [_thumbnail(paths[str(interp.ids[i])]) for i in chosen]
    return plot_top_losses(images, titles, section.folder / "top_losses.png", f"top losses: {section.heading}")


def _score(section: Section, spec) -> None:
    """The spec's metric of the section's held-out predictions."""
    from ledger.bag.submission_shape import spec_metric

    section.metric = spec.metric
    metric = spec_metric(spec, section.interp.vocab)
    if spec.task != "single_label":  # thresholds or cut-offs at their defaults (0.5, the nearest grade)
        section.score = metric.score(section.interp.truth, section.interp.probs)
        return
    section.score = metric.score(section.interp.actual, section.interp.probs)


def _fill(section: Section, paths: dict[str, Path], k: int, source: str) -> None:
    """Every picture and table of one section, written into its folder."""
    interp, folder = section.interp, section.folder
    if hasattr(interp, "task"):
        _fill_vectors(section)
        if k > 0 and len(interp.ids):
            section.images["top losses"] = _top_losses_png(section, paths, k, source)
        return
    matrix = interp.confusion_matrix()
    section.images["confusion matrix (counts)"] = plot_confusion(
        matrix, interp.vocab, folder / "confusion.png", f"confusion matrix: {section.heading}")
    section.images["confusion matrix (each row sums to 1)"] = plot_confusion(
        matrix, interp.vocab, folder / "confusion_normalised.png",
        f"confusion matrix, row-normalised: {section.heading}", normalised=True)
    confused = most_confused(matrix, interp.vocab, min_val=1)
    per_class = per_class_accuracy(matrix, interp.vocab)
    confused.to_csv(folder / "most_confused.csv", index=False)
    per_class.to_csv(folder / "per_class.csv", index=False)
    section.tables["most confused (actual, predicted, count; min_val 1)"] = confused
    section.tables["per-class accuracy"] = per_class
    if k > 0 and len(interp.ids):
        section.images["top losses"] = _top_losses_png(section, paths, k, source)


def _fill_vectors(section: Section) -> None:
    """Tags: each tag's figures. Numbers: predicted against true, and the residuals by range."""
    interp, folder = section.interp, section.folder
    if interp.task == "multi_label":
        table = per_tag(interp)
        table.to_csv(folder / "per_tag.csv", index=False)
        section.tables["per tag, at threshold 0.5"] = table
        return
    for column, name in enumerate(interp.vocab):
        section.images[f"predicted against true: {name}"] = plot_predicted_vs_true(
            interp.truth[:, column], interp.probs[:, column], folder / f"predicted_vs_true_{column}.png",
            f"{name}: {section.heading}")
        table = residuals_by_range(interp, column)
        table.to_csv(folder / f"residuals_{column}.csv", index=False)
        section.tables[f"residuals of {name} by true range"] = table
        section.images[f"residuals by range: {name}"] = plot_residuals_by_range(
            table, folder / f"residuals_{column}.png", f"residuals of {name}: {section.heading}")


def write_report(spec, store, out: Path, run: str | None = None, top_losses: int = TOP_LOSSES) -> Report:
    """Interpret every done run of `spec` (or the one `run` names) and, with two or more runs,
    their bag; write the pictures, tables and report.html into `out`."""
    from ledger.data.competition import load_competition

    rows = runs_to_report(store, spec.name, run)
    competition = load_competition(spec.data)
    paths = {str(i): p for i, p in zip(competition.train_ids, competition.train_paths)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections, named = [], []
    for row in rows:
        preds, run_folder = _run_predictions(store, row)
        source = str(run_folder / artifacts.VALID_PREDS)
        named.append((row.id, preds))
        interpret = interpretation if spec.task == "single_label" else vector_interpretation
        section = Section(row.id, f"{row.model} ({row.arch} at {row.size}), run {row.id}",
                          interpret(row.id, preds, source), out / row.id)
        section.folder.mkdir(parents=True, exist_ok=True)
        _fill(section, paths, top_losses, source)
        _score(section, spec)
        metrics_path = run_folder / artifacts.METRICS
        if metrics_path.is_file():
            metrics = pd.read_csv(metrics_path)
            if "train_loss" not in metrics.columns:
                raise LedgerError(f"{metrics_path}: no train_loss column")
            section.images["training curves"] = plot_training_curves(
                metrics, section.folder / "curves.png", f"training: {section.heading}")
        else:
            section.notes.append(f"no {artifacts.METRICS} in {run_folder}: no training curves")
        sections.append(section)
    if len(named) > 1:
        bagged = bag(named)
        interpret = interpretation if spec.task == "single_label" else vector_interpretation
        section = Section("bag", f"bag of {len(named)} runs", interpret("bag", bagged, "the bag"), out / "bag")
        section.folder.mkdir(parents=True, exist_ok=True)
        section.notes.append(f"mean of the runs' held-out probabilities over the {len(bagged.ids)} training images "
                             f"held out by at least one run (an out-of-bag view of the ensemble)")
        _fill(section, paths, top_losses, "the bag")
        _score(section, spec)
        sections.insert(0, section)
    page = out / "report.html"
    page.write_text(render_html(spec.name, rows, sections, out), encoding="utf-8")
    return Report(page, sections)


# ---------------------------------------------------------------- the page

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure.half { max-width: 48%; }  /* the two confusion matrices side by side */
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.tables { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
.note { color: #555; font-style: italic; }
"""


def _table(frame: pd.DataFrame, empty: str) -> str:
    if frame.empty:
        return f'<p class="note">{html.escape(empty)}</p>'
    return frame.to_html(index=False, border=0, na_rep="-", float_format=lambda v: f"{v:.4f}")


def _figure(caption: str, path: Path, out: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    relative = path.relative_to(out).as_posix()
    kind = ' class="half"' if caption.startswith("confusion") else ""
    return (f'<figure{kind}><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f'<figcaption>{html.escape(caption)} (<a href="{html.escape(relative)}">{html.escape(relative)}</a>)'
            f"</figcaption></figure>")


def render_html(experiment: str, rows: list[dict], sections: list[Section], out: Path) -> str:
    runs = pd.DataFrame([{
        "run": r.id, "model": r.model, "arch": r.arch, "size": r.size, "epochs": r.epochs,
        "valid loss": r.valid_loss, "error rate": r.error_rate,
    } for r in rows])
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>ledger report: {html.escape(experiment)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>ledger report: {html.escape(experiment)}</h1>",
             '<h2 id="runs">Runs</h2>', _table(runs, "no runs"), "<ul>"]
    parts += [f'<li><a href="#{html.escape(s.name)}">{html.escape(s.heading)}</a>: {s.figures} '
              f"on {len(s.interp.ids)} held-out images</li>" for s in sections]
    parts.append("</ul>")
    for s in sections:
        parts.append(f'<section id="{html.escape(s.name)}"><h2>{html.escape(s.heading)}</h2>')
        parts.append(f"<p>{s.figures} on {len(s.interp.ids)} held-out images</p>")
        parts += [f'<p class="note">{html.escape(note)}</p>' for note in s.notes]
        parts += [_figure(caption, path, out) for caption, path in s.images.items() if caption != "top losses"]
        parts.append('<div class="tables">')
        for heading, frame in s.tables.items():
            parts.append(f"<div><h3>{html.escape(heading)}</h3>{_table(frame, 'no misclassified images')}</div>")
        parts.append("</div>")
        if "top losses" in s.images:
            parts.append(f"<h3>top losses</h3>{_figure('top losses', s.images['top losses'], out)}")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
