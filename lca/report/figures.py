"""The figures of ``lca report``: which arrays each one draws, read from a measured run.

:mod:`lca.report` measures and writes the text; this module hands the measured arrays to
:mod:`lca.report.plots` and draws the direct views (Fig 2, S1, S2), which read the stores
themselves. What a store did not keep is not drawn (``lca.report`` says why in report.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import analysis
from ..storage import Run
from . import plots, plots_overview, plots_parameters

if TYPE_CHECKING:
    from .measures import RunMeasures

MAX_VIEW_LAYERS = 4
STILLS = 4  # iterations side by side in the Fig 2 stills


# --- figures of measured numbers ------------------------------------------------------------


def run_figures(m: RunMeasures, out: Path, top: int) -> dict[str, Path]:
    """The single-run figures (Fig 3, 4, S7, S11, S17, conservation) the store allows."""
    h, osc, s, hist = m.helped, m.oscillations, m.sync, m.histogram
    figures: dict[str, Path] = {}
    rule = m.allocated_with.removeprefix("rule ").split(",")[0].split(" (")[0] or "allocated rule"
    figures["overview"] = plots_overview.overview(
        m.layers, m.series, None if h is None else h.helped_per_layer, m.approx,
        out / "overview.png", title=f"{m.run_dir.name}: what LCA shows ({m.split} split)",
        rule_label=rule, mean_helped=None if h is None else h.mean_helped,
    )  # fmt: skip
    if h is not None:
        figures["fig3a_percent_helped"] = plots.percent_helped(
            h.helped, h.hurt, h.zero, m.approx["measured"], out / "fig3a_percent_helped.png",
            split=m.split,
        )  # fmt: skip
    if hist is not None:
        figures["fig3b_lca_histogram"] = plots.value_histogram(
            hist.edges, hist.helped_counts, hist.hurt_counts, hist.excess_kurtosis,
            out / "fig3b_lca_histogram.png", zero=hist.zero, clipped=hist.clipped,
        )  # fmt: skip
    if h is not None:
        figures["fig3c_helped_per_layer"] = plots.helped_per_layer(
            m.layers, h.mean_helped_per_layer, out / "fig3c_helped_per_layer.png"
        )
        figures["fig3d_fraction_helped"] = plots.fraction_helped(
            h.fraction_of_iterations_helped, out / "fig3d_fraction_helped.png", m.layer_index,
            m.layers, iterations=m.iterations,
        )  # fmt: skip
    figures["fig4_layer_totals"] = plots.layer_totals(
        m.layers, m.totals, out / "fig4_layer_totals.png"
    )
    figures["s11_cumulative_layer_lca"] = plots.cumulative_layer_lca(
        m.layers, m.series, out / "s11_cumulative_layer_lca.png"
    )
    if osc is not None:
        figures["s7_oscillations"] = plots.oscillations(
            m.layers, osc.iterations_per_direction_change_per_layer,
            osc.iterations_per_gradient_crossing_per_layer, osc.direction_changes,
            osc.gradient_crossings, m.iterations, out / "s7_oscillations.png",
        )  # fmt: skip
    figures["s17_synchronisation"] = plots.synchronisation(
        m.layers, m.series, m.moments, s.iterations, s.count, s.baseline_mean, s.baseline_std,
        s.p_value, s.required_layers, out / "s17_synchronisation.png", top=top,
    )  # fmt: skip
    figures["approximate_loss"] = plots.approximate_loss(
        m.approx["measured"], m.approx["rk4"], m.approx["first_order"],
        out / "approximate_loss.png", split=m.split,
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
            layers, groups, out / "runs_layer_totals.png", title, p_values or None
        )
    return figures


# --- views of single parameters and units (first run only) ---------------------------------


def _kernel_layers(run: Run) -> list[str]:
    """Layers with one kernel variable (what ``kernel_matrix`` draws); at most 4, ends kept."""
    layers = [
        name
        for name in run.layout.layers
        if sum(len(e.shape) >= 2 for e in run.layout.entries if e.layer == name) == 1
    ]
    if len(layers) <= MAX_VIEW_LAYERS:
        return layers
    pick = np.unique(np.linspace(0, len(layers) - 1, MAX_VIEW_LAYERS).round().astype(int))
    return [layers[i] for i in pick]


def _unit_layers(run: Run, kernel_layers: list[str]) -> list[str]:
    """S1's layers: the kernel layers, and every layer of attention heads or MLP neurons
    (a transformer's components), in layout order; at most 6, ends kept."""
    named = {"head", "neuron"}
    layers = [
        name
        for name in run.layout.layers
        if name in kernel_layers or run.layout.kind_of_units(name) in named
    ]
    if len(layers) <= MAX_VIEW_LAYERS + 2:
        return layers
    pick = np.unique(np.linspace(0, len(layers) - 1, MAX_VIEW_LAYERS + 2).round().astype(int))
    return [layers[i] for i in pick]


def _kernel_block(run: Run, layer: str) -> tuple[int, int] | None:
    """(kh, kw) of a conv layer's heatmap blocks (as ``kernel_matrix`` lays them), else None."""
    for e in run.layout.entries:
        if e.layer == layer and len(e.shape) == 4:
            return (e.shape[0], e.shape[1])
        if e.layer == layer and len(e.shape) == 3:
            return (1, e.shape[0])
    return None


def kernel_rows(
    lca: analysis.RowSliceable,
    iterations: np.ndarray,
    layout: Any,
    layers: Sequence[str],
    chunk_rows: int,
) -> dict[str, list[np.ndarray]]:
    """Kernel heatmaps of the chosen iterations, reading only the blocks that hold them."""
    out: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    T = lca.shape[0]
    wanted = np.asarray(sorted(iterations))
    for start in range(0, T, chunk_rows):
        stop = min(T, start + chunk_rows)
        inside = wanted[(wanted >= start) & (wanted < stop)]
        if inside.size == 0:
            continue
        block = np.asarray(lca[start:stop])
        for t in inside:
            for layer in layers:
                out[layer].append(analysis.kernel_matrix(block[t - start], layout, layer))
    return out


def views(run: Run, split: str, frames: int, chunk_rows: int, out: Path) -> dict[str, Any]:
    """Fig 2 stills and animation, S1 unit images and S2 parameter curves of one run.

    Fig 2 and S2 read the per-parameter LCA (``store: parameters``); S1 the unit sums, which
    a ``units`` store keeps; a ``layers`` store gives none of them.
    """
    layers = _kernel_layers(run)
    T = run.num_iterations
    figures: dict[str, Path] = {}
    info: dict[str, Any] = {"run_dir": str(run.path), "layers": layers}
    if not layers or T == 0 or run.store_level == "layers":
        return {"figures": figures, "info": info}
    unit_layers = _unit_layers(run, layers)
    by_layer = run.unit_lcas(split, unit_layers, chunk_rows)  # one pass over the rows
    units = [by_layer[layer] for layer in unit_layers]
    kinds = [run.layout.kind_of_units(layer) for layer in unit_layers]
    figures["s1_unit_lca"] = plots_parameters.unit_series(
        unit_layers, units, out / "s1_unit_lca.png", kinds
    )
    info["unit_totals"] = {layer: u.sum(axis=0) for layer, u in zip(unit_layers, units)}
    if run.store_level == "parameters":
        more = _parameter_views(run, split, layers, frames, chunk_rows, out)
        figures.update(more["figures"])
        info.update(more["info"])
    return {"figures": figures, "info": analysis.jsonable(info)}


def _parameter_views(
    run: Run, split: str, layers: list[str], frames: int, chunk_rows: int, out: Path
) -> dict[str, Any]:
    """Fig 2 (stills, animation) and S2 from the per-parameter LCA."""
    lca = run.lca(split)
    T = lca.shape[0]
    figures: dict[str, Path] = {}
    blocks = {layer: _kernel_block(run, layer) for layer in layers}
    stills = np.unique(np.geomspace(1, T, min(STILLS, T)).round().astype(int) - 1)
    animated = np.unique(np.linspace(0, T - 1, max(1, min(frames, T))).round().astype(int))
    both = np.union1d(stills, animated)
    kernels = kernel_rows(lca, both, run.layout, layers, chunk_rows)
    position = {int(t): k for k, t in enumerate(both)}
    for layer in layers:
        figures[f"fig2_frames_{layer}"] = plots_parameters.kernel_frames(
            layer,
            stills.tolist(),
            [kernels[layer][position[int(t)]] for t in stills],
            out / f"fig2_frames_{layer}.png",
            block=blocks[layer],
        )
    figures["fig2_animation"] = plots_parameters.kernel_animation(
        layers,
        animated.tolist(),
        {layer: [kernels[layer][position[int(t)]] for t in animated] for layer in layers},
        out / "fig2_animation.gif",
        blocks=blocks,
    )
    curves = [
        analysis.parameter_curves(lca, run.layout, layer, chunk_rows=chunk_rows) for layer in layers
    ]
    figures["s2_parameter_curves"] = plots_parameters.parameter_curves(
        layers, curves, out / "s2_parameter_curves.png"
    )
    info = {
        "still_iterations": stills,
        "animation_iterations": animated,
        "parameter_curves": {
            layer: {
                "helpful_indices": c["helpful_indices"],
                "helpful_totals": c["helpful"][-1] if c["helpful"].size else [],
                "random_indices": c["random_indices"],
                "random_totals": c["random"][-1] if c["random"].size else [],
            }
            for layer, c in zip(layers, curves)
        },
    }
    return {"figures": figures, "info": info}
