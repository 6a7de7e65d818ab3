"""The report's overview figure: what LCA shows about one run, in three panels.

Which layer lowered the loss and when (cumulative LCA per layer), how noisy that help is (the
share of each layer's parameters that helped at each iteration), and whether the allocation
can be trusted (the loss rebuilt from the allocated rule and from first order, against the
measured loss). Small arrays in, one PNG out, as in `lca.report.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .style import LOSS, PlotStyle, layer_colours


def _smooth(series: np.ndarray, window: int) -> np.ndarray:
    """A centred moving average along the iterations (NaN-aware), so noise reads as a band."""
    if window <= 1 or len(series) < window:
        return series
    kernel = np.ones(window)
    valid = np.isfinite(series)
    filled = np.where(valid, series, 0.0)
    sums = np.apply_along_axis(np.convolve, 0, filled, kernel, "same")
    counts = np.apply_along_axis(np.convolve, 0, valid.astype(float), kernel, "same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def overview(
    layers: Sequence[str],
    layer_series: np.ndarray,
    helped_per_layer: np.ndarray | None,
    rebuilt: Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "",
    rule_label: str = "allocated rule",
    mean_helped: float | None = None,
    *,
    style: PlotStyle,
) -> Path:
    """Three panels: cumulative LCA per layer, % of parameters helped, conservation.

    ``layer_series`` is the (T, L) per-iteration LCA per layer; ``helped_per_layer`` the
    (T, L) percent of non-zero LCA below zero (None where the store keeps no per-parameter
    LCA: the panel says so) and ``mean_helped`` its mean over all parameters and iterations,
    as the report's headline gives it; ``rebuilt`` holds ``measured``, ``rk4`` and
    ``first_order`` as returned by
    [`lca.analysis.approximate_loss`][lca.analysis.series.approximate_loss].
    """
    series = np.asarray(layer_series, dtype=np.float64)
    T = series.shape[0]
    t = np.arange(1, T + 1)
    colours = layer_colours(len(layers))
    fig = Figure(figsize=(13.5, 3.9))
    cum_ax, helped_ax, loss_ax = fig.subplots(1, 3, gridspec_kw={"wspace": 0.28})

    cumulative = np.cumsum(series, axis=0)
    for name, colour, curve in zip(layers, colours, cumulative.T):
        cum_ax.plot(t, curve, color=colour, lw=1.4, label=f"{name}: {curve[-1]:+.3f}")
    cum_ax.axhline(0, color="k", lw=0.6)
    cum_ax.set_xlim(0, T)
    cum_ax.set_xlabel("iteration")
    cum_ax.set_ylabel(f"cumulative LCA ({style.loss_unit})")
    cum_ax.set_title("Which layer lowered the loss (below 0 = helped)", fontsize=10)
    cum_ax.legend(fontsize=8, ncol=2 if len(layers) > 6 else 1)

    if helped_per_layer is None:
        helped_ax.text(
            0.5, 0.5, "per-parameter LCA not stored", ha="center", va="center", fontsize=9
        )
        helped_ax.set_axis_off()
    else:
        helped = np.asarray(helped_per_layer, dtype=np.float64)
        window = max(1, T // 40)
        for name, colour, curve in zip(layers, colours, helped.T):
            helped_ax.plot(t, curve, color=colour, lw=0.4, alpha=0.25)
            helped_ax.plot(t, _smooth(curve, window), color=colour, lw=1.4, label=name)
        helped_ax.axhline(50, color="k", lw=0.6, ls="--")
        helped_ax.set_xlim(0, T)
        helped_ax.set_xlabel("iteration")
        helped_ax.set_ylabel("% of parameters that helped")
        mean = "" if mean_helped is None else f" (mean {mean_helped:.1f} %)"
        helped_ax.set_title(f"Share of parameters that helped{mean}", fontsize=10)
        helped_ax.legend(fontsize=8, ncol=2 if len(layers) > 6 else 1)

    measured = np.asarray(rebuilt["measured"], dtype=np.float64)
    steps = np.arange(len(measured))
    loss_ax.plot(steps, measured, color=LOSS, lw=2.2, label="measured loss")
    loss_ax.plot(
        steps,
        rebuilt["rk4"],
        color="#2171b5",
        lw=1.2,
        ls="--",
        label=f"L(θ_0) + Σ LCA, {rule_label}",
    )
    loss_ax.plot(
        steps, rebuilt["first_order"], color="#e6550d", lw=1.2, ls=":", label="first order"
    )
    change = measured[-1] - measured[0] if len(measured) > 1 else 0.0

    def pct(curve: np.ndarray) -> str:  # the total error ΔL − Σ LCA, as verify-error signs it
        return f"{100 * (measured[-1] - curve[-1]) / abs(change):+.3f} %" if change else "n/a"

    loss_ax.set_xlim(0, max(len(steps) - 1, 1))
    loss_ax.set_xlabel("iteration")
    loss_ax.set_ylabel(f"loss ({style.loss_unit})")
    loss_ax.set_title(
        f"Conserved: error {pct(np.asarray(rebuilt['rk4']))} "
        f"(first order {pct(np.asarray(rebuilt['first_order']))})",
        fontsize=10,
    )
    loss_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11, y=1.02)
    return style.save(fig, path)
