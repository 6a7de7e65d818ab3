"""Figures of the train vs validation section: cumulative LCA on both splits, accuracy curves.

Small arrays in, one PNG out, as in `lca.report.plots` (whose colours and helpers these share).
The x axis is the step s (θ after s updates); vertical lines mark where train and validation
accuracy first reach their thresholds (`lca.analysis.generalization`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .style import SYNC, PlotStyle, layer_colours

TRAIN_COLOUR = "#252525"
VAL_COLOUR = SYNC
#: a crossing to draw: (step, curve "train"/"val", threshold)
Marker = tuple[int, str, float]


def _style(curve: str, threshold: float) -> dict:
    return {
        "color": TRAIN_COLOUR if curve == "train" else VAL_COLOUR,
        "ls": "--" if threshold >= 0.99 else ":",
        "lw": 1.1,
    }


def _mark(ax, markers: Sequence[Marker], label: bool) -> None:
    for step, curve, threshold in markers:
        name = f"{'train' if curve == 'train' else 'validation'} {threshold * 100:g} %"
        ax.axvline(step, **_style(curve, threshold), label=name if label else None)


def _log_x(ax, steps: int) -> None:
    """Log steps for long runs, where grokking-like changes span decades."""
    if steps >= 100:
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, steps)


def split_cumulative(
    rows: Sequence[tuple[str, Sequence[str], np.ndarray, np.ndarray]],
    markers: Sequence[Marker],
    path: str | Path,
    title: str,
    *,
    style: PlotStyle,
) -> Path:
    """Per row (title, component names, (T+1, n) train and val running totals): two panels.

    One colour per component, the same in both panels; shared y axis per row, so the
    validation curve's distance from the training curve reads directly.
    """
    n_rows = len(rows)
    longest = max(len(names) for _, names, _, _ in rows)
    fig = Figure(figsize=(11.5 if longest > 10 else 10.5, 0.8 + 3.4 * n_rows), layout="constrained")
    axes = np.asarray(fig.subplots(n_rows, 2, sharey="row", squeeze=False))
    unit = style.loss_unit
    for r, (row_title, names, train, val) in enumerate(rows):
        colours = layer_colours(len(names))
        steps = np.arange(np.asarray(train).shape[0])
        for c, (split, curves) in enumerate((("train", train), ("validation", val))):
            ax = axes[r, c]
            for name, colour, curve in zip(names, colours, np.asarray(curves).T):
                ax.plot(steps, curve, color=colour, lw=1.3, label=name)
            ax.axhline(0, color="k", lw=0.6)
            _mark(ax, markers, label=(r == 0 and c == 0))
            _log_x(ax, int(steps[-1]) if steps.size else 1)
            ax.set_title(f"{row_title}: on the {split} split", fontsize=10)
            ax.tick_params(labelsize=8)
            if r == n_rows - 1:
                ax.set_xlabel("step (θ after s updates)")
        axes[r, 0].set_ylabel(f"cumulative LCA ({unit})\nbelow 0 = lowered that loss", fontsize=9)
        handles, labels = axes[r, 0].get_legend_handles_labels()
        axes[r, 1].legend(
            handles,
            labels,
            fontsize=7,
            ncol=2 if len(labels) > 10 else 1,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    fig.suptitle(title, fontsize=11)
    return style.save(fig, path)


def accuracy_curves(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    markers: Sequence[Marker],
    steps: int,
    path: str | Path,
    batch_accuracy: bool = False,
    *,
    style: PlotStyle,
) -> Path:
    """Train and validation accuracy against steps, with the 95 % and 99 % crossings."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    train_label = "train (mini-batch of θ_s)" if batch_accuracy else "train (θ_s, whole split)"
    for (s, a), colour, label, marker in (
        (train, TRAIN_COLOUR, train_label, None),
        (val, VAL_COLOUR, "validation", "o"),
    ):
        if np.asarray(s).size:
            ax.plot(s, a, color=colour, lw=1.3, marker=marker, ms=3, label=label)
    for level in (0.95, 0.99):
        ax.axhline(level, color="#bdbdbd", lw=0.8, ls="-")
    _mark(ax, markers, label=True)
    _log_x(ax, steps)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step (θ after s updates)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(
        "Accuracy; vertical lines: first step at 95 % (dotted), 99 % (dashed)", fontsize=10
    )
    return style.save(fig, path)
