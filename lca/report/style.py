"""How every figure of ``lca report`` and ``lca prune`` looks: colours, sizes, the loss unit.

Colour meaning is the paper's throughout: **green = helped** (negative LCA, lowered the
loss), **red = hurt** (positive LCA), white = zero, darker = larger. What differs between
reports (the unit of the run's loss, the resolution) is a `PlotStyle`, which every
figure function takes as an argument; the drawing helpers the figure modules share are here
too, so that no figure module reaches into another.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

HELP = "#1a9850"  # green: negative LCA
HURT = "#d73027"  # red: positive LCA
ZERO = "#969696"  # grey: no effect
LOSS = "#252525"
SYNC = "#6a3d9a"  # purple: synchronised iterations
LCA_CMAP = LinearSegmentedColormap.from_list(
    "lca_green_white_red", ["#00441b", HELP, "#ffffff", HURT, "#67000d"]
)
DPI = 110
LOSS_UNITS = {"sparse_categorical_crossentropy": "nats", "mean_squared_error": "MSE"}


def unit_of_loss(loss: str) -> str:
    """Nats for cross-entropy (natural log); the loss's own name for anything else."""
    return LOSS_UNITS.get(loss, loss)


@dataclass(frozen=True)
class PlotStyle:
    """What a report's figures share beyond the fixed colours: the loss unit and resolution."""

    loss_unit: str = "nats"  # losses and LCA in labels (one report has one loss)
    dpi: int = DPI

    @classmethod
    def for_loss(cls, loss: str) -> PlotStyle:
        """The style of a run trained with ``loss`` (``model.loss`` of its config)."""
        return cls(loss_unit=unit_of_loss(loss))

    def save(self, fig: Figure, path: str | Path) -> Path:
        """Write ``fig`` as a PNG and free it at once."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=self.dpi, bbox_inches="tight")
        # A figure's artists form reference cycles, so its images would stay in memory until
        # the cyclic collector happens to run: free them now, keeping the report's peak flat.
        fig.clear()
        gc.collect()
        return path

    def colour_bar(self, fig: Figure, mappable, ax, limit: float, short: bool = False) -> None:
        """The LCA colour scale beside ``ax`` (``short``: the unit only)."""
        bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=7)
        if short:
            bar.set_label(f"LCA ({self.loss_unit})", fontsize=8)
        else:
            label = (
                f"LCA ({self.loss_unit}); green = helped, red = hurt\n"
                f"colour clipped at ±{limit:.2g}"
            )
            bar.set_label(label, fontsize=8)


# --- drawing helpers shared by the figure modules ---------------------------------------------


def layer_axis(ax, layers: Sequence[str], axis: str = "x") -> None:
    """Layer names as tick labels, turned on their side when there are many."""
    positions = np.arange(len(layers))
    many = len(layers) > 6
    if axis == "x":
        ax.set_xticks(positions)
        ax.set_xticklabels(layers, rotation=90 if many else 0, fontsize=8 if many else 9)
        ax.set_xlim(-0.6, len(layers) - 0.4)
    else:
        ax.set_yticks(positions)
        ax.set_yticklabels(layers, fontsize=8 if many else 9)


def figure_width(n_layers: int, base: float = 6.0, per_layer: float = 0.38) -> float:
    """Inches for a figure with one group of bars per layer."""
    return max(base, 1.5 + per_layer * n_layers)


def symmetric_limit(values: np.ndarray, percentile: float = 99.0) -> float:
    """A colour range ±v around zero that is not washed out by a few huge values."""
    a = np.abs(np.asarray(values, dtype=np.float64))
    a = a[np.isfinite(a) & (a > 0)]
    if a.size == 0:
        return 1.0
    v = float(np.percentile(a, percentile))
    return v if v > 0 else float(a.max())


def sign_colours(values: np.ndarray) -> list[str]:
    """Red for positive (hurt), green for negative (helped), grey for zero."""
    return [HURT if v > 0 else HELP if v < 0 else ZERO for v in np.asarray(values)]


def signed(v: float) -> str:
    """A value with its sign and 3 significant digits, or "n/a"."""
    return f"{v:+.3g}" if np.isfinite(v) else "n/a"


def sign_legend(ax, loc: str = "best") -> None:
    """The legend saying what green and red bars mean."""
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color=HELP, label="negative = helped (lowered the loss)"),
            Patch(color=HURT, label="positive = hurt (raised the loss)"),
        ],
        loc=loc,
        fontsize=8,
    )


def layer_colours(n: int) -> list:
    """One line colour per layer: tab10 up to 10, a viridis ramp beyond."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]
