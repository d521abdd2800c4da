"""Figures for evaluation reports: predictions against MOS with the fitted logistic.

Uses matplotlib's object API with the Agg canvas directly (no pyplot), so it works
headless and never touches the global backend of a process that imported it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

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

    low = min(float(x.min()), float(y.min()), 0.0)
    high = max(float(x.max()), float(y.max()), 1.0)
    ax.plot([low, high], [low, high], ls=":", lw=1, color="grey", label="identity (y = x)")
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
    margin = 0.03 * (high - low)
    ax.set_xlim(low - margin, high + margin)
    ax.set_ylim(low - margin, high + margin)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.savefig(os.fspath(out_path), dpi=dpi)
