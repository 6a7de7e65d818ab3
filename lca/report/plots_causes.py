"""The figure of "Why parameters hurt": each layer's LCA per iteration bin, stacked by cause.

Small arrays in ([`lca.analysis.summarise_causes`][lca.analysis.causes.summarise_causes]'s bins),
one PNG out, as in
`lca.report.plots`. One panel per layer: bars of each cause's LCA in a bin of
iterations, positive causes stacked upwards and negative ones downwards, so a bar's height
above zero is what pushed the loss up and its depth below zero what pulled it down; the black
line is their sum, the layer's LCA in the bin. A term keeps one colour; its first-order part
is solid, its curvature part hatched and lighter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .style import LOSS, PlotStyle

MAX_PANELS = 6
# one column at about 880 px (110 dpi): legible when a page shows the PNG ~800 px wide
FIGURE_WIDTH = 8.0  # inches
PANEL_HEIGHT = 2.3  # inches
TICK_SIZE, LABEL_SIZE, TITLE_SIZE = 10, 11, 12
TERM_COLOURS = {
    "signal": "#1f77b4",
    "deviation": "#ff7f0e",
    "momentum": "#9467bd",
    "history": "#9467bd",
    "weight_decay": "#8c564b",
    "residual": "#7f7f7f",
}
OTHER_COLOURS = ["#17becf", "#bcbd22", "#e377c2", "#2ca02c"]


def term_colour(term: str, index: int = 0) -> str:
    """The colour of an update term (the same in every panel and report)."""
    return TERM_COLOURS.get(term, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def panel_layers(layers: Sequence[str], totals: np.ndarray, most: int = MAX_PANELS) -> list[int]:
    """Indices of the layers drawn: all of them up to ``most``, else the ``most`` with the
    largest |cause LCA| (Σ over causes of |total|), in layer order."""
    if len(layers) <= most:
        return list(range(len(layers)))
    size = np.abs(np.asarray(totals)).reshape(-1, len(layers)).sum(axis=0)
    return sorted(np.argsort(-size, kind="stable")[:most].tolist())


def stacked_causes(
    layers: Sequence[str],
    terms: Sequence[str],
    bin_edges: np.ndarray,
    bins: np.ndarray,
    path: str | Path,
    title: str,
    *,
    style: PlotStyle,
) -> Path:
    """One panel per layer of ``layers`` (``bins``: (B, n_terms, 2, len(layers))), stacked in
    one column so that ticks and labels stay legible at a page's width."""
    edges = np.asarray(bin_edges)
    bins = np.asarray(bins, np.float64)
    n = len(layers)
    fig = Figure(figsize=(FIGURE_WIDTH, PANEL_HEIGHT * n + 1.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True, squeeze=False)).reshape(-1)
    centres = (edges[:-1] + edges[1:]) / 2
    widths = np.maximum(np.diff(edges), 1) * 0.9
    for k, ax in enumerate(axes):
        values = bins[..., k]  # (B, n_terms, 2)
        up = np.zeros(len(centres))
        down = np.zeros(len(centres))
        for j, term in enumerate(terms):
            colour = term_colour(term, j)
            for p in range(values.shape[2]):
                v = values[:, j, p]
                pos, neg = np.where(v > 0, v, 0.0), np.where(v < 0, v, 0.0)
                bar_style = {
                    "color": to_rgba(colour, 1.0 if p == 0 else 0.45),
                    "hatch": None if p == 0 else "///",
                    "edgecolor": colour,
                    "linewidth": 0,
                    "width": widths,
                }
                ax.bar(centres, pos, bottom=up, **bar_style)
                ax.bar(centres, neg, bottom=down, **bar_style)
                up += pos
                down += neg
        ax.plot(centres, values.sum(axis=(1, 2)), color=LOSS, lw=1.2, marker=".", ms=3)
        low, high = min(down.min(initial=0.0), 0.0), max(up.max(initial=0.0), 0.0)
        pad = 0.06 * (high - low) or 1e-12  # the bars' bases pin autoscaling to the bar ends
        ax.set_ylim(low - pad, high + pad)
        ax.axhline(0, color=LOSS, lw=0.6)
        ax.set_title(layers[k], loc="left", fontsize=LABEL_SIZE)
        ax.tick_params(labelsize=TICK_SIZE)
    axes[-1].set_xlabel("iteration", fontsize=LABEL_SIZE)
    fig.supylabel(f"LCA per bin of iterations ({style.loss_unit})", fontsize=LABEL_SIZE)
    handles = []
    for j, term in enumerate(terms):
        colour = term_colour(term, j)
        handles.append(Patch(color=colour, label=f"{term}, first order"))
        handles.append(
            Patch(facecolor=to_rgba(colour, 0.45), edgecolor=colour, hatch="///",
                  linewidth=0, label=f"{term}, curvature")
        )  # fmt: skip
    handles.append(Patch(color=LOSS, label="sum (layer LCA)"))
    fig.legend(
        handles=handles, loc="outside lower center", ncol=3, fontsize=TICK_SIZE, frameon=False
    )
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return style.save(fig, path)
