"""``report.md``: the Markdown sections, tables and figure links of a report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .markdown import num as _num
from .markdown import table as _table
from .measures import TOP_MOMENTS, Report, RunMeasures, Skipped, _unit


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

    parts += [
        "",
        _img(report, "overview", "overview: cumulative LCA per layer, % helped, conservation"),
        "",
        "How to read: left, each layer's running total of LCA (below zero = it lowered the "
        "loss); middle, the share of each layer's parameters that helped at each iteration "
        "(thin: per iteration, thick: a moving average; 50 % is a coin flip); right, the loss "
        "rebuilt as L(θ_0) plus the summed LCA, against the measured loss and first order.",
        "",
    ]
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
