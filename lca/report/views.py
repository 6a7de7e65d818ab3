"""report.md's "Direct views" (Fig 2, S1, S2): LCA of single parameters and units, first run.

Fig 2 (kernel heatmaps at a few iterations, and their animation) and S2 (running totals of
single weights) read the per-parameter LCA (``store: parameters``); S1 (one row per unit)
the unit sums, which a ``units`` store keeps too; a ``layers`` store gives none of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import analysis
from ..storage import Run
from . import plots_parameters
from .section import ReportRuns, image
from .style import PlotStyle

MAX_VIEW_LAYERS = 4
STILLS = 4  # iterations side by side in the Fig 2 stills


class ViewsSection:
    """The direct views of the first run: what its store allows, read once, drawn once."""

    def __init__(self, info: dict[str, Any], arrays: dict[str, Any]) -> None:
        self.data: dict[str, Any] = {"views": analysis.jsonable(info)}
        self._arrays = arrays  # what figures() draws (empty: nothing to draw)

    @classmethod
    def from_runs(cls, runs: ReportRuns) -> ViewsSection:
        run, split, chunk_rows = runs.runs[0], runs.split, runs.chunk_rows
        layers = _kernel_layers(run)
        info: dict[str, Any] = {"run_dir": str(run.path), "layers": layers}
        arrays: dict[str, Any] = {}
        if not layers or run.num_iterations == 0 or run.store_level == "layers":
            return cls(info, arrays)
        unit_layers = _unit_layers(run, layers)
        by_layer = run.unit_lcas(split, unit_layers, chunk_rows)  # one pass over the rows
        units = [by_layer[layer] for layer in unit_layers]
        kinds = [run.layout.kind_of_units(layer) for layer in unit_layers]
        arrays["units"] = (unit_layers, units, kinds)
        info["unit_totals"] = {layer: u.sum(axis=0) for layer, u in zip(unit_layers, units)}
        if run.store_level == "parameters":
            arrays["parameters"] = _parameter_views(run, split, layers, runs.frames, chunk_rows)
            info.update(arrays["parameters"]["info"])
        return cls(info, arrays)

    def figures(self, out_dir: Path, style: PlotStyle) -> dict[str, Path]:
        figures: dict[str, Path] = {}
        if "units" in self._arrays:
            unit_layers, units, kinds = self._arrays["units"]
            figures["s1_unit_lca"] = plots_parameters.unit_series(
                unit_layers, units, out_dir / "s1_unit_lca.png", kinds, style=style
            )
        if "parameters" in self._arrays:
            views = self._arrays["parameters"]
            layers, blocks = views["layers"], views["blocks"]
            for layer in layers:
                figures[f"fig2_frames_{layer}"] = plots_parameters.kernel_frames(
                    layer, views["stills"], views["still_frames"][layer],
                    out_dir / f"fig2_frames_{layer}.png", block=blocks[layer], style=style,
                )  # fmt: skip
            figures["fig2_animation"] = plots_parameters.kernel_animation(
                layers, views["animated"], views["animated_frames"],
                out_dir / "fig2_animation.gif", blocks=blocks, style=style,
            )  # fmt: skip
            figures["s2_parameter_curves"] = plots_parameters.parameter_curves(
                layers, views["curves"], out_dir / "s2_parameter_curves.png", style=style
            )
        return figures

    def markdown(self, figures: Mapping[str, Path]) -> str:
        parts = ["## Direct views (Fig 2, S1, S2)", ""]
        view_layers = [
            k.removeprefix("fig2_frames_") for k in figures if k.startswith("fig2_frames_")
        ]
        for layer in view_layers:
            parts += [image(figures, f"fig2_frames_{layer}", f"LCA heatmaps of {layer}"), ""]
        if view_layers:
            parts += [
                "How to read: each panel is one layer's kernel at one iteration, outputs down and "
                "inputs across (convolutions: a grid of kh×kw blocks), green = helped, red = hurt, "
                "white = no effect; one colour scale per layer, clipped at the 99th percentile of "
                "|LCA|. The animation `fig2_animation.gif` plays the same over training.",
                "",
                image(figures, "fig2_animation", "animated LCA heatmaps"),
                "",
            ]
        if "s1_unit_lca" in figures:
            parts += [
                image(figures, "s1_unit_lca", "LCA per unit"),
                "",
                "How to read: each row is one unit (output neuron or channel with its incoming "
                "weights and bias, attention head, embedding row); colour is that unit's LCA at "
                "each iteration.",
                "",
            ]
        if "s2_parameter_curves" in figures:
            parts += [
                image(figures, "s2_parameter_curves", "cumulative LCA of single parameters"),
                "",
                "How to read: running totals of single weights: the 50 that helped most over "
                "training (green) and 50 random others (grey). How far apart the bundles end shows "
                "how unevenly the progress is spread over a layer's weights.",
                "",
            ]
        if not (view_layers or "s1_unit_lca" in figures):
            parts += ["None drawn (see Skipped above, or no layer with one kernel).", ""]
        return "\n".join(parts)


def _parameter_views(
    run: Run, split: str, layers: list[str], frames: int, chunk_rows: int
) -> dict[str, Any]:
    """Fig 2's kernels (stills, animation) and S2's curves, read from the per-parameter LCA."""
    lca = run.lca(split)
    T = lca.shape[0]
    stills = np.unique(np.geomspace(1, T, min(STILLS, T)).round().astype(int) - 1)
    animated = np.unique(np.linspace(0, T - 1, max(1, min(frames, T))).round().astype(int))
    both = np.union1d(stills, animated)
    kernels = kernel_rows(lca, both, run.layout, layers, chunk_rows)
    position = {int(t): k for k, t in enumerate(both)}
    curves = [
        analysis.parameter_curves(lca, run.layout, layer, chunk_rows=chunk_rows) for layer in layers
    ]
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
    return {
        "layers": layers,
        "blocks": {layer: _kernel_block(run, layer) for layer in layers},
        "stills": stills.tolist(),
        "still_frames": {
            layer: [kernels[layer][position[int(t)]] for t in stills] for layer in layers
        },
        "animated": animated.tolist(),
        "animated_frames": {
            layer: [kernels[layer][position[int(t)]] for t in animated] for layer in layers
        },
        "curves": curves,
        "info": info,
    }


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
