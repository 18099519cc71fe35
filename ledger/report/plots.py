"""Every picture ledger draws, with matplotlib's object API on the Agg canvas.

No pyplot: figures are plain objects with no global state, so plotting works with no display,
in threads, and never leaks figures between calls.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

DPI = 110
_COLORS = ["tab:orange", "tab:green", "tab:red", "tab:purple"]


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)  # attaches the Agg canvas: PNGs without a display or pyplot
    figure.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------- lr-find


def plot_lr_find(lrs, losses, suggestions: dict, path: Path, title: str = "", skip_end: int = 5) -> Path:
    """Smoothed loss against the learning rate on a log axis, without the last `skip_end` points
    (the divergence would dwarf the curve), every suggestion marked and named with its value."""
    n = max(1, len(lrs) - skip_end) if len(lrs) > skip_end else len(lrs)
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(lrs[:n], losses[:n], color="tab:blue", linewidth=1.8, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(True, which="major", alpha=0.3)
    for (name, suggestion), color in zip(suggestions.items(), _COLORS):
        if suggestion is None:
            continue
        label = (f"minimum/10: {suggestion.lr:.2e} (marked: the minimum)" if name == "minimum"
                 else f"{name}: {suggestion.lr:.2e}")
        ax.plot(*suggestion.point, "o", markersize=9, color=color, markeredgecolor="black", label=label)
    ax.legend(loc="best", fontsize=10)
    ax.set_title(title or "learning-rate range test", fontsize=11)
    return _save(figure, path)


# ---------------------------------------------------------------- interpretation


def plot_confusion(matrix: np.ndarray, vocab, path: Path, title: str, normalised: bool = False) -> Path:
    """A confusion matrix, actual classes down and predicted across, every cell written out.
    `normalised`: each row divided by its total (the class's recall on the diagonal)."""
    n = len(vocab)
    values = matrix.astype(float)
    if normalised:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    side = max(5.0, 0.55 * n + 2.5)
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else max(1.0, values.max()))
    figure.colorbar(image, ax=ax, shrink=0.8, format=PercentFormatter(1.0) if normalised else None)
    ax.set_xticks(range(n), labels=list(vocab), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=list(vocab))
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=11)
    font = 10 if n <= 12 else (8 if n <= 20 else 6)
    threshold = (1 if normalised else values.max()) / 2
    for i in range(n):
        for j in range(n):
            text = f"{values[i, j]:.2f}" if normalised else f"{int(matrix[i, j])}"
            # White on dark cells, black on light ones, so every count stays readable.
            ax.text(j, i, text, ha="center", va="center", fontsize=font,
                    color="white" if values[i, j] > threshold else "black")
    return _save(figure, path)


def plot_training_curves(metrics: pd.DataFrame, path: Path, title: str) -> Path:
    """Train and valid loss, error rate, and (when metrics.csv has an `lr` column) the learning
    rate, per epoch. Epochs of every phase (fine-tune's frozen epochs first) are numbered in order."""
    epochs = np.arange(1, len(metrics) + 1)
    has_lr = "lr" in metrics.columns and metrics["lr"].notna().any()
    panels = 3 if has_lr else 2
    figure = Figure(figsize=(4.2 * panels, 3.8), layout="constrained")
    axes = figure.subplots(1, panels)
    loss_ax, error_ax = axes[0], axes[1]
    loss_ax.plot(epochs, metrics["train_loss"], "o-", label="train")
    if "valid_loss" in metrics.columns and metrics["valid_loss"].notna().any():
        loss_ax.plot(epochs, metrics["valid_loss"], "s-", label="valid")
    loss_ax.set_title("loss")
    loss_ax.legend()
    if "error_rate" in metrics.columns and metrics["error_rate"].notna().any():
        error_ax.plot(epochs, metrics["error_rate"], "s-", color="tab:red", label="valid")
        error_ax.legend()
    else:
        error_ax.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=error_ax.transAxes)
    error_ax.set_title("error rate")
    if has_lr:
        axes[2].plot(epochs, metrics["lr"], "o-", color="tab:green")
        axes[2].set_yscale("log")
        axes[2].set_title("learning rate")
    frozen = int((metrics["phase"] == "frozen").sum()) if "phase" in metrics.columns else 0
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        ax.grid(True, alpha=0.3)
        if frozen:
            # Shade fine-tune's head-only epochs so a jump after them reads as the unfreeze.
            ax.axvspan(0.5, frozen + 0.5, color="grey", alpha=0.15, label="_frozen")
    if frozen:
        loss_ax.text(0.5 + frozen / 2, loss_ax.get_ylim()[1], "frozen", ha="center", va="top", fontsize=8, color="grey")
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def plot_top_losses(images: list[np.ndarray], titles: list[str], path: Path, title: str) -> Path:
    """A grid of images (H, W, 3 uint8), each titled as fastai's plot_top_losses:
    predicted / actual / loss / probability of the prediction (fastai shows the top probability)."""
    count = max(1, len(images))
    columns = min(3, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.3 * columns, 3.4 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes:
        ax.axis("off")
    for ax, image, text in zip(axes, images, titles):
        ax.imshow(image, interpolation="nearest" if max(image.shape[:2]) < 96 else "antialiased")
        ax.set_title(text, fontsize=9)
    figure.suptitle(f"{title}\nprediction / actual / loss / probability", fontsize=11)
    return _save(figure, path)


# ---------------------------------------------------------------- numbers (regression)


def plot_predicted_vs_true(truth: np.ndarray, preds: np.ndarray, path: Path, title: str) -> Path:
    """Predicted against true numbers, one point an image, with the line where they are equal."""
    figure = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = figure.add_subplot()
    ax.scatter(truth, preds, s=6, alpha=0.4, color="tab:blue", linewidths=0)
    low = float(min(np.min(truth), np.min(preds))) if len(truth) else 0.0
    high = float(max(np.max(truth), np.max(preds))) if len(truth) else 1.0
    ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label="predicted = true")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=11)
    return _save(figure, path)


def plot_residuals_by_range(table: pd.DataFrame, path: Path, title: str) -> Path:
    """The mean residual (predicted - true) and the RMSE of each range of true values."""
    figure = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = figure.add_subplot()
    positions = np.arange(len(table))
    ax.bar(positions - 0.2, table["mean residual"], width=0.4, color="tab:orange", label="mean residual")
    ax.bar(positions + 0.2, table["rmse"], width=0.4, color="tab:blue", label="rmse")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(positions, labels=list(table["true range"]), rotation=20, ha="right", rotation_mode="anchor")
    ax.set_xlabel("true value")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=11)
    return _save(figure, path)
