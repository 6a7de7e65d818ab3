"""The paper's figures, one function each: small arrays in, one PNG (or GIF) out.

Every function takes numbers already computed by [`lca.analysis`][lca.analysis] and a path, so the
figures can be redrawn from ``report.json`` without touching the (T, K) stores. Figures are
``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no pyplot, no global
backend switch, safe on machines without a display.

Colours, the loss unit in the labels and the resolution come from the
`PlotStyle` each function is given (``lca report`` makes it from
the run's loss: nats for cross-entropy, "MSE" for a regressor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .style import (
    HELP,
    HURT,
    LOSS,
    SYNC,
    ZERO,
    PlotStyle,
    figure_width,
    layer_axis,
    layer_colours,
    sign_colours,
    sign_legend,
    signed,
)

# --- Fig 3: learning is noisy ---------------------------------------------------------------


def percent_helped(
    helped: np.ndarray,
    hurt: np.ndarray,
    zero: np.ndarray,
    loss: np.ndarray,
    path: str | Path,
    split: str = "train",
    *,
    style: PlotStyle,
) -> Path:
    """Fig 3a: barely more than half of the parameters help at any iteration."""
    T = len(helped)
    t = np.arange(T)
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    ax.plot(t, helped, color=HELP, lw=1.2, label="helped (% of non-zero LCA)")
    ax.plot(t, hurt, color=HURT, lw=0.8, alpha=0.7, label="hurt (% of non-zero LCA)")
    ax.plot(t, zero, color=ZERO, lw=0.8, label="zero LCA (% of all parameters)")
    ax.axhline(50, color="k", lw=0.6, ls=":")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, T)
    ax.set_xlabel("iteration")
    ax.set_ylabel("parameters (%)")
    loss_ax = ax.twinx()
    loss_ax.plot(np.arange(len(loss)), loss, color=LOSS, lw=1.5, label=f"{split} loss")
    loss_ax.set_ylabel(f"full {split}-set loss L(θ_t) ({style.loss_unit})")
    lines = ax.get_lines()[:3] + loss_ax.get_lines()
    ax.legend(
        lines,
        [ln.get_label() for ln in lines],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    mean = float(np.nanmean(helped)) if np.isfinite(helped).any() else float("nan")
    ax.set_title(f"Percent of parameters helping each iteration (mean {mean:.1f} %)")
    return style.save(fig, path)


def value_histogram(
    edges: np.ndarray,
    helped_counts: np.ndarray,
    hurt_counts: np.ndarray,
    excess_kurtosis: float,
    path: str | Path,
    zero: int = 0,
    clipped: int = 0,
    *,
    style: PlotStyle,
) -> Path:
    """Fig 3b: helping and hurting LCA values, heavy-tailed (S10)."""
    edges = np.asarray(edges, dtype=np.float64)
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    width = np.diff(edges)
    ax.bar(edges[:-1], helped_counts, width=width, align="edge", color=HELP, label="helped (< 0)")
    ax.bar(edges[:-1], hurt_counts, width=width, align="edge", color=HURT, label="hurt (> 0)")
    if np.any(np.asarray(helped_counts) > 0) or np.any(np.asarray(hurt_counts) > 0):
        ax.set_yscale("log")
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel(f"LCA of one parameter at one iteration ({style.loss_unit})")
    ax.set_ylabel("count (parameter-iterations, log scale)")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    ax.legend(fontsize=8, title=f"zeros left out: {zero:,}\n1 % tails cut: {clipped:,}")
    ax.legend_.get_title().set_fontsize(8)
    k = f"{excess_kurtosis:.1f}" if np.isfinite(excess_kurtosis) else "n/a"
    ax.set_title(f"Distribution of non-zero LCA values (excess kurtosis {k}; Gaussian = 0)")
    return style.save(fig, path)


def helped_per_layer(
    layers: Sequence[str], percent: np.ndarray, path: str | Path, *, style: PlotStyle
) -> Path:
    """Fig 3c: every layer has close to half its parameters helping."""
    percent = np.asarray(percent, dtype=np.float64)
    fig = Figure(figsize=(figure_width(len(layers)), 4))
    ax = fig.subplots()
    x = np.arange(len(layers))
    ax.bar(x, percent, color=HELP, width=0.7)
    ax.axhline(50, color="k", lw=0.6, ls=":", label="50 %")
    finite = percent[np.isfinite(percent)]
    lo = min(45.0, float(finite.min()) - 3) if finite.size else 0.0
    hi = max(55.0, float(finite.max()) + 3) if finite.size else 100.0
    ax.set_ylim(max(0.0, lo), min(100.0, hi))
    if len(layers) <= 12:
        for xi, p in zip(x, percent):
            if np.isfinite(p):
                ax.text(xi, p, f"{p:.1f}", ha="center", va="bottom", fontsize=8)
    layer_axis(ax, layers)
    ax.set_ylabel("helped (% of non-zero LCA, mean over iterations)")
    ax.set_xlabel("layer (bias and batch norm merged into their layer)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Percent of parameters helping, per layer (y axis zoomed)")
    return style.save(fig, path)


def fraction_helped(
    fraction: np.ndarray,
    path: str | Path,
    layer_index: np.ndarray | None = None,
    layers: Sequence[str] | None = None,
    iterations: int | None = None,
    *,
    style: PlotStyle,
) -> Path:
    """Fig 3d: no parameter helps all the time; most help about half the iterations."""
    pct = 100.0 * np.asarray(fraction, dtype=np.float64)
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    if iterations:  # values are k / T: edges between them, never an empty comb of bins
        T = int(iterations)
        bins = 100.0 * np.linspace(-0.5, T + 0.5, min(50, T + 1) + 1) / T
    else:
        bins = np.linspace(0, 100, 51)
    ax.hist(pct, bins=bins, color=HELP, alpha=0.85, label=f"all {pct.size:,} parameters")
    if layer_index is not None and layers is not None and 1 < len(layers) <= 8:
        index = np.asarray(layer_index)
        for i, name in enumerate(layers):
            ax.hist(pct[index == i], bins=bins, histtype="step", lw=1.1, label=name)
    ax.set_yscale("log")
    ax.set_xlim(bins[0], bins[-1])
    ax.set_xlabel("iterations in which the parameter helped (% of all iterations)")
    ax.set_ylabel("parameters (log scale)")
    ax.legend(fontsize=8)
    ax.set_title(
        "How often each parameter helped (zero-LCA iterations count as not helping)", fontsize=10
    )
    return style.save(fig, path)


# --- Fig 4, S11: some layers hurt -----------------------------------------------------------


def layer_totals(
    layers: Sequence[str],
    totals: np.ndarray,
    path: str | Path,
    title: str | None = None,
    *,
    style: PlotStyle,
) -> Path:
    """Fig 4: each layer's share of the total loss change."""
    totals = np.asarray(totals, dtype=np.float64)
    fig = Figure(figsize=(figure_width(len(layers)), 4.2))
    ax = fig.subplots()
    x = np.arange(len(layers))
    ax.bar(x, totals, color=sign_colours(totals), width=0.7)
    ax.axhline(0, color="k", lw=0.6)
    if len(layers) <= 12:
        for xi, v in zip(x, totals):
            ax.annotate(
                signed(v),
                (xi, v),
                xytext=(0, 3 if v >= 0 else -3),
                textcoords="offset points",
                ha="center",
                va="bottom" if v >= 0 else "top",
                fontsize=8,
            )
        ax.margins(y=0.15)
    layer_axis(ax, layers)
    ax.set_ylabel(f"total LCA over training ({style.loss_unit})")
    ax.set_xlabel("layer (bias and batch norm merged into their layer)")
    sign_legend(ax)
    ax.set_title(title or f"LCA per layer, summed over iterations (sum {signed(totals.sum())})")
    return style.save(fig, path)


def cumulative_layer_lca(
    layers: Sequence[str], series: np.ndarray, path: str | Path, *, style: PlotStyle
) -> Path:
    """S11: when each layer's contribution accumulates, and whether it turns around."""
    cum = np.cumsum(np.asarray(series, dtype=np.float64), axis=0)
    T = cum.shape[0]
    fig = Figure(figsize=(8.5 if len(layers) > 10 else 7.5, 4.5))
    ax = fig.subplots()
    t = np.arange(1, T + 1)
    for name, colour, curve in zip(layers, layer_colours(len(layers)), cum.T):
        ax.plot(t, curve, color=colour, lw=1.3, label=name)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlim(0, T)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"cumulative LCA ({style.loss_unit}); below 0 = helped")
    if len(layers) > 10:
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    ax.set_title("Cumulative LCA per layer over training")
    return style.save(fig, path)


# --- Fig S7: oscillations --------------------------------------------------------------------


def oscillations(
    layers: Sequence[str],
    per_direction_change: np.ndarray,
    per_gradient_crossing: np.ndarray,
    direction_changes: np.ndarray,
    gradient_crossings: np.ndarray,
    iterations: int,
    path: str | Path,
    *,
    style: PlotStyle,
) -> Path:
    """S7: weights change direction and gradients cross zero every few iterations."""
    fig = Figure(figsize=(figure_width(len(layers), 6.0, 0.3) + 6.0, 4.4))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    x = np.arange(len(layers))
    w = 0.38
    a = np.asarray(per_direction_change, dtype=np.float64)
    b = np.asarray(per_gradient_crossing, dtype=np.float64)
    left.bar(x - w / 2, np.where(np.isfinite(a), a, 0), w, color="#3182bd", label="direction")
    left.bar(x + w / 2, np.where(np.isfinite(b), b, 0), w, color="#fd8d3c", label="gradient")
    left.legend(
        ["weight changes direction", "full-set gradient crosses zero"], fontsize=8, loc="best"
    )
    layer_axis(left, layers)
    left.set_ylabel("iterations per event (mean over parameters)")
    left.set_xlabel("layer")
    left.set_title("Iterations between oscillations, per layer", fontsize=10)
    moves = 100.0 * np.asarray(direction_changes) / max(iterations - 1, 1)
    grads = 100.0 * np.asarray(gradient_crossings) / max(iterations, 1)
    top = max(float(np.max(moves, initial=0)), float(np.max(grads, initial=0)), 1.0)
    top = min(100.0, 1.05 * top)
    bins = np.linspace(0, top, int(min(41, max(iterations * top / 100, 2))))  # ≥ 1/T wide
    right.hist(moves, bins=bins, color="#3182bd", alpha=0.6, label="weight direction changes")
    right.hist(grads, bins=bins, color="#fd8d3c", alpha=0.6, label="gradient zero crossings")
    right.set_yscale("log")
    right.set_xlabel("events (% of consecutive iteration pairs)")
    right.set_ylabel("parameters (log scale)")
    right.legend(fontsize=8)
    right.set_title("Per parameter", fontsize=10)
    fig.suptitle("Oscillations: how often weights reverse and gradients change sign")
    return style.save(fig, path)


# --- Fig S17: learning is synchronised ------------------------------------------------------


def synchronisation(
    layers: Sequence[str],
    series: np.ndarray,
    moments: np.ndarray,
    synced: np.ndarray,
    count: int,
    baseline_mean: float,
    baseline_std: float,
    p_value: float,
    required: int,
    path: str | Path,
    top: int = 20,
    *,
    style: PlotStyle,
) -> Path:
    """S17: layers' moments of learning coincide more often than chance."""
    series = np.asarray(series, dtype=np.float64)
    T, L = series.shape
    # moments crowd into the first part of training: add a zoomed column when they do
    when = np.flatnonzero(np.asarray(moments).any(axis=1))
    last = max([np.percentile(when, 75), *np.asarray(synced)]) if when.size else T - 1
    zoom_end = int(min(T - 1, 1.3 * last + 5))
    zoom = T > 40 and zoom_end < 0.5 * T
    per = 0.75 if L <= 10 else 0.45
    fig = Figure(figsize=(12 if zoom else 9, 1.8 + per * L), layout="constrained")
    grid = fig.subplots(L, 2 if zoom else 1, squeeze=False, sharex="col",
                        gridspec_kw={"width_ratios": [1.5, 1]} if zoom else None)  # fmt: skip
    fig.get_layout_engine().set(hspace=0.0, h_pad=0.02)
    t = np.arange(T)
    for i, name in enumerate(layers):
        m = np.flatnonzero(moments[:, i])
        # early iterations can dwarf the rest: fit the bulk and every marked moment
        lo, hi = np.percentile(series[:, i], [1, 99]) if T else (0.0, 0.0)
        lo = min([lo, *series[m, i]])
        pad = 0.15 * max(hi - lo, 1e-12)
        for ax in grid[i]:
            for s in synced:
                ax.axvline(s, color=SYNC, lw=1.0, alpha=0.5)
            ax.plot(t, series[:, i], color="#4d4d4d", lw=0.7)
            ax.plot(m, series[m, i], "v", color=HELP, ms=3.5)
            ax.axhline(0, color="k", lw=0.4)
            ax.set_ylim(lo - pad, hi + pad)
        if zoom:  # the zoomed column shows the whole range of its window
            window = series[: zoom_end + 1, i]
            wpad = 0.08 * max(float(np.ptp(window)), 1e-12)
            grid[i, 1].set_ylim(window.min() - wpad, window.max() + wpad)
            ax.tick_params(axis="y", labelsize=6)
            ax.yaxis.get_offset_text().set_fontsize(6)
        grid[i, 0].text(
            0.003, 0.96, name, transform=grid[i, 0].transAxes, ha="left", va="top",
            fontsize=7 if L > 10 else 8, bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
        )  # fmt: skip
    grid[-1, 0].set_xlabel("iteration")
    grid[-1, 0].set_xlim(0, max(T - 1, 1))
    if zoom:
        grid[0, 0].set_title("all iterations (y range fits the bulk)", fontsize=9)
        grid[0, 1].set_title(f"zoom: iterations 0–{zoom_end}, full y range", fontsize=9)
        grid[-1, 1].set_xlabel("iteration")
        grid[-1, 1].set_xlim(0, zoom_end)
    fig.supylabel(f"layer LCA per iteration ({style.loss_unit})", fontsize=9)
    from matplotlib.lines import Line2D

    fig.legend(
        handles=[
            Line2D([], [], color="#4d4d4d", lw=0.8, label="layer LCA"),
            Line2D([], [], ls="", marker="v", color=HELP, label=f"top {top} moments of learning"),
            Line2D([], [], color=SYNC, alpha=0.6, label="synchronised iteration"),
        ],
        loc="outside lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"Synchronised moments of learning: {count} iterations with ≥ {required} of {L} layers "
        f"at a top-{top} local minimum\nrandom-shift baseline {baseline_mean:.2f} ± "
        f"{baseline_std:.2f} (p = {p_value:.3g})",
        fontsize=10,
    )
    return style.save(fig, path)


# --- conservation: the loss rebuilt from LCA ------------------------------------------------


def approximate_loss(
    measured: np.ndarray,
    rebuilt: np.ndarray,
    first_order: np.ndarray,
    path: str | Path,
    split: str = "train",
    *,
    rule: str,
    style: PlotStyle,
) -> Path:
    """L(θ_0) + cumulative Σ LCA should retrace the measured loss: the LCA is grounded.

    ``rebuilt`` is that curve from the LCA of the allocated ``rule`` (adaptive, simpson).
    """
    measured, rebuilt, fo = (np.asarray(a, np.float64) for a in (measured, rebuilt, first_order))
    t = np.arange(len(measured))
    fig = Figure(figsize=(8, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.plot(t, measured, color=LOSS, lw=2.2, label=f"measured full {split}-set loss")
    top.plot(t, rebuilt, color="#2171b5", lw=1.1, ls="--", label=f"L(θ_0) + Σ LCA, {rule}")
    top.plot(t, fo, color="#e6550d", lw=1.1, ls=":", label="L(θ_0) + Σ LCA, first order")
    top.set_ylabel(f"loss ({style.loss_unit})")
    top.legend(fontsize=8)
    bottom.plot(t, rebuilt - measured, color="#2171b5", lw=1.1, label=f"{rule} − measured")
    bottom.plot(t, fo - measured, color="#e6550d", lw=1.1, label="first order − measured")
    bottom.axhline(0, color="k", lw=0.5)
    bottom.set_ylabel(f"cumulative error ({style.loss_unit})")
    bottom.set_xlabel("iteration")
    bottom.set_xlim(0, max(len(t) - 1, 1))
    bottom.legend(fontsize=8)
    change = measured[-1] - measured[0] if len(measured) else float("nan")

    def pct(curve: np.ndarray) -> str:  # the total error ΔL − Σ LCA, as verify-error signs it
        return f"{100 * (measured[-1] - curve[-1]) / abs(change):+.3f} %" if change else "n/a"

    top.set_title(
        f"Loss rebuilt from LCA vs measured (total error: {rule} {pct(rebuilt)}, "
        f"first order {pct(fo)} of ΔL)",
        fontsize=10,
    )
    return style.save(fig, path)


# --- comparisons: splits, runs, groups ------------------------------------------------------


def grouped_layer_totals(
    layers: Sequence[str],
    groups: Mapping[str, np.ndarray],
    path: str | Path,
    title: str,
    p_values: Mapping[str, np.ndarray] | None = None,
    *,
    style: PlotStyle,
) -> Path:
    """Per-layer total LCA for several groups side by side; (runs, L) arrays get mean ± std.

    A group's array may be (L,) (one value per layer) or (runs, L): then the bar is the mean,
    the error bar the standard deviation (ddof=1) and the dots the single runs.
    """
    names = list(groups)
    G = len(names)
    x = np.arange(len(layers))
    w = 0.8 / max(G, 1)
    fig = Figure(figsize=(figure_width(len(layers), 6.5, 0.3 + 0.15 * G), 4.6))
    ax = fig.subplots()
    palette = ["#4575b4", "#fdae61", "#74add1", "#f46d43", "#abd9e9"]
    for g, name in enumerate(names):
        data = np.asarray(groups[name], dtype=np.float64)
        data = data[None] if data.ndim == 1 else data
        mean = data.mean(axis=0)
        std = data.std(axis=0, ddof=1) if data.shape[0] > 1 else None
        pos = x - 0.4 + w * (g + 0.5)
        label = name + (", mean ± std; dots: single runs" if data.shape[0] > 1 else "")
        colour = palette[g % len(palette)]
        ax.bar(pos, mean, w * 0.92, yerr=std, capsize=3, color=colour, label=label)
        if data.shape[0] > 1:
            for row in data:
                ax.plot(pos, row, ".", color="k", ms=4, zorder=3)
        if p_values is not None and name in p_values and len(layers) <= 16:
            spread = std if std is not None else np.zeros_like(mean)
            for xi, m, sd, p in zip(pos, mean, spread, p_values[name]):
                if not np.isfinite(p):
                    continue
                up = m >= 0  # write beyond the end of the bar and its whisker
                ax.annotate(
                    f"p={p:.2g}", (xi, m + (sd if up else -sd)), xytext=(0, 3 if up else -3),
                    textcoords="offset points", ha="center", va="bottom" if up else "top",
                    fontsize=6.5, rotation=90 if G > 2 or len(layers) > 6 else 0,
                )  # fmt: skip
    ax.axhline(0, color="k", lw=0.6)
    ax.margins(y=0.2)
    layer_axis(ax, layers)
    ax.set_ylabel(f"total LCA over training ({style.loss_unit}); < 0 helped, > 0 hurt")
    ax.set_xlabel("layer")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return style.save(fig, path)
