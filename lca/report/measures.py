"""What one report measures of each run (:class:`RunMeasures`), and the report object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import analysis
from ..analysis.per_class import class_specialisation, class_synchronisation, neuron_input_totals
from ..storage import Run
from . import plots
from . import splits as report_splits
from .markdown import escape as _md

TOP_MOMENTS = 20


@dataclass(frozen=True)
class Skipped:
    """A measurement a run's store cannot give: what it needs and how to get it."""

    measurement: str
    needs: str
    how: str

    def line(self) -> str:
        return f"{self.measurement}: skipped; needs {self.needs}; {self.how}."


def _per_parameter_skip(run: Run, measurement: str) -> Skipped:
    return Skipped(
        measurement,
        f"the per-parameter LCA, which `store: {run.store_level}` does not keep",
        f"reallocate with `lca allocate {run.path} --store parameters --restart`",
    )


def _skipped(run: Run, split: str) -> list[Skipped]:
    """What ``measure`` leaves out on this run's store."""
    out = []
    if run.store_level != "parameters":
        out += [
            _per_parameter_skip(run, "percent of parameters helped (Table 1, Fig 3a, 3c, 3d)"),
            _per_parameter_skip(run, "distribution of LCA values and its kurtosis (Fig 3b, S10)"),
        ]
    if not run.has_grad(split):
        out.append(
            Skipped(
                "oscillations (Table S2, Fig S7)",
                "the full-set gradients, which `store_grad: false` does not keep",
                f"reallocate with `lca allocate {run.path} --store {run.store_level} "
                "--store-grad --restart`",
            )
        )
    return out


def _skipped_views(run: Run) -> list[Skipped]:
    """What the direct views (first run only) and the train vs val section leave out."""
    out = []
    if run.store_level != "parameters":
        out.append(_per_parameter_skip(run, "kernel heatmaps and their animation (Fig 2)"))
        out.append(_per_parameter_skip(run, "single-parameter curves (S2)"))
    if run.store_level == "layers":
        units = Skipped(
            "",
            "the per-unit LCA, which `store: layers` does not keep",
            f"reallocate with `lca allocate {run.path} --store units --restart`",
        )
        out.append(dataclasses.replace(units, measurement="per-unit LCA images (S1)"))
        if report_splits.has_both_splits(run):
            out.append(
                dataclasses.replace(
                    units, measurement="train vs validation by head, neuron and unit"
                )
            )
    if not report_splits.has_both_splits(run):
        out.append(
            Skipped(
                "train vs validation by component",
                f"both splits allocated (this store has {', '.join(run.splits)})",
                f"reallocate with `lca allocate {run.path} --splits train,val --restart`",
            )
        )
    return out


@dataclass
class RunMeasures:
    """Everything the report measures on one run and split (small arrays only).

    ``helped``, ``histogram`` and ``oscillations`` are None where the store lacks what they
    read (``skipped`` says so); everything per layer works on every store level.
    """

    run_dir: Path
    split: str
    layers: list[str]
    parameters: int
    helped: analysis.Helped | None
    histogram: analysis.ValueHistogram | None
    series: np.ndarray  # (T, L) per-iteration layer LCA
    oscillations: analysis.Oscillations | None
    moments: np.ndarray  # (T, L) bool: top moments of learning
    sync: analysis.Synchronisation
    sync_min_fraction: float
    approx: dict[str, np.ndarray]
    layer_index: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int32))
    other_split: str | None = None  # the split compared with (train vs val)
    other_series: np.ndarray | None = field(repr=False, default=None)
    allocated_with: str = ""  # Run.allocated_with: the rule and precision behind the arrays
    store_level: str = "parameters"
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return int(self.series.shape[0])

    @property
    def totals(self) -> np.ndarray:
        return self.series.sum(axis=0)

    @property
    def other_totals(self) -> np.ndarray | None:
        return None if self.other_series is None else self.other_series.sum(axis=0)

    @property
    def loss_change(self) -> float:
        measured = self.approx["measured"]
        return float(measured[-1] - measured[0])

    def error_pct(self, curve: str) -> float:
        """Total conservation error (rebuilt − measured loss at the end) in % of |ΔL|.

        For RK4 the rebuilt loss uses the stored LCA sums (as ``verify-error`` does).
        """
        change = self.loss_change
        if not change:
            return float("nan")
        if curve == "rk4":
            return float((self.totals.sum() - change) / abs(change) * 100.0)
        return float((self.approx[curve][-1] - self.approx["measured"][-1]) / abs(change) * 100)

    def headline(self) -> dict[str, float]:
        """The flat numbers that are compared across runs (plain floats; NaN when skipped)."""
        nan = float("nan")
        h, hist, osc = self.helped, self.histogram, self.oscillations
        numbers = {
            "percent_helped": h.mean_helped if h else nan,
            "percent_zero": float(np.nanmean(h.zero)) if h else nan,
            "excess_kurtosis": hist.excess_kurtosis if hist else nan,
            "iterations_per_direction_change": osc.iterations_per_direction_change if osc else nan,
            "iterations_per_gradient_crossing": (
                osc.iterations_per_gradient_crossing if osc else nan
            ),
            "sync_count": float(self.sync.count),
            "sync_baseline_mean": self.sync.baseline_mean,
            "sync_p_value": self.sync.p_value,
            "total_error_rk4_pct": self.error_pct("rk4"),
            "total_error_first_order_pct": self.error_pct("first_order"),
            "loss_change": self.loss_change,
            "lca_sum": float(self.totals.sum()),
        }
        numbers.update({f"layer_total/{n}": float(v) for n, v in zip(self.layers, self.totals)})
        return {k: float(v) for k, v in numbers.items()}

    def to_dict(self) -> dict[str, Any]:
        sync = self.sync.to_dict()
        sync["min_fraction"] = self.sync_min_fraction
        sync["top"] = TOP_MOMENTS
        out = {
            "run_dir": str(self.run_dir),
            "split": self.split,
            "iterations": self.iterations,
            "parameters": self.parameters,
            "layers": self.layers,
            "allocated_with": self.allocated_with,
            "store_level": self.store_level,
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "headline": self.headline(),
            "percent_helped": self.helped.to_dict() if self.helped else None,
            "value_histogram": self.histogram.to_dict() if self.histogram else None,
            "layer_totals": dict(zip(self.layers, self.totals)),
            "layer_series": self.series,
            "oscillations": self.oscillations.to_dict() if self.oscillations else None,
            "synchronisation": sync,
            "approximate_loss": self.approx,
        }
        if self.other_totals is not None:
            out["layer_totals_" + str(self.other_split)] = dict(zip(self.layers, self.other_totals))
        return analysis.jsonable(out)


def measure(
    run: Run, split: str, chunk_rows: int = 64, compare_splits: bool = False
) -> RunMeasures:
    """One run's measurements, those its store allows (``RunMeasures.skipped``: the rest).

    Per layer from ``run.layer_lca`` (any level); percent helped and the value histogram
    from the per-parameter LCA, oscillations from θ and ∇L, where they were kept.
    """
    layout = run.layout
    layers = list(layout.layers)
    L = len(layers)
    index = layout.layer_index()
    helped = histogram = osc = None
    if run.store_level == "parameters":
        lca = run.lca(split)
        helped = analysis.helped_fractions(lca, index, L, chunk_rows)
        histogram = analysis.value_histogram(lca, chunk_rows=chunk_rows)
    if run.has_grad(split):
        osc = analysis.oscillations(run.theta, run.grad(split), index, L, chunk_rows)
    series = run.layer_lca(split, chunk_rows)
    min_fraction = 0.5 if L > 4 else 1.0  # as analysis.summary: "at least half" for deep nets
    sync = analysis.synchronisation(series, top=TOP_MOMENTS, min_fraction=min_fraction)
    approx = analysis.approximate_loss(
        run.loss(split), run.error(split), run.error(split, first_order=True)
    )
    measures = RunMeasures(
        run_dir=run.path,
        split=split,
        layers=layers,
        parameters=int(layout.total),
        helped=helped,
        histogram=histogram,
        series=series,
        oscillations=osc,
        moments=analysis.top_moments(series, TOP_MOMENTS),
        sync=sync,
        sync_min_fraction=min_fraction,
        approx=approx,
        layer_index=index,
        allocated_with=run.allocated_with,
        store_level=run.store_level,
        skipped=_skipped(run, split),
    )
    other = _other_split(run, split)
    if compare_splits and other is not None:
        measures.other_split = other
        measures.other_series = run.layer_lca(other, chunk_rows)
    return measures


def _other_split(run: Run, split: str) -> str | None:
    pair = {"train": "val", "val": "train"}
    other = pair.get(split)
    return other if other in run.splits else None


@dataclass
class Report:
    """What ``make_report`` wrote, and the headline table as text."""

    out_dir: Path
    markdown: Path
    json: Path
    figures: dict[str, Path]
    columns: list[str]
    rows: list[tuple[str, list[str]]]
    data: dict[str, Any] = field(repr=False, default_factory=dict)

    def headline(self) -> str:
        """The headline numbers as an aligned plain-text table."""
        width = max(len(label) for label, _ in self.rows) + 2
        col = max(
            [len(c) for _, cells in self.rows for c in cells] + [len(c) for c in self.columns]
        )
        col += 2
        lines = [" " * width + "".join(c.rjust(col) for c in self.columns)]
        lines += [
            label.ljust(width) + "".join(c.rjust(col) for c in cells) for label, cells in self.rows
        ]
        return "\n".join(lines)

    def headline_markdown(self) -> str:
        head = "| measurement | " + " | ".join(self.columns) + " |"
        rule = "| --- |" + " ---: |" * len(self.columns)
        body = [
            "| " + _md(label) + " | " + " | ".join(_md(c) for c in cells) + " |"
            for label, cells in self.rows
        ]
        return "\n".join([head, rule, *body])


PER_CLASS_NA = (
    "## Per class\n\nNot applicable: this run's loss ({loss}) is not a classification loss, "
    "so the loss has no per-class parts (Fig 6, S21, S22 are skipped).\n"
)


def _per_class(run: Run, split: str, min_fraction: float, chunk_rows: int) -> dict | None:
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


def _neuron_view_layer(run: Run) -> str | None:
    """The first layer when it is dense on the (image) input: S22 draws its input weights."""
    layer = run.layout.layers[0]
    kernel = next((e for e in run.layout.entries if e.layer == layer), None)
    shape = [int(v) for v in run.trajectory.attrs.get("input_shape", [])]
    if kernel is None or len(kernel.shape) != 2 or kernel.shape[0] != int(np.prod(shape)):
        return None
    return layer


def _neuron_view(run: Run, split: str, group, chunk_rows: int) -> dict | None:
    """S22 for the most-helped unit of a first dense layer on image input (else None)."""
    layer = _neuron_view_layer(run)
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


def _unit() -> str:
    """The unit of losses and LCA in this report's text and figures (see plots.LOSS_UNIT)."""
    return plots.LOSS_UNIT.get()


def loss_unit(run: Run) -> str:
    """Nats for cross-entropy (natural log); the loss's own name for anything else."""
    loss = getattr(run.config.model, "loss", "sparse_categorical_crossentropy")
    return {"sparse_categorical_crossentropy": "nats", "mean_squared_error": "MSE"}.get(loss, loss)
