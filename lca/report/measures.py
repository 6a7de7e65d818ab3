"""What one report measures of each run (`RunMeasures`), and the report object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import analysis
from ..storage import Run
from .markdown import escape as _md
from .style import unit_of_loss

TOP_MOMENTS = 20
SPLITS = ("train", "val")


def has_both_splits(run: Run) -> bool:
    """Whether the run was allocated on the training and the validation split."""
    return all(split in run.splits for split in SPLITS)


@dataclass(frozen=True)
class Skipped:
    """A measurement a run's store cannot give: what it needs and how to get it."""

    measurement: str
    needs: str
    how: str

    def line(self) -> str:
        return f"{self.measurement}: skipped; needs {self.needs}; {self.how}."


def per_parameter_skip(run: Run, measurement: str) -> Skipped:
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
            per_parameter_skip(run, "percent of parameters helped (Table 1, Fig 3a, 3c, 3d)"),
            per_parameter_skip(run, "distribution of LCA values and its kurtosis (Fig 3b, S10)"),
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


def skipped_views(run: Run) -> list[Skipped]:
    """What the direct views (first run only) and the train vs val section leave out."""
    out = []
    if run.store_level != "parameters":
        out.append(per_parameter_skip(run, "kernel heatmaps and their animation (Fig 2)"))
        out.append(per_parameter_skip(run, "single-parameter curves (S2)"))
    if run.store_level == "layers":
        units = Skipped(
            "",
            "the per-unit LCA, which `store: layers` does not keep",
            f"reallocate with `lca allocate {run.path} --store units --restart`",
        )
        out.append(dataclasses.replace(units, measurement="per-unit LCA images (S1)"))
        if has_both_splits(run):
            out.append(
                dataclasses.replace(
                    units, measurement="train vs validation by head, neuron and unit"
                )
            )
    if not has_both_splits(run):
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
    rule: str = "simpson"  # the quadrature rule setting (adaptive, simpson) behind the arrays
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
        """Total conservation error ΔL − Σ LCA (measured − rebuilt loss at the end) in % of
        |ΔL|, signed as ``verify-error`` signs it; for the allocated rule (``curve="rk4"``, the
        key the report's numbers have always had) from the stored LCA sums, as there.
        """
        change = self.loss_change
        if not change:
            return float("nan")
        if curve == "rk4":
            return float((change - self.totals.sum()) / abs(change) * 100.0)
        return float((self.approx["measured"][-1] - self.approx[curve][-1]) / abs(change) * 100)

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
        rule=run.lca_store.attrs.get("rule", "simpson"),
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
        return headline_markdown(self.columns, self.rows)

    def moved_to(self, target: Path) -> Report:
        """The same report with its files' paths under ``target`` (where it was uploaded)."""
        return dataclasses.replace(
            self,
            out_dir=target,
            markdown=target / self.markdown.name,
            json=target / self.json.name,
            figures={k: target / p.name for k, p in self.figures.items()},
        )


def headline_markdown(columns: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """The headline table in Markdown: one row per measurement, one column per group."""
    head = "| measurement | " + " | ".join(columns) + " |"
    rule = "| --- |" + " ---: |" * len(columns)
    body = [
        "| " + _md(label) + " | " + " | ".join(_md(c) for c in cells) + " |"
        for label, cells in rows
    ]
    return "\n".join([head, rule, *body])


def loss_unit(run: Run) -> str:
    """Nats for cross-entropy (natural log); the loss's own name for anything else."""
    return unit_of_loss(getattr(run.config.model, "loss", "sparse_categorical_crossentropy"))
