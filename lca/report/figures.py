"""The figures of a report's measured numbers: which arrays each one draws.

The sections of `lca.report.sections` hand their measures here; the arrays go to
`lca.report.plots` and `lca.report.plots_overview`. What a store did not keep is
not drawn (report.md says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import plots, plots_overview
from .style import PlotStyle

if TYPE_CHECKING:
    from .measures import RunMeasures


def overview_figure(m: RunMeasures, out: Path, style: PlotStyle) -> dict[str, Path]:
    """The overview: cumulative LCA per layer, percent helped, the loss rebuilt."""
    h = m.helped
    overview = plots_overview.overview(
        m.layers, m.series, None if h is None else h.helped_per_layer, m.approx,
        out / "overview.png", title=f"{m.run_dir.name}: what LCA shows ({m.split} split)",
        rule_label=m.rule, mean_helped=None if h is None else h.mean_helped, style=style,
    )  # fmt: skip
    return {"overview": overview}


def run_figures(m: RunMeasures, out: Path, top: int, style: PlotStyle) -> dict[str, Path]:
    """The single-run figures (Fig 3, 4, S7, S11, S17, conservation) the store allows."""
    h, osc, s, hist = m.helped, m.oscillations, m.sync, m.histogram
    figures: dict[str, Path] = {}
    if h is not None:
        figures["fig3a_percent_helped"] = plots.percent_helped(
            h.helped, h.hurt, h.zero, m.approx["measured"], out / "fig3a_percent_helped.png",
            split=m.split, style=style,
        )  # fmt: skip
    if hist is not None:
        figures["fig3b_lca_histogram"] = plots.value_histogram(
            hist.edges, hist.helped_counts, hist.hurt_counts, hist.excess_kurtosis,
            out / "fig3b_lca_histogram.png", zero=hist.zero, clipped=hist.clipped, style=style,
        )  # fmt: skip
    if h is not None:
        figures["fig3c_helped_per_layer"] = plots.helped_per_layer(
            m.layers,
            h.mean_helped_per_layer,
            out / "fig3c_helped_per_layer.png",
            style=style,
        )
        figures["fig3d_fraction_helped"] = plots.fraction_helped(
            h.fraction_of_iterations_helped, out / "fig3d_fraction_helped.png", m.layer_index,
            m.layers, iterations=m.iterations, style=style,
        )  # fmt: skip
    figures["fig4_layer_totals"] = plots.layer_totals(
        m.layers,
        m.totals,
        out / "fig4_layer_totals.png",
        style=style,
    )
    figures["s11_cumulative_layer_lca"] = plots.cumulative_layer_lca(
        m.layers,
        m.series,
        out / "s11_cumulative_layer_lca.png",
        style=style,
    )
    if osc is not None:
        figures["s7_oscillations"] = plots.oscillations(
            m.layers, osc.iterations_per_direction_change_per_layer,
            osc.iterations_per_gradient_crossing_per_layer, osc.direction_changes,
            osc.gradient_crossings, m.iterations, out / "s7_oscillations.png", style=style,
        )  # fmt: skip
    figures["s17_synchronisation"] = plots.synchronisation(
        m.layers, m.series, m.moments, s.iterations, s.count, s.baseline_mean, s.baseline_std,
        s.p_value, s.required_layers, out / "s17_synchronisation.png", top=top, style=style,
    )  # fmt: skip
    figures["approximate_loss"] = plots.approximate_loss(
        m.approx["measured"], m.approx["rk4"], m.approx["first_order"],
        out / "approximate_loss.png", split=m.split, rule=m.rule, style=style,
    )  # fmt: skip
    return figures


def comparison_figures(
    group: list[RunMeasures],
    vs_group: list[RunMeasures],
    columns: list[str],
    sign: dict | None,
    vs_sign: dict | None,
    layers: list[str],
    out: Path,
    style: PlotStyle,
) -> dict[str, Path]:
    """Train vs val per-layer totals, and totals across runs and groups."""
    figures: dict[str, Path] = {}
    with_other = [m for m in group if m.other_totals is not None]
    if with_other:
        a, b = with_other[0].split, with_other[0].other_split
        figures["train_vs_val"] = plots.grouped_layer_totals(
            layers,
            {
                a: np.stack([m.totals for m in with_other]),
                b: np.stack([m.other_totals for m in with_other]),
            },
            out / "train_vs_val.png",
            f"Per-layer total LCA measured on the {a} and the {b} set (same trajectory)",
            style=style,
        )
    if len(group) > 1 or vs_group:
        groups = {columns[0]: np.stack([m.totals for m in group])}
        p_values = {columns[0]: sign["p_value"]} if sign is not None else {}
        if vs_group:
            groups[columns[1]] = np.stack([m.totals for m in vs_group])
            if vs_sign is not None:
                p_values[columns[1]] = vs_sign["p_value"]
        title = "Per-layer total LCA across runs"
        if p_values:
            title += " (p: one-sample t-test of the layer total against 0)"
        figures["runs_layer_totals"] = plots.grouped_layer_totals(
            layers,
            groups,
            out / "runs_layer_totals.png",
            title,
            p_values or None,
            style=style,
        )
    return figures
