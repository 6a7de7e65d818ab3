"""``lca report``: the paper's tables and pictures from allocated runs.

Every number comes from :mod:`lca.analysis`, which streams the (T, K) stores in blocks; this
module only chooses what to measure, lays the numbers out as ``report.md`` / ``report.json``
and hands small arrays to :mod:`lca.report_figures`. Several runs of one configuration
(different seeds) give mean ± std and a per-layer sign test; ``vs`` adds a second group to
compare with. Per-layer measures work on every store level (``allocate.store``); what a store
did not keep is skipped, with a line saying how to get it. A run allocated on both splits adds
"Train vs validation by component" (:mod:`lca.report_splits`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import analysis, plots, report_figures, report_splits, statistics
from .markdown import escape as _md
from .markdown import num as _num
from .markdown import table as _table
from .per_class import class_specialisation, class_synchronisation, neuron_input_totals
from .storage import Run, RunError, is_remote, location, open_run
from .storage.base import writing_to

TOP_MOMENTS = 20


# --- measurements of one run ----------------------------------------------------------------


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
        return analysis._jsonable(out)


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


# --- the report object ----------------------------------------------------------------------


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


# --- formatting -----------------------------------------------------------------------------


def _cell(stats: dict[str, float], spec: str, std_spec: str | None = None) -> str:
    """One value, or mean ± std over runs."""
    if stats["n"] == 1:
        return _num(stats["mean"], spec)
    return f"{_num(stats['mean'], spec)} ± {_num(stats['std'], std_spec or spec.lstrip('+'))}"


def _group_rows(
    layers: list[str], stats: dict[str, dict[str, float]], sign: dict | None
) -> list[tuple[str, str]]:
    """(label, cell) rows of one group of runs: the paper's headline numbers."""
    n = stats["percent_helped"]["n"]
    if n == 1:
        sync = (
            f"{_num(stats['sync_count']['mean'], '.0f')} vs "
            f"{_num(stats['sync_baseline_mean']['mean'], '.2f')} "
            f"(p={_num(stats['sync_p_value']['mean'], '.3g')})"
        )
    else:
        sync = (
            f"{_cell(stats['sync_count'], '.1f')} vs {_cell(stats['sync_baseline_mean'], '.2f')}"
            f" (max p={_num(stats['sync_p_value'].get('max', float('nan')), '.3g')})"
        )
    rows = [
        ("mean % helped (of non-zero LCA)", _cell(stats["percent_helped"], ".2f")),
        ("% zero LCA", _cell(stats["percent_zero"], ".2f")),
        ("excess kurtosis (non-zero LCA)", _cell(stats["excess_kurtosis"], ".1f")),
        ("iterations per direction change", _cell(stats["iterations_per_direction_change"], ".2f")),
        (
            "iterations per gradient zero-crossing",
            _cell(stats["iterations_per_gradient_crossing"], ".2f"),
        ),
        (f"synchronised moments vs baseline (top {TOP_MOMENTS})", sync),
        ("total error, allocated rule (% of |ΔL|)", _cell(stats["total_error_rk4_pct"], "+.4f")),
        (
            "total error first order (% of |ΔL|)",
            _cell(stats["total_error_first_order_pct"], "+.3f"),
        ),
        (f"loss change ΔL ({_unit()})", _cell(stats["loss_change"], "+.4f")),
    ]
    for i, name in enumerate(layers):
        text = _cell(stats[f"layer_total/{name}"], "+.4g", ".2g")
        if sign is not None:
            hurt = int(round(sign["fraction_positive"][i] * n))
            text += f" (p={_num(sign['p_value'][i], '.2g')}, {hurt}/{n} hurt)"
        rows.append((f"total LCA {name} ({_unit()})", text))
    return rows


# --- the report -----------------------------------------------------------------------------


def _open_allocated(run_dirs: Sequence[str | Path], split: str) -> list[Run]:
    runs = []
    for run_dir in run_dirs:
        run = open_run(run_dir)
        run.require_allocated()
        run.loss(split)  # a one-line RunError when the split was not allocated
        runs.append(run)
    return runs


def _group_stats(measures: list[RunMeasures]) -> tuple[dict, dict | None]:
    """across_runs of the headline numbers, and the per-layer sign test (two runs or more)."""
    numbers = [m.headline() for m in measures]
    stats = statistics.across_runs(numbers)
    stats["sync_p_value"]["max"] = max(n["sync_p_value"] for n in numbers)
    sign = None
    if len(measures) > 1:
        sign = statistics.sign_test(np.stack([m.totals for m in measures]))
    return stats, sign


def _label(run_dirs: Sequence[Path], vs: bool = False) -> str:
    """Column name of a group: the run's name, or how many runs; ``vs`` marks the second."""
    prefix = "vs " if vs else ""
    if len(run_dirs) == 1:
        path = location(run_dirs[0])
        return prefix + ((path if is_remote(path) else path.resolve()).name or "run")
    return f"{prefix}{len(run_dirs)} runs"


def _unit() -> str:
    """The unit of losses and LCA in this report's text and figures (see plots.LOSS_UNIT)."""
    return plots.LOSS_UNIT.get()


def loss_unit(run: Run) -> str:
    """Nats for cross-entropy (natural log); the loss's own name for anything else."""
    loss = getattr(run.config.model, "loss", "sparse_categorical_crossentropy")
    return {"sparse_categorical_crossentropy": "nats", "mean_squared_error": "MSE"}.get(loss, loss)


def make_report(
    run_dirs: Sequence[str | Path],
    split: str = "train",
    out_dir: str | Path | None = None,
    vs: Sequence[str | Path] | None = None,
    frames: int = 40,
    chunk_rows: int = 64,
) -> Report:
    """Measure allocated runs the paper's way; write report.md, report.json and the figures.

    ``run_dirs`` are runs of one configuration (seeds); figures of a single run show the
    first. ``vs`` is a second group compared layer by layer. Runs must share their layers.
    ``frames`` (at most 40) is the number of iterations the animation samples.
    """
    if not run_dirs:
        raise RunError("no run directories given")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    frames = min(frames, 40)
    runs = _open_allocated(run_dirs, split)
    others = _open_allocated(vs, split) if vs else []
    layers = list(runs[0].layout.layers)
    for run in runs[1:] + others:
        if list(run.layout.layers) != layers:
            raise RunError(
                f"{run.path}: layers {run.layout.layers} differ from {runs[0].path}'s {layers}"
            )
    units = {loss_unit(r) for r in runs + others}
    if len(units) > 1:
        raise RunError(f"runs with different losses ({', '.join(sorted(units))}) in one report")
    token = plots.LOSS_UNIT.set(units.pop())
    target = out_dir if out_dir is not None else runs[0].path / "report"
    try:
        with writing_to(  # disk full, read-only, no permission: the runs are only read
            f"the report to {target}",
            "the runs are not changed: free space or fix the permissions, then rerun "
            "`lca report`, or pass --out DIR for another folder",
        ):
            return _make_report(runs, others, layers, split, out_dir, frames, chunk_rows)
    finally:
        plots.LOSS_UNIT.reset(token)


def _skip_lines(
    group: list[RunMeasures], vs_group: list[RunMeasures], views: list[Skipped]
) -> list[str]:
    """One report.md line per skipped measurement (named by run when there are several)."""
    several = len(group) + len(vs_group) > 1
    lines = []
    for m in group + vs_group:
        prefix = f"`{m.run_dir.name}`: " if several else ""
        lines += [prefix + k.line() for k in m.skipped]
    prefix = f"`{group[0].run_dir.name}`: " if several else ""
    return lines + [prefix + k.line() for k in views]


def _write_text(path: Path, text: str) -> None:
    """Write a report file whole or not at all: a failed write leaves the previous copy."""
    if is_remote(path):
        path.write_text(text)
        return
    temp = path.with_name(f".{path.name}.partial")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _make_report(runs, others, layers, split, out_dir, frames, chunk_rows) -> Report:
    """make_report's work, with the loss unit set."""
    target = location(out_dir) if out_dir is not None else runs[0].path / "report"
    # Figures are drawn into a local folder; for a URL target they are uploaded at the end.
    out = Path(tempfile.mkdtemp(prefix="lca-report-")) if is_remote(target) else target
    out.mkdir(parents=True, exist_ok=True)

    group = [measure(r, split, chunk_rows, compare_splits=True) for r in runs]
    vs_group = [measure(r, split, chunk_rows) for r in others]
    first = group[0]
    stats, sign = _group_stats(group)
    columns = [_label([r.path for r in runs])]
    cells = [_group_rows(layers, stats, sign)]
    vs_stats, vs_sign = (None, None)
    if vs_group:
        vs_stats, vs_sign = _group_stats(vs_group)
        columns.append(_label([r.path for r in others], vs=True))
        cells.append(_group_rows(layers, vs_stats, vs_sign))
    rows = [(label, [c[i][1] for c in cells]) for i, (label, _) in enumerate(cells[0])]

    figures = report_figures.run_figures(first, out, TOP_MOMENTS)
    figures.update(
        report_figures.comparison_figures(group, vs_group, columns, sign, vs_sign, layers, out)
    )
    views = report_figures.views(runs[0], split, frames, chunk_rows, out)
    figures.update(views["figures"])
    skipped = _skipped_views(runs[0])
    splits = None
    if report_splits.has_both_splits(runs[0]):
        series = {split: first.series, first.other_split: first.other_series}
        splits = report_splits.compare_splits(
            runs[0], series, first.sync_min_fraction, TOP_MOMENTS, chunk_rows
        )
        figures.update(report_splits.figures(splits, out))
    per_class = _per_class(runs[0], split, first.sync_min_fraction, chunk_rows)
    if per_class is not None and _neuron_view_layer(runs[0]) and per_class["neuron"] is None:
        skipped.append(_per_parameter_skip(runs[0], "a neuron's input weights as an image (S22)"))
    if per_class is not None and per_class["neuron"] is not None:
        n = per_class["neuron"]
        figures["s22_neuron"] = plots.neuron_view(
            n["layer"], n["unit"], n["class_curves"], n["input_lca"], out / "s22_neuron.png"
        )
        per_class["neuron"] = {"layer": n["layer"], "unit": n["unit"]}

    data = {
        "split": split,
        "run_dirs": [str(r.path) for r in runs],
        "vs_run_dirs": [str(r.path) for r in others],
        "layers": layers,
        "headline": {"columns": columns, "rows": [[label, c] for label, c in rows]},
        "runs": [m.to_dict() for m in group],
        "across_runs": stats,
        "sign_test": sign,
        "vs_runs": [m.to_dict() for m in vs_group],
        "vs_across_runs": vs_stats,
        "vs_sign_test": vs_sign,
        "views": views["info"],
        "skipped": [
            {"run_dir": str(m.run_dir), **dataclasses.asdict(k)}
            for m in group + vs_group
            for k in m.skipped
        ]
        + [{"run_dir": str(runs[0].path), **dataclasses.asdict(k)} for k in skipped],
        "train_vs_validation": splits.to_dict() if splits is not None else None,
        "per_class": per_class,
        "figures": {k: p.name for k, p in figures.items()},
    }
    data = analysis._jsonable(data)
    report = Report(
        out_dir=out,
        markdown=out / "report.md",
        json=out / "report.json",
        figures=figures,
        columns=columns,
        rows=rows,
        data=data,
    )
    _write_text(report.json, json.dumps(data, separators=(",", ":"), allow_nan=False))
    markdown = _markdown(
        report, group, vs_group, stats, sign, _skip_lines(group, vs_group, skipped)
    )
    if splits is not None:
        markdown = markdown.rstrip("\n") + "\n\n" + report_splits.markdown(splits, figures)
    model_cfg = runs[0].config.model
    if not model_cfg.classification:  # say why the class sections are absent
        markdown = markdown.rstrip("\n") + "\n\n" + PER_CLASS_NA.format(loss=model_cfg.loss)
    if per_class is not None:
        markdown = markdown.rstrip("\n") + "\n\n" + _per_class_markdown(per_class) + "\n"
        if "s22_neuron" in figures:
            n = per_class["neuron"]
            markdown += (
                f"\n{_img(report, 's22_neuron', 'one neuron by class')}\n\nHow to read (S22): "
                f"unit {n['unit']} of {n['layer']}, the one that helped most: its LCA summed "
                "over training per class (left; the classes it serves fall below zero) and "
                "the total LCA of each of its input weights laid out as the input image "
                "(right; green pixels helped).\n"
            )
    _write_text(report.markdown, markdown)
    if out is not target:
        return _upload(report, target)
    return report


def _upload(report: Report, target) -> Report:
    """Copy a report drawn locally to its URL (``s3://…/report``); return it with URL paths."""
    target.fs.put(str(report.out_dir) + "/", target.path, recursive=True)
    shutil.rmtree(report.out_dir, ignore_errors=True)
    return dataclasses.replace(
        report,
        out_dir=target,
        markdown=target / report.markdown.name,
        json=target / report.json.name,
        figures={k: target / p.name for k, p in report.figures.items()},
    )


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


def _per_class_markdown(per_class: dict) -> str:
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
            f"Synchronised moments of learning per class: iterations where at least "
            f"{per_class['min_fraction']:.0%} of the layers have one of their top-{TOP_MOMENTS} "
            f"moments in that class's per-layer LCA; mean {sync['mean_count']:.1f} against "
            f"{sync['mean_baseline']:.2f} when layers are shifted at random by −2…2 iterations "
            "(the paper: 9.4 against 0.4 for MNIST-FC).",
            "",
            _table(["class", "synchronised moments", "shift baseline", "p"], rows),
            "",
            "Class specialisation of units (S21): for each output unit, the share of its helping "
            "(negative total LCA, per class) carried by its top 1, 2, 3 classes; the table gives "
            "the fraction of units where that share exceeds 80 %.",
            "",
            _table(
                ["layer", "units helped", "top 1 > 80 %", "top 2 > 80 %", "top 3 > 80 %"],
                [
                    [layer, str(v["units"]), *(f"{v[f'top{k}_over_80pct']:.2f}" for k in (1, 2, 3))]
                    for layer, v in spec.items()
                ],
            ),
        ]
    )


# --- report.md ------------------------------------------------------------------------------


def _img(report: Report, key: str, alt: str) -> str:
    path = report.figures.get(key)
    return f"![{alt}]({path.name})" if path is not None else ""


def _markdown(
    report: Report,
    group: list[RunMeasures],
    vs_group: list[RunMeasures],
    stats: dict,
    sign: dict | None,
    skipped: Sequence[str] = (),
) -> str:
    """report.md's paper sections; ``skipped``: one line per measurement left out."""
    m = group[0]
    layers = m.layers
    h, osc, hist, sync = m.helped, m.oscillations, m.histogram, m.sync
    name = m.run_dir.name
    parts = [
        f"# LCA report: {', '.join(r.run_dir.name for r in group)} ({m.split} split)",
        "",
        f"{m.iterations} iterations, {m.parameters:,} parameters, layers: {', '.join(layers)}. "
        "Sign convention: **negative LCA = helped** (lowered the loss), positive = hurt; "
        f"in figures green = helped, red = hurt, white = zero. LCA and losses are in {_unit()}.",
    ]
    if len(group) > 1 or vs_group:
        parts.append(
            f"Single-run figures show `{name}`; numbers with ± are mean ± std (ddof 1) over runs."
        )
    parts += ["", "## Headline", "", report.headline_markdown(), ""]
    if sign is not None:
        parts.append(
            "Per-layer p: one-sample t-test of the layer's total LCA against 0 over runs (the "
            "paper's test that the first and last layers *hurt*); `k/n hurt` counts runs where "
            "the total is positive."
        )

    parts.append("")
    if skipped:
        parts += ["## Skipped: not in this store", ""]
        parts += [f"- {line}" for line in skipped] + [""]
    if h is not None and hist is not None:
        parts += _noisy_markdown(report, m)
    parts += [
        "## Some layers hurt (Fig 4, S11)",
        "",
    ]
    totals_rows = []
    for i, n in enumerate(layers):
        row = [
            n,
            f"{m.totals[i]:+.5g}",
            f"{100 * m.totals[i] / m.loss_change:.1f} %" if m.loss_change else "n/a",
        ]
        if sign is not None:
            row += [f"{sign['mean'][i]:+.4g} ± {sign['std'][i]:.2g}", f"{sign['p_value'][i]:.3g}"]
        totals_rows.append(row)
    header = ["layer", f"total LCA of {name} ({_unit()})", "share of ΔL"]
    if sign is not None:
        header += [f"mean ± std over {len(group)} runs", "p (t-test vs 0)"]
    parts += [
        _table(header, totals_rows),
        "",
        _img(report, "fig4_layer_totals", "per-layer total LCA"),
        "",
        "How to read: bars below zero (green) are layers whose parameters, summed over training, "
        "lowered the loss; a bar above zero (red) is a layer that, in total, *raised* it while "
        "the rest of the network learned.",
        "",
        _img(report, "s11_cumulative_layer_lca", "cumulative per-layer LCA"),
        "",
        "How to read: each curve is a layer's running total (its last point is the bar "
        "above); a curve that turns upward marks a layer that starts to hurt.",
        "",
    ]
    if "runs_layer_totals" in report.figures:
        parts += [
            "### Across runs",
            "",
            _img(report, "runs_layer_totals", "per-layer totals across runs"),
            "",
            "How to read: bars are means over runs, whiskers one standard deviation, dots single "
            "runs; a small p says the layer's total is consistently non-zero across seeds (its "
            "sign says whether it helps or hurts).",
            "",
        ]
    if "train_vs_val" in report.figures:
        other = m.other_split
        rows = [[n, f"{a:+.5g}", f"{b:+.5g}"] for n, a, b in zip(layers, m.totals, m.other_totals)]
        parts += [
            f"### {m.split} vs {other}",
            "",
            _table(["layer", f"{m.split} ({_unit()})", f"{other} ({_unit()})"], rows),
            "",
            _img(report, "train_vs_val", "train vs validation per-layer totals"),
            "",
            "How to read: the same trajectory, allocated on two data sets. A layer that helps "
            "the training loss much more than the validation loss is fitting the training set "
            "(the paper's suggested overfitting probe).",
            "",
        ]
    if osc is not None:
        parts += _oscillations_markdown(report, m)
    parts += [
        "## Learning is synchronised (§5, Fig S17)",
        "",
        f"{sync.count} iterations where at least {sync.required_layers} of {len(layers)} layers "
        f"have one of their top-{TOP_MOMENTS} moments of learning (local minima of the layer's "
        f"LCA); shifting each layer by a random −2…2 iterations gives "
        f"{sync.baseline_mean:.2f} ± {sync.baseline_std:.2f} (p = {sync.p_value:.3g}, "
        f"{len(sync.baseline_counts)} shuffles). Synchronised iterations: "
        f"{', '.join(map(str, sync.iterations.tolist())) or 'none'}.",
        "",
        _img(report, "s17_synchronisation", "synchronised moments of learning"),
        "",
        "How to read: one row per layer; triangles are each layer's strongest moments of "
        "learning, purple lines the iterations where (enough) layers learn together. A count "
        "well above the shifted baseline (small p) means layers learn in sync."
        + (
            f" With every layer required, the baseline shifts all layers alike with probability "
            f"5^(1−L) = {5.0 ** (1 - len(layers)):.2g}, so p cannot fall much below that."
            if sync.required_layers == len(layers) and len(layers) > 1
            else ""
        ),
        "",
        "## Conservation: the loss rebuilt from LCA",
        "",
        f"The LCA arrays were allocated with {m.allocated_with} (losses in float32).",
        "",
        _table(
            ["", "value"],
            [
                [f"ΔL measured ({_unit()})", f"{m.loss_change:+.6f}"],
                [f"Σ LCA ({_unit()})", f"{m.totals.sum():+.6f}"],
                ["total error, allocated rule (% of |ΔL|)", _num(m.error_pct("rk4"), "+.4f")],
                ["total error first order (% of |ΔL|)", _num(m.error_pct("first_order"), "+.4f")],
            ],
        ),
        "",
        _img(report, "approximate_loss", "loss rebuilt from LCA"),
        "",
        "How to read: L(θ_0) plus the running sum of all LCA should lie on the measured loss; "
        "the lower panel shows how far each rebuilt curve drifts from it. The allocation "
        "(RK4/Simpson) is trustworthy when its drift stays near zero; the first-order curve "
        "shows what the simpler gradient × step estimate would have missed.",
        "",
        "## Direct views (Fig 2, S1, S2)",
        "",
    ]
    view_layers = [
        k.removeprefix("fig2_frames_") for k in report.figures if k.startswith("fig2_frames_")
    ]
    for layer in view_layers:
        parts += [_img(report, f"fig2_frames_{layer}", f"LCA heatmaps of {layer}"), ""]
    if view_layers:
        parts += [
            "How to read: each panel is one layer's kernel at one iteration, outputs down and "
            "inputs across (convolutions: a grid of kh×kw blocks), green = helped, red = hurt, "
            "white = no effect; one colour scale per layer, clipped at the 99th percentile of "
            "|LCA|. The animation `fig2_animation.gif` plays the same over training.",
            "",
            _img(report, "fig2_animation", "animated LCA heatmaps"),
            "",
        ]
    if "s1_unit_lca" in report.figures:
        parts += [
            _img(report, "s1_unit_lca", "LCA per unit"),
            "",
            "How to read: each row is one unit (output neuron or channel with its incoming "
            "weights and bias, attention head, embedding row); colour is that unit's LCA at "
            "each iteration.",
            "",
        ]
    if "s2_parameter_curves" in report.figures:
        parts += [
            _img(report, "s2_parameter_curves", "cumulative LCA of single parameters"),
            "",
            "How to read: running totals of single weights: the 50 that helped most over "
            "training (green) and 50 random others (grey). How far apart the bundles end shows "
            "how unevenly the progress is spread over a layer's weights.",
            "",
        ]
    if not (view_layers or "s1_unit_lca" in report.figures):
        parts += ["None drawn (see Skipped above, or no layer with one kernel).", ""]
    return "\n".join(parts)


def _noisy_markdown(report: Report, m: RunMeasures) -> list[str]:
    """Fig 3: percent helped and the distribution of values (per-parameter stores)."""
    h, hist, layers = m.helped, m.histogram, m.layers
    assert h is not None and hist is not None
    return [
        "## Learning is noisy (Fig 3)",
        "",
        _table(
            ["layer", "mean % helped", "% zero (mean over iterations)"],
            [
                [n, f"{p:.2f}", f"{float(np.nanmean(z)):.2f}"]
                for n, p, z in zip(layers, h.mean_helped_per_layer, h.zero_per_layer.T)
            ],
        ),
        "",
        _img(report, "fig3a_percent_helped", "percent helped per iteration"),
        "",
        "How to read: the green line is the share of parameters with non-zero LCA that lowered "
        "the loss at that iteration (red: raised it; the two add up to 100 %), grey the share "
        "of all parameters with no effect, black the loss (right axis). The paper finds green "
        "barely above the dotted 50 % line even while the loss falls fast: learning is noisy.",
        "",
        _img(report, "fig3b_lca_histogram", "histogram of LCA values"),
        "",
        f"How to read: counts of single LCA values (one parameter, one iteration), helping "
        f"green, hurting red, on a log axis. Near mirror images mean the net progress is a "
        f"small imbalance between two large masses. Excess kurtosis "
        f"{_num(hist.excess_kurtosis, '.1f')} (non-zero values; "
        f"{_num(hist.excess_kurtosis_all, '.1f')} with zeros) means far heavier tails than a "
        "Gaussian (0).",
        "",
        _img(report, "fig3c_helped_per_layer", "percent helped per layer"),
        "",
        "How to read: each layer's share of helping parameters, averaged over iterations; the "
        "y axis is zoomed around the dotted 50 % line.",
        "",
        _img(report, "fig3d_fraction_helped", "fraction of iterations each parameter helped"),
        "",
        "How to read: for each parameter, the share of iterations where its LCA was negative. "
        "A peak near 50 % means parameters help and hurt by turns; a spike at 0 % is "
        "parameters that never move or never get a gradient (e.g. dead input pixels).",
        "",
    ]


def _oscillations_markdown(report: Report, m: RunMeasures) -> list[str]:
    """Table S2 and Fig S7 (stores with gradients)."""
    osc, layers = m.oscillations, m.layers
    assert osc is not None
    return [
        "## Oscillations (Table S2, Fig S7)",
        "",
        _table(
            ["layer", "iterations per direction change", "iterations per gradient zero-crossing"],
            [
                [n, _num(a, ".2f"), _num(b, ".2f")]
                for n, a, b in zip(
                    layers,
                    osc.iterations_per_direction_change_per_layer,
                    osc.iterations_per_gradient_crossing_per_layer,
                )
            ]
            + [
                [
                    "**all**",
                    _num(osc.iterations_per_direction_change, ".2f"),
                    _num(osc.iterations_per_gradient_crossing, ".2f"),
                ]
            ],
        ),
        "",
        _img(report, "s7_oscillations", "oscillations per layer"),
        "",
        "How to read: left, per layer, the inverse of the mean frequency at which a "
        "parameter's update reverses direction (blue) and its full-set gradient changes sign "
        "(orange); right, those frequencies per parameter. Small numbers of iterations mean "
        "weights zig-zag rather than move steadily downhill.",
        "",
    ]
