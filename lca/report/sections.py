"""report.md's paper sections of the measured runs: the headline, what the stores could not
give, and the measurements (Fig 3, 4, S7, S11, S17, the loss rebuilt from LCA)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import figures as report_figures
from .markdown import num as _num
from .markdown import table as _table
from .measures import TOP_MOMENTS, RunMeasures, Skipped, headline_markdown, skipped_views
from .per_class import neuron_view_skip
from .section import ReportRuns, image
from .style import PlotStyle


def _cell(stats: dict[str, float], spec: str, std_spec: str | None = None) -> str:
    """One value, or mean ± std over runs."""
    if stats["n"] == 1:
        return _num(stats["mean"], spec)
    return f"{_num(stats['mean'], spec)} ± {_num(stats['std'], std_spec or spec.lstrip('+'))}"


def group_rows(
    layers: list[str], stats: dict[str, dict[str, float]], sign: dict | None, unit: str
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
        (f"loss change ΔL ({unit})", _cell(stats["loss_change"], "+.4f")),
    ]
    for i, name in enumerate(layers):
        text = _cell(stats[f"layer_total/{name}"], "+.4g", ".2g")
        if sign is not None:
            hurt = int(round(sign["fraction_positive"][i] * n))
            text += f" (p={_num(sign['p_value'][i], '.2g')}, {hurt}/{n} hurt)"
        rows.append((f"total LCA {name} ({unit})", text))
    return rows


def skip_lines(
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


class HeadlineSection:
    """The title, the headline numbers of each group, and the overview figure."""

    def __init__(self, runs: ReportRuns) -> None:
        self.runs = runs
        layers = runs.layers
        self.columns = runs.columns
        cells = [group_rows(layers, runs.stats, runs.sign, runs.loss_unit)]
        if runs.vs_group:
            cells.append(group_rows(layers, runs.vs_stats, runs.vs_sign, runs.loss_unit))
        self.rows = [(name, [c[i][1] for c in cells]) for i, (name, _) in enumerate(cells[0])]
        self.data: dict[str, Any] = {
            "split": runs.split,
            "run_dirs": [str(r.path) for r in runs.runs],
            "vs_run_dirs": [str(r.path) for r in runs.others],
            "layers": layers,
            "headline": {"columns": self.columns, "rows": [[n, c] for n, c in self.rows]},
            "runs": [m.to_dict() for m in runs.group],
            "across_runs": runs.stats,
            "sign_test": runs.sign,
            "vs_runs": [m.to_dict() for m in runs.vs_group],
            "vs_across_runs": runs.vs_stats,
            "vs_sign_test": runs.vs_sign,
        }

    @classmethod
    def from_runs(cls, runs: ReportRuns) -> HeadlineSection:
        return cls(runs)

    def figures(self, out_dir: Path, style: PlotStyle) -> dict[str, Path]:
        return report_figures.overview_figure(self.runs.first, out_dir, style)

    def markdown(self, figures: Mapping[str, Path]) -> str:
        return _headline_markdown(self.runs, self.columns, self.rows, figures)


class SkippedSection:
    """The measurements the runs' stores cannot give, each with how to get it."""

    def __init__(self, runs: ReportRuns) -> None:
        run = runs.runs[0]
        first_only = skipped_views(run) + neuron_view_skip(run, runs.split)
        self._lines = skip_lines(runs.group, runs.vs_group, first_only)
        self.data: dict[str, Any] = {
            "skipped": [
                {"run_dir": str(m.run_dir), **dataclasses.asdict(k)}
                for m in runs.group + runs.vs_group
                for k in m.skipped
            ]
            + [{"run_dir": str(run.path), **dataclasses.asdict(k)} for k in first_only]
        }

    @classmethod
    def from_runs(cls, runs: ReportRuns) -> SkippedSection:
        return cls(runs)

    def figures(self, out_dir: Path, style: PlotStyle) -> dict[str, Path]:
        return {}

    def markdown(self, figures: Mapping[str, Path]) -> str:
        if not self._lines:
            return ""
        parts = ["## Skipped: not in this store", ""]
        return "\n".join(parts + [f"- {line}" for line in self._lines] + [""])


class MeasuresSection:
    """Learning is noisy, some layers hurt, oscillations, synchronisation, conservation."""

    def __init__(self, runs: ReportRuns) -> None:
        self.runs = runs
        self.data: dict[str, Any] = {}  # its numbers are the runs' (HeadlineSection)

    @classmethod
    def from_runs(cls, runs: ReportRuns) -> MeasuresSection:
        return cls(runs)

    def figures(self, out_dir: Path, style: PlotStyle) -> dict[str, Path]:
        r = self.runs
        figures = report_figures.run_figures(r.first, out_dir, TOP_MOMENTS, style)
        figures.update(
            report_figures.comparison_figures(
                r.group, r.vs_group, r.columns, r.sign, r.vs_sign, r.layers, out_dir, style
            )
        )
        return figures

    def markdown(self, figures: Mapping[str, Path]) -> str:
        return _measures_markdown(self.runs, figures)


def _headline_markdown(
    runs: ReportRuns,
    columns: list[str],
    rows: list[tuple[str, list[str]]],
    figures: Mapping[str, Path],
) -> str:
    """The title, the headline table and the overview figure."""
    group, vs_group, sign = runs.group, runs.vs_group, runs.sign
    m = group[0]
    layers = m.layers
    name = m.run_dir.name
    unit = runs.loss_unit
    parts = [
        f"# LCA report: {', '.join(r.run_dir.name for r in group)} ({m.split} split)",
        "",
        f"{m.iterations} iterations, {m.parameters:,} parameters, layers: {', '.join(layers)}. "
        "Sign convention: **negative LCA = helped** (lowered the loss), positive = hurt; "
        f"in figures green = helped, red = hurt, white = zero. LCA and losses are in {unit}.",
    ]
    if len(group) > 1 or vs_group:
        parts.append(
            f"Single-run figures show `{name}`; numbers with ± are mean ± std (ddof 1) over runs."
        )
    parts += ["", "## Headline", "", headline_markdown(columns, rows), ""]
    if sign is not None:
        parts.append(
            "Per-layer p: one-sample t-test of the layer's total LCA against 0 over runs (the "
            "paper's test that the first and last layers *hurt*); `k/n hurt` counts runs where "
            "the total is positive."
        )

    parts += [
        "",
        image(figures, "overview", "overview: cumulative LCA per layer, % helped, conservation"),
        "",
        "How to read: left, each layer's running total of LCA (below zero = it lowered the "
        "loss); middle, the share of each layer's parameters that helped at each iteration "
        "(thin: per iteration, thick: a moving average; 50 % is a coin flip); right, the loss "
        "rebuilt as L(θ_0) plus the summed LCA, against the measured loss and first order.",
        "",
    ]
    return "\n".join(parts)


def _measures_markdown(runs: ReportRuns, figures: Mapping[str, Path]) -> str:
    """Fig 3, 4, S11 (and across runs, train vs val), S7, S17 and conservation."""
    group, sign, unit = runs.group, runs.sign, runs.loss_unit
    m = group[0]
    layers = m.layers
    h, osc, hist, sync = m.helped, m.oscillations, m.histogram, m.sync
    name = m.run_dir.name
    parts: list[str] = []
    if h is not None and hist is not None:
        parts += _noisy_markdown(figures, m)
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
            row += [
                f"{sign['mean'][i]:+.4g} ± {sign['std'][i]:.2g}",
                f"{sign['p_value'][i]:.3g}",
            ]
        totals_rows.append(row)
    header = ["layer", f"total LCA of {name} ({unit})", "share of ΔL"]
    if sign is not None:
        header += [f"mean ± std over {len(group)} runs", "p (t-test vs 0)"]
    parts += [
        _table(header, totals_rows),
        "",
        image(figures, "fig4_layer_totals", "per-layer total LCA"),
        "",
        "How to read: bars below zero (green) are layers whose parameters, summed over training, "
        "lowered the loss; a bar above zero (red) is a layer that, in total, *raised* it while "
        "the rest of the network learned.",
        "",
        image(figures, "s11_cumulative_layer_lca", "cumulative per-layer LCA"),
        "",
        "How to read: each curve is a layer's running total (its last point is the bar "
        "above); a curve that turns upward marks a layer that starts to hurt.",
        "",
    ]
    if "runs_layer_totals" in figures:
        parts += [
            "### Across runs",
            "",
            image(figures, "runs_layer_totals", "per-layer totals across runs"),
            "",
            "How to read: bars are means over runs, whiskers one standard deviation, dots single "
            "runs; a small p says the layer's total is consistently non-zero across seeds (its "
            "sign says whether it helps or hurts).",
            "",
        ]
    if "train_vs_val" in figures:
        other = m.other_split
        rows = [[n, f"{a:+.5g}", f"{b:+.5g}"] for n, a, b in zip(layers, m.totals, m.other_totals)]
        parts += [
            f"### {m.split} vs {other}",
            "",
            _table(["layer", f"{m.split} ({unit})", f"{other} ({unit})"], rows),
            "",
            image(figures, "train_vs_val", "train vs validation per-layer totals"),
            "",
            "How to read: the same trajectory, allocated on two data sets. A layer that helps "
            "the training loss much more than the validation loss is fitting the training set "
            "(the paper's suggested overfitting probe).",
            "",
        ]
    if osc is not None:
        parts += _oscillations_markdown(figures, m, unit)
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
        image(figures, "s17_synchronisation", "synchronised moments of learning"),
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
                [f"ΔL measured ({unit})", f"{m.loss_change:+.6f}"],
                [f"Σ LCA ({unit})", f"{m.totals.sum():+.6f}"],
                ["total error, allocated rule (% of |ΔL|)", _num(m.error_pct("rk4"), "+.4f")],
                [
                    "total error first order (% of |ΔL|)",
                    _num(m.error_pct("first_order"), "+.4f"),
                ],
            ],
        ),
        "",
        image(figures, "approximate_loss", "loss rebuilt from LCA"),
        "",
        "How to read: L(θ_0) plus the running sum of all LCA should lie on the measured loss; "
        "the lower panel shows how far each rebuilt curve drifts from it. The allocation "
        f"(rule {m.rule}) is trustworthy when its drift stays near zero; the first-order curve "
        "shows what the simpler gradient × step estimate would have missed.",
        "",
    ]
    return "\n".join(parts)


def _noisy_markdown(figures: Mapping[str, Path], m: RunMeasures) -> list[str]:
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
        image(figures, "fig3a_percent_helped", "percent helped per iteration"),
        "",
        "How to read: the green line is the share of parameters with non-zero LCA that lowered "
        "the loss at that iteration (red: raised it; the two add up to 100 %), grey the share "
        "of all parameters with no effect, black the loss (right axis). The paper finds green "
        "barely above the dotted 50 % line even while the loss falls fast: learning is noisy.",
        "",
        image(figures, "fig3b_lca_histogram", "histogram of LCA values"),
        "",
        f"How to read: counts of single LCA values (one parameter, one iteration), helping "
        f"green, hurting red, on a log axis. Near mirror images mean the net progress is a "
        f"small imbalance between two large masses. Excess kurtosis "
        f"{_num(hist.excess_kurtosis, '.1f')} (non-zero values; "
        f"{_num(hist.excess_kurtosis_all, '.1f')} with zeros) means far heavier tails than a "
        "Gaussian (0).",
        "",
        image(figures, "fig3c_helped_per_layer", "percent helped per layer"),
        "",
        "How to read: each layer's share of helping parameters, averaged over iterations; the "
        "y axis is zoomed around the dotted 50 % line.",
        "",
        image(figures, "fig3d_fraction_helped", "fraction of iterations each parameter helped"),
        "",
        "How to read: for each parameter, the share of iterations where its LCA was negative. "
        "A peak near 50 % means parameters help and hurt by turns; a spike at 0 % is "
        "parameters that never move or never get a gradient (e.g. dead input pixels).",
        "",
    ]


def _oscillations_markdown(figures: Mapping[str, Path], m: RunMeasures, unit: str) -> list[str]:
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
        image(figures, "s7_oscillations", "oscillations per layer"),
        "",
        "How to read: left, per layer, the inverse of the mean frequency at which a "
        "parameter's update reverses direction (blue) and its full-set gradient changes sign "
        "(orange); right, those frequencies per parameter. Small numbers of iterations mean "
        "weights zig-zag rather than move steadily downhill.",
        "",
    ]
