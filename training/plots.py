"""Figures: predictions against MOS with the fitted logistic (evaluation reports) and a
run's training curves.

Uses matplotlib's object API with the Agg canvas directly (no pyplot), so it works
headless and never touches the global backend of a process that imported it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .metrics import LogisticFit


def scatter_plot(
    pred: Sequence[float] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    metrics: dict,
    out_path: str | os.PathLike,
    *,
    title: str | None = None,
    xlabel: str = "predicted quality score",
    ylabel: str = "MOS (normalised to [0, 1], higher is better)",
    dpi: int = 150,
) -> None:
    """Write a PNG: one dot per image, the fitted mapping, and the identity line.

    ``metrics`` is the dict from :func:`iqa.training.metrics.evaluate_predictions` for
    the same pairs; its logistic fit is drawn and its SRCC and PLCC go in the title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.asarray(pred, dtype=float)
    y = np.asarray(mos, dtype=float)
    fit = LogisticFit.from_dict(metrics["logistic"])

    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Dense test sets (KonIQ has 2,015 test images) need transparent dots to show density.
    alpha = float(np.clip(300 / max(x.size, 1), 0.15, 0.8))
    ax.scatter(x, y, s=14, alpha=alpha, color="tab:blue", edgecolors="none", label="images")

    # MOS keeps its full scale; the x axis follows the predictions, so a model whose
    # scores span a narrow range still shows its ranking (the identity line, clipped to
    # the view, then shows how far off the absolute scale it is).
    y_low, y_high = min(float(y.min()), 0.0), max(float(y.max()), 1.0)
    x_mid, x_half = (float(x.max()) + float(x.min())) / 2, max(float(np.ptp(x)) / 2, 0.05)
    x_low, x_high = x_mid - 1.06 * x_half, x_mid + 1.06 * x_half
    line = [max(x_low, y_low), min(x_high, y_high)]
    ax.plot(line, line, ls=":", lw=1, color="grey", label="identity (y = x)")
    curve_x = np.linspace(float(x.min()), float(x.max()), 256)
    if fit.converged:
        curve_label = f"fitted {fit.kind.upper()} logistic"
    else:
        curve_label = "linear fit (logistic fit failed)"
    ax.plot(curve_x, fit(curve_x), lw=2, color="tab:red", label=curve_label)

    stats_line = (
        f"SRCC {metrics['srcc']['value']:.3f}   PLCC {metrics['plcc']['value']:.3f}   "
        f"PLCC after logistic {metrics['plcc_logistic']['value']:.3f}   n = {metrics['n']}"
    )
    ax.set_title(f"{title}\n{stats_line}" if title else stats_line, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(x_low, x_high)
    margin = 0.03 * (y_high - y_low)
    ax.set_ylim(y_low - margin, y_high + margin)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.savefig(os.fspath(out_path), dpi=dpi)


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Training loss per step (with a running mean) and validation SRCC/PLCC per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val" and r["val_srcc"]]
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)
    if train:
        steps, losses = map(np.asarray, zip(*train, strict=True))
        ax_loss.plot(steps, losses, lw=0.6, alpha=0.4, color="tab:blue", label="loss")
        width = max(1, min(50, len(losses) // 10))
        running = np.convolve(losses, np.ones(width) / width, mode="valid")
        ax_loss.plot(steps[width - 1:], running, lw=1.5, color="tab:blue",
                     label=f"running mean ({width} steps)")
        ax_loss.legend(fontsize=8)
    ax_loss.set(title="training loss", xlabel="step")
    ax_loss.grid(True, alpha=0.3)
    if val:
        epochs = [int(r["epoch"]) + 1 for r in val]
        for key, color in (("srcc", "tab:red"), ("plcc", "tab:green")):
            ax_val.plot(epochs, [float(r[f"val_{key}"]) for r in val], marker="o", color=color,
                        label=key.upper())
        ax_val.legend(fontsize=8)
    ax_val.set(title="validation", xlabel="epoch")
    ax_val.grid(True, alpha=0.3)
    tmp = png_path.with_name(f".{png_path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png_path)


def calibration_plot(path: Path, mos: np.ndarray, targets: np.ndarray, names: Sequence[str],
                     knots: tuple[Sequence[float], Sequence[float]]) -> None:
    """Predicted MOS against the level target of each calibration version, by distortion,
    with the fitted curve: where the curve sits in each cloud is what a score will mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, name in enumerate(sorted(set(names))):
        pick = np.asarray([n == name for n in names])
        ax.scatter(mos[pick], targets[pick], s=9, alpha=0.6, color=f"C{i % 10}", label=name)
    xs = np.linspace(0.0, 1.0, 201)
    ax.plot(xs, np.interp(xs, knots[0], knots[1]), color="black", lw=2, label="calibration")
    ax.set(xlabel="predicted MOS (network output)", ylabel="target / score (page scale)",
           xlim=(0, 1), ylim=(0, 1), title="calibration on clean training photos and versions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
