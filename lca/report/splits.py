"""The report's "Train vs validation by component" section, for a run allocated on both splits.

Reads one run (per-layer and per-unit LCA of both splits, the trajectory's accuracies), hands
the arrays to `lca.analysis.generalization` for the numbers and to
`lca.report.plots_splits` for the figures, and writes the section's markdown and JSON.
Per-layer numbers work on every store level; per-unit ones need ``store: units`` or ``parameters``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import analysis
from ..analysis import generalization
from ..analysis.generalization import BOUNDARY_THRESHOLD, THRESHOLDS, Crossing, Interval
from ..storage import Run
from . import plots_splits
from .markdown import num, table
from .measures import SPLITS, TOP_MOMENTS, has_both_splits
from .style import PlotStyle

if TYPE_CHECKING:
    from .section import ReportRuns


class SplitsSection:
    """Train vs validation by layer, unit and head, around when validation accuracy rose."""

    def __init__(self, comparison: SplitsComparison | None, unit: str) -> None:
        self._comparison = comparison  # None: the run was not allocated on both splits
        self._unit = unit
        data = comparison.to_dict() if comparison is not None else None
        self.data: dict[str, Any] = {"train_vs_validation": data}

    @classmethod
    def from_runs(cls, runs: ReportRuns) -> SplitsSection:
        run, first = runs.runs[0], runs.first
        if not has_both_splits(run):
            return cls(None, runs.loss_unit)
        series = {runs.split: first.series, first.other_split: first.other_series}
        comparison = compare_splits(
            run, series, first.sync_min_fraction, TOP_MOMENTS, runs.chunk_rows
        )
        return cls(comparison, runs.loss_unit)

    def figures(self, out_dir: Path, style: PlotStyle) -> dict[str, Path]:
        if self._comparison is None:
            return {}
        return figures(self._comparison, out_dir, style)

    def markdown(self, figures: Mapping[str, Path]) -> str:
        if self._comparison is None:
            return ""
        return markdown(self._comparison, figures, self._unit)


@dataclass
class SplitsComparison:
    """One run's train and validation LCA by component, and when accuracy crossed 95 / 99 %."""

    run_dir: Path
    iterations: int
    layers: list[str]
    layer_series: dict[str, np.ndarray]  # split → (T, L)
    unit_names: list[str]  # "block1_attn head 0", … over every layer
    unit_series: dict[str, np.ndarray] | None  # split → (T, Σ units); None: a layers store
    head_columns: dict[str, list[int]]  # attention layer → its heads' columns in unit_series
    accuracy: dict[str, tuple[np.ndarray, np.ndarray]]  # curve → (steps, accuracies)
    batch_accuracy: bool  # the train accuracy is each mini-batch's, not the whole split's
    log_every: int
    crossings: list[Crossing]
    spans: list[Interval]
    layer_ranking: list[dict]
    unit_ranking: list[dict] | None
    sync: dict[str, analysis.Synchronisation]
    min_fraction: float
    top: int

    @property
    def boundary(self) -> Crossing:
        return _boundary(self.crossings)

    def to_dict(self) -> dict[str, Any]:
        sync = {split: s.to_dict() for split, s in self.sync.items()}
        for s in sync.values():
            s.pop("baseline_counts")
        units = None
        if self.unit_series is not None:
            units = {
                split: dict(zip(self.unit_names, u.sum(axis=0)))
                for split, u in self.unit_series.items()
            }
        return analysis.jsonable(
            {
                "run_dir": str(self.run_dir),
                "iterations": self.iterations,
                "layers": self.layers,
                "batch_accuracy": self.batch_accuracy,
                "crossings": [c.to_dict() for c in self.crossings],
                "boundary_threshold": BOUNDARY_THRESHOLD,
                "intervals": [vars(s) for s in self.spans],
                "layer_totals": {
                    split: dict(zip(self.layers, s.sum(axis=0)))
                    for split, s in self.layer_series.items()
                },
                "unit_totals": units,
                "head_layers": list(self.head_columns),
                "rankings": {"layers": self.layer_ranking, "units": self.unit_ranking},
                "synchronisation": {
                    **sync,
                    "min_fraction": self.min_fraction,
                    "top": self.top,
                },
                "accuracy": {
                    curve: {"steps": s, "values": a} for curve, (s, a) in self.accuracy.items()
                },
            }
        )


def _boundary(crossings: list[Crossing]) -> Crossing:
    """Where validation accuracy first reaches 95 %: the rankings' two intervals meet there."""
    return next(c for c in crossings if c.curve == "val" and c.threshold == BOUNDARY_THRESHOLD)


def unit_sums(run: Run, split: str, chunk_rows: int = 64) -> dict[str, np.ndarray] | None:
    """(T, U) LCA per unit of every layer (one pass over a ``parameters`` store's rows);
    None for a ``layers`` store."""
    if run.store_level == "layers":
        return None
    return run.unit_lcas(split, chunk_rows=chunk_rows)


def compare_splits(
    run: Run,
    layer_series: dict[str, np.ndarray],
    min_fraction: float,
    top: int,
    chunk_rows: int = 64,
) -> SplitsComparison:
    """The section's numbers; ``layer_series`` is ``run.layer_lca`` of both splits."""
    layers = run.layer_names
    iterations = int(layer_series["train"].shape[0])
    group = run.trajectory.group
    train_acc = group["accuracy"][:]
    val_acc = group["val_accuracy"][:] if "val_accuracy" in group else None
    crossings = generalization.crossings(train_acc, val_acc, THRESHOLDS)
    accuracy = {
        "train": generalization.accuracy_steps(train_acc, "train"),
        "val": generalization.accuracy_steps(np.zeros(0) if val_acc is None else val_acc, "val"),
    }
    spans = generalization.intervals(iterations, _boundary(crossings).step)
    layer_ranking = generalization.rank_by_interval(
        layers, layer_series["train"], layer_series["val"], spans
    )
    units = {split: unit_sums(run, split, chunk_rows) for split in SPLITS}
    unit_names: list[str] = []
    unit_series = unit_ranking = None
    head_columns: dict[str, list[int]] = {}
    if units["train"] is not None and units["val"] is not None:
        for layer in layers:
            labels = run.layout.unit_labels(layer)
            if run.layout.kind_of_units(layer) == "head":
                head_columns[layer] = list(range(len(unit_names), len(unit_names) + len(labels)))
            unit_names += [f"{layer} {label}" for label in labels]
        unit_series = {
            split: np.concatenate([u[layer] for layer in layers], axis=1)
            for split, u in units.items()
        }
        unit_ranking = generalization.rank_by_interval(
            unit_names, unit_series["train"], unit_series["val"], spans
        )
    sync = {
        split: analysis.synchronisation(series, top=top, min_fraction=min_fraction)
        for split, series in layer_series.items()
    }
    return SplitsComparison(
        run_dir=run.path,
        iterations=iterations,
        layers=layers,
        layer_series=layer_series,
        unit_names=unit_names,
        unit_series=unit_series,
        head_columns=head_columns,
        accuracy=accuracy,
        batch_accuracy=run.config.training.batch_size != "full",
        log_every=int(run.config.training.log_every or 0),
        crossings=crossings,
        spans=spans,
        layer_ranking=layer_ranking,
        unit_ranking=unit_ranking,
        sync=sync,
        min_fraction=min_fraction,
        top=top,
    )


# --- figures --------------------------------------------------------------------------------


def figures(c: SplitsComparison, out: Path, style: PlotStyle) -> dict[str, Path]:
    markers = [(x.step, x.curve, x.threshold) for x in c.crossings if x.step is not None]
    cum = {split: generalization.cumulative(s) for split, s in c.layer_series.items()}
    drawn = {
        "splits_layer_cumulative": plots_splits.split_cumulative(
            [("layers", c.layers, cum["train"], cum["val"])],
            markers,
            out / "splits_layer_cumulative.png",
            "Cumulative LCA per layer on both splits",
            style=style,
        )
    }
    if any(steps.size for steps, _ in c.accuracy.values()):  # a regressor has no accuracy
        drawn["splits_accuracy"] = plots_splits.accuracy_curves(
            c.accuracy["train"], c.accuracy["val"], markers, c.iterations,
            out / "splits_accuracy.png", batch_accuracy=c.batch_accuracy, style=style,
        )  # fmt: skip
    if c.unit_series is not None and c.head_columns:
        unit_cum = {split: generalization.cumulative(u) for split, u in c.unit_series.items()}
        rows = [
            (
                layer,
                [c.unit_names[i].removeprefix(layer + " ") for i in columns],
                unit_cum["train"][:, columns],
                unit_cum["val"][:, columns],
            )
            for layer, columns in c.head_columns.items()
        ]
        drawn["splits_head_cumulative"] = plots_splits.split_cumulative(
            rows, markers, out / "splits_head_cumulative.png",
            "Cumulative LCA per attention head on both splits", style=style,
        )  # fmt: skip
    return drawn


# --- report.md ------------------------------------------------------------------------------


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def _crossing_text(x: Crossing) -> str:
    if x.status == "reached":
        return f"step {x.step}"
    return x.status


def _best_text(curve: str, c: SplitsComparison) -> str:
    x = next(x for x in c.crossings if x.curve == curve)
    if x.best is None:
        return "not recorded"
    return f"{x.best:.3f} at step {x.best_step}"


def _ranking_table(ranking: dict, unit: str) -> str:
    rows = []
    for role, sign in (("drives", "negative"), ("overfits", "positive")):
        entries = ranking[role]
        rows += [
            [f"{role} {k}", e["component"], num(e["val"], "+.4g"), num(e["train"], "+.4g")]
            for k, e in enumerate(entries, start=1)
        ]
        if not entries:
            rows.append([role, f"(no component with {sign} validation LCA)", "", ""])
    header = ["", "component", f"validation LCA ({unit})", f"train LCA ({unit})"]
    return table(header, rows)


def _interval_text(c: SplitsComparison) -> str:
    b = c.boundary
    if len(c.spans) == 2:
        return (
            f"Validation accuracy first reaches {_pct(BOUNDARY_THRESHOLD)} at step {b.step}: the "
            f"rankings cover iterations 0…{b.step - 1} (before) and {b.step}…{c.iterations - 1} "
            "(from then on) separately."
        )
    if b.status == "reached":
        why = f"validation accuracy reaches {_pct(BOUNDARY_THRESHOLD)} at step {b.step}, an end"
    elif b.status == "not reached":
        best = _best_text("val", c)
        why = f"validation accuracy never reaches {_pct(BOUNDARY_THRESHOLD)} (best {best})"
    else:
        why = "validation accuracy was not recorded (a run before `val_accuracy`, or log_every 0)"
    return f"The rankings cover the whole run: {why}."


def markdown(c: SplitsComparison, figures: Mapping[str, Path], unit: str) -> str:
    """The section (``unit``: of the losses), ending with a newline."""
    recorded = c.accuracy["val"][0].size and c.log_every
    val_every = f"every {c.log_every} iterations" if recorded else "not recorded"
    train_what = "each mini-batch's" if c.batch_accuracy else "whole training split"
    by_curve = {curve: [x for x in c.crossings if x.curve == curve] for curve in SPLITS}
    accuracy_rows = [
        [f"train ({train_what})", *(_crossing_text(x) for x in by_curve["train"]),
         _best_text("train", c)],
        [f"validation ({val_every})", *(_crossing_text(x) for x in by_curve["val"]),
         _best_text("val", c)],
    ]  # fmt: skip
    parts = [
        "## Train vs validation by component",
        "",
        f"The trajectory of `{c.run_dir.name}` allocated on the training and on the validation "
        "split. A component (layer, head, neuron, unit) with negative **validation** LCA lowered "
        "the validation loss: it drove generalisation; one with positive validation LCA raised "
        "it: it overfit, whatever it did to the training loss. Steps count updates: step s is θ "
        "after s updates, made by iterations 0…s−1.",
        "",
        table(
            ["accuracy", *(f"first step ≥ {_pct(t)}" for t in THRESHOLDS), "best"],
            accuracy_rows,
        ),
        "",
    ]
    if c.batch_accuracy:
        parts += [
            "The train accuracy is each mini-batch's accuracy of θ_s before its update, not the "
            "whole training split's: its crossings are the first batches at the threshold.",
            "",
        ]
    if "splits_accuracy" in figures:
        parts += [f"![train and validation accuracy]({figures['splits_accuracy'].name})", ""]
    parts += [
        f"![cumulative LCA per layer on both splits]({figures['splits_layer_cumulative'].name})",
        "",
        "How to read: each curve is a layer's running total on one split (same colour in both "
        "panels); vertical lines are the first steps at 95 % (dotted) and 99 % (dashed) "
        "accuracy, black for train, purple for validation. A layer that keeps falling on the "
        "left while rising on the right is fitting the training set at the validation set's "
        "expense.",
        "",
    ]
    if "splits_head_cumulative" in figures:
        parts += [
            f"![cumulative LCA per head]({figures['splits_head_cumulative'].name})",
            "",
            "How to read: the same per attention head (each head's query, key, value and "
            "output weights summed).",
            "",
        ]
    parts += ["### What drives generalisation, what overfits", "", _interval_text(c), ""]
    rankings = [("Layers", c.layer_ranking)]
    if c.unit_ranking is not None:
        rankings.append(("Units (heads, neurons, tokens, channels)", c.unit_ranking))
    for title, ranking in rankings:
        for span, ranked in zip(c.spans, ranking):
            when = f"iterations {span.start}…{span.stop - 1}"
            parts += [f"#### {title}, {span.name} ({when})", "", _ranking_table(ranked, unit), ""]
    parts += [
        "Top 5 each way by the validation LCA summed over the interval; the train LCA of the "
        "same component beside it.",
        "",
        f"### Synchronised moments on both splits (S17, top {c.top})",
        "",
        table(
            ["split", "synchronised iterations", "shift baseline (mean ± std)", "p"],
            [
                [
                    split,
                    str(s.count),
                    f"{s.baseline_mean:.2f} ± {s.baseline_std:.2f}",
                    num(s.p_value, ".3g"),
                ]
                for split, s in c.sync.items()
            ],
        ),
        "",
        f"Iterations where at least {c.sync['train'].required_layers} of {len(c.layers)} layers "
        f"have one of their top-{c.top} moments of learning, on each split's per-layer LCA; the "
        "baseline shifts each layer by a random −2…2 iterations (1000 shuffles).",
        "",
    ]
    return "\n".join(parts)
