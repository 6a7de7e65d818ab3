"""``lca prune``'s figure: accuracy and loss against the fraction of weights pruned."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..report.style import ZERO, PlotStyle, layer_colours


def pruning_curves(
    curves: Mapping[str, Mapping[tuple[str, str], tuple]],
    path: str | Path,
    title: str = "",
    *,
    style: PlotStyle,
) -> Path:
    """One panel per (metric, split), one line per criterion, random as mean ± std band.

    ``curves[criterion][(metric, split)] = (fractions, mean, std or None)``, 0 included. The
    x axis is the fraction kept on a log scale (1 → 0.02), where pruning's differences live.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = list(dict.fromkeys(key for c in curves.values() for key in c))
    splits = list(dict.fromkeys(s for _, s in panels))
    metrics = list(dict.fromkeys(m for m, _ in panels))
    fig = Figure(figsize=(4.6 * len(splits), 3.6 * len(metrics)))
    axes = np.atleast_2d(fig.subplots(len(metrics), len(splits), squeeze=False))
    colours = dict(zip([c for c in curves if c != "random"], layer_colours(10)))
    colours["random"] = ZERO
    fractions = next(iter(next(iter(curves.values())).values()))[0]
    log_x = bool(np.all(fractions < 1.0))
    for (metric, split), ax in zip(
        [(m, s) for m in metrics for s in splits], axes.reshape(-1), strict=True
    ):
        for criterion, panel in curves.items():
            if (metric, split) not in panel:
                continue
            x, mean, std = panel[(metric, split)]
            kept = 1.0 - np.asarray(x)
            scale = 100.0 if metric == "accuracy" else 1.0
            ax.plot(
                kept,
                mean * scale,
                "o-",
                color=colours[criterion],
                lw=1.4,
                ms=3.5,
                label=criterion + (" (mean ± std)" if std is not None else ""),
            )
            if std is not None:
                ax.fill_between(
                    kept,
                    (mean - std) * scale,
                    (mean + std) * scale,
                    color=colours[criterion],
                    alpha=0.25,
                    lw=0,
                )
        if log_x:
            ax.set_xscale("log")
            ticks = 1.0 - np.asarray(fractions)
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{100 * f:g}" for f in fractions], fontsize=8)
            ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("weights pruned (% of prunable)")
        if metric == "loss":
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel(f"{split} loss ({style.loss_unit})")
        else:
            ax.set_ylabel(f"{split} {metric} (%)")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return style.save(fig, path)
