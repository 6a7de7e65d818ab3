"""report.md's "Per class" (Fig 6, S21, S22): from ``lca allocate --per-class`` arrays.

Present when the run was allocated per class; a run whose loss is not a classification loss
gets one line saying why the section is absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.per_class import class_specialisation, class_synchronisation, neuron_input_totals
from ..storage import Run
from .markdown import table
from .measures import TOP_MOMENTS, Skipped, per_parameter_skip
from .plots_parameters import neuron_view
from .section import ReportRuns, image
from .style import PlotStyle


class PerClassSection:
    """Synchronisation per class, unit specialisation and one neuron by class (S22)."""

    def __init__(self, per_class: dict | None, loss: str, classification: bool) -> None:
        self._per_class = per_class  # with the S22 arrays, until drawn
        self._loss = loss
        self._classification = classification
        data = per_class
        if per_class is not None and per_class["neuron"] is not None:
            n = per_class["neuron"]
            data = {**per_class, "neuron": {"layer": n["layer"], "unit": n["unit"]}}
        self.data: dict[str, Any] = {"per_class": data}

    @classmethod
    def from_runs(cls, runs: ReportRuns) -> PerClassSection:
        run, first = runs.runs[0], runs.first
        per_class = measure_per_class(run, runs.split, first.sync_min_fraction, runs.chunk_rows)
        model = run.config.model
        return cls(per_class, model.loss, model.classification)

    def figures(self, out_dir: Path, style: PlotStyle) -> dict[str, Path]:
        if self._per_class is None or self._per_class["neuron"] is None:
            return {}
        n = self._per_class["neuron"]
        path = out_dir / "s22_neuron.png"
        return {
            "s22_neuron": neuron_view(
                n["layer"], n["unit"], n["class_curves"], n["input_lca"], path, style=style
            )
        }

    def markdown(self, figures: Mapping[str, Path]) -> str:
        parts = []
        if not self._classification:  # say why the class sections are absent
            parts.append(PER_CLASS_NA.format(loss=self._loss))
        if self._per_class is not None:
            text = _tables(self._per_class) + "\n"
            if "s22_neuron" in figures:
                n = self._per_class["neuron"]
                text += (
                    f"\n{image(figures, 's22_neuron', 'one neuron by class')}\n\nHow to read "
                    f"(S22): unit {n['unit']} of {n['layer']}, the one that helped most: its LCA "
                    "summed over training per class (left; the classes it serves fall below "
                    "zero) and the total LCA of each of its input weights laid out as the input "
                    "image (right; green pixels helped).\n"
                )
            parts.append(text)
        return "\n\n".join(p.rstrip("\n") for p in parts)


def neuron_view_skip(run: Run, split: str) -> list[Skipped]:
    """S22 left out: per-class arrays and a dense first layer, but no per-parameter LCA."""
    has_classes = split in run.lca_store and "class_layer_lca" in run.lca_store[split]
    if has_classes and neuron_view_layer(run) and run.store_level != "parameters":
        return [per_parameter_skip(run, "a neuron's input weights as an image (S22)")]
    return []


PER_CLASS_NA = (
    "## Per class\n\nNot applicable: this run's loss ({loss}) is not a classification loss, "
    "so the loss has no per-class parts (Fig 6, S21, S22 are skipped).\n"
)


def measure_per_class(run: Run, split: str, min_fraction: float, chunk_rows: int) -> dict | None:
    """Fig 6 and S21 from ``lca allocate --per-class`` arrays (None when there are none)."""
    group = run.lca_store[split]
    if "class_layer_lca" not in group:
        return None
    sync = class_synchronisation(
        group["class_layer_lca"][:], top=TOP_MOMENTS, min_fraction=min_fraction
    )
    specialisation = {}
    for layer in run.layout.layers:
        units = group["class_unit_lca"][layer]
        totals = np.zeros(units.shape[1:])
        for start in range(0, units.shape[0], chunk_rows):  # stream over iterations
            totals += units[start : start + chunk_rows].sum(axis=0, dtype=np.float64)
        result = class_specialisation(totals)
        specialisation[layer] = {
            "units": result["units"],
            **{f"top{k}_over_80pct": v for k, v in result["fraction_over"].items()},
        }
    neuron = _neuron_view(run, split, group, chunk_rows)
    return {
        "synchronisation": sync,
        "specialisation": specialisation,
        "min_fraction": min_fraction,
        "neuron": neuron,
    }


def neuron_view_layer(run: Run) -> str | None:
    """The first layer when it is dense on the (image) input: S22 draws its input weights."""
    layer = run.layout.layers[0]
    kernel = next((e for e in run.layout.entries if e.layer == layer), None)
    shape = [int(v) for v in run.trajectory.attrs.get("input_shape", [])]
    if kernel is None or len(kernel.shape) != 2 or kernel.shape[0] != int(np.prod(shape)):
        return None
    return layer


def _neuron_view(run: Run, split: str, group, chunk_rows: int) -> dict | None:
    """S22 for the most-helped unit of a first dense layer on image input (else None)."""
    layer = neuron_view_layer(run)
    if layer is None or run.store_level != "parameters":  # the input weights' LCA: per weight
        return None
    shape = [int(v) for v in run.trajectory.attrs.get("input_shape", [])]
    units = group["class_unit_lca"][layer]
    totals = np.zeros(units.shape[1:])
    for start in range(0, units.shape[0], chunk_rows):
        totals += units[start : start + chunk_rows].sum(axis=0, dtype=np.float64)
    unit = int(np.argmin(totals.sum(axis=0)))  # the unit that helped most
    curves = np.cumsum(units[:, :, unit].astype(np.float64), axis=0)
    inputs = neuron_input_totals(run.lca(split), run.layout, layer, unit, chunk_rows)
    image = inputs.reshape(shape).mean(axis=-1)
    return {"layer": layer, "unit": unit, "class_curves": curves, "input_lca": image}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.0f} %"


def _tables(per_class: dict) -> str:
    """Fig 6's synchronisation per class and S21's specialisation, as report.md tables."""
    sync = per_class["synchronisation"]
    rows = [
        [str(c), f"{n:.0f}", f"{b:.2f}", f"{p:.3g}"]
        for c, (n, b, p) in enumerate(zip(sync["count"], sync["baseline_mean"], sync["p_value"]))
    ]
    spec = per_class["specialisation"]
    return "\n".join(
        [
            "## Per class (Fig 6, S21)",
            "",
            "Synchronised moments of learning per class: iterations where at least "
            f"{_percent(per_class['min_fraction'])} of the layers have one of their "
            f"top-{TOP_MOMENTS} moments in that class's per-layer LCA; "
            f"mean {sync['mean_count']:.1f} against "
            f"{sync['mean_baseline']:.2f} when layers are shifted at random by −2…2 iterations "
            "(the paper: 9.4 against 0.4 for MNIST-FC).",
            "",
            table(["class", "synchronised moments", "shift baseline", "p"], rows),
            "",
            "Class specialisation of units (S21): for each output unit, the share of its helping "
            "(negative total LCA, per class) carried by its top 1, 2, 3 classes; the table gives "
            "the share of the layer's helped units where that share exceeds 80 %.",
            "",
            table(
                ["layer", "units helped", "top 1 > 80 %", "top 2 > 80 %", "top 3 > 80 %"],
                [
                    [
                        layer,
                        str(v["units"]),
                        *(_percent(v[f"top{k}_over_80pct"]) for k in (1, 2, 3)),
                    ]
                    for layer, v in spec.items()
                ],
            ),
        ]
    )
