"""report.md's "Why parameters hurt": the LCA of each layer split by the optimiser's terms.

A run allocated with ``lca allocate RUN --causes`` keeps, per split, every layer's LCA split by
update term (signal, mini-batch deviation, momentum or history, weight decay, replay
residual) × part (first order, curvature). This module measures it with
:mod:`lca.analysis.causes` and writes the section: per split a table of each cause's LCA per
layer and per window of iterations, a stacked figure over iterations, the breakdown of the
positive (hurting) LCA, on the validation split which terms drive generalisation or
overfitting, the check that the causes add up and the replay residual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import analysis
from ..analysis import CauseSummary, ValidationDrivers
from ..storage import Run
from .markdown import num, table
from .measures import _unit
from .plots_causes import panel_layers, stacked_causes

MAX_COLUMNS = 8  # layer columns in a table; beyond it the largest 6 and "other layers"
WINDOWS = 4
BINS = 40


@dataclass
class CausesSection:
    """The section's Markdown, its report.json entry and its figures."""

    markdown: str
    data: dict[str, Any]
    figures: dict[str, Path]


def causes_section(run: Run, split: str, out: Path, chunk_rows: int = 1024) -> CausesSection:
    """Measure the causes of every allocated split (``split`` first), draw, write."""
    terms = run.cause_terms
    layers = run.layer_names
    splits = [split] + [s for s in run.splits if s != split]
    summaries: dict[str, CauseSummary] = {}
    figures: dict[str, Path] = {}
    for s in splits:
        summary = analysis.summarise_causes(
            s, run.cause_layer_lca(s), terms, layers, hurt=run.cause_hurt_layer_lca(s),
            layer_lca=run.layer_lca(s), windows=WINDOWS, bins=BINS, chunk_rows=chunk_rows,
        )  # fmt: skip
        summaries[s] = summary
        shown = panel_layers(layers, summary.totals)
        which = "" if len(shown) == len(layers) else f" (the {len(shown)} largest layers)"
        figures[f"causes_{s}"] = stacked_causes(
            [layers[k] for k in shown], terms, summary.bin_edges, summary.bins[..., shown],
            out / f"causes_{s}.png", f"{run.path.name}: LCA by cause over iterations, "
            f"{s} split{which}",
        )  # fmt: skip
    drivers = None
    if "val" in summaries:
        drivers = analysis.validation_drivers(run.cause_layer_lca("val"), terms, chunk_rows)
    residual = analysis.residual_summary(run.replay_residual())
    data = analysis.jsonable(
        {
            "terms": terms,
            "parts": list(analysis.PARTS),
            "splits": {s: summary.to_dict() for s, summary in summaries.items()},
            "validation": None if drivers is None else drivers.to_dict(),
            "replay_residual": residual,
            "figures": {k: p.name for k, p in figures.items()},
        }
    )
    markdown = _markdown(terms, summaries, drivers, residual, figures)
    return CausesSection(markdown=markdown, data=data, figures=figures)


# --- report.md ------------------------------------------------------------------------------


def _label(cause: str) -> str:
    """``momentum_curvature`` -> "momentum, curvature"."""
    for part in analysis.PARTS:
        if cause.endswith("_" + part):
            return f"{cause.removesuffix('_' + part)}, {part.replace('_', ' ')}"
    return cause


def _columns(summary: CauseSummary) -> tuple[list[str], list[np.ndarray]]:
    """Layer columns of a table: every layer, or the largest ones and "other layers"; the
    selectors are (L,) weights, so a column is ``values @ selector``."""
    n = len(summary.layers)
    eye = list(np.eye(n))
    if n <= MAX_COLUMNS:
        names, selectors = list(summary.layers), eye
    else:
        shown = panel_layers(summary.layers, summary.totals, MAX_COLUMNS - 2)
        names = [summary.layers[k] for k in shown] + ["other layers"]
        selectors = [eye[k] for k in shown] + [1.0 - np.sum([eye[k] for k in shown], axis=0)]
    return names + ["all layers"], selectors + [np.ones(n)]


def _cause_table(summary: CauseSummary) -> str:
    names, selectors = _columns(summary)
    flat = summary.totals.reshape(-1, len(summary.layers))
    rows = [
        [_label(c)] + [num(float(v @ s), "+.4g") for s in selectors]
        for c, v in zip(summary.causes, flat)
    ]
    rows.append(["**sum (layer LCA)**"] + [num(float(flat.sum(0) @ s), "+.4g") for s in selectors])
    return table(["cause", *names], rows)


def _window_table(summary: CauseSummary) -> str:
    edges = summary.window_edges
    per_window = summary.windows.sum(axis=3).reshape(len(summary.windows), -1)  # (W, causes)
    header = ["cause (all layers)"] + [f"iterations {a}–{b - 1}" for a, b in zip(edges, edges[1:])]
    rows = [
        [_label(c)] + [num(float(v), "+.4g") for v in per_window[:, k]]
        for k, c in enumerate(summary.causes)
    ]
    rows.append(["**sum**"] + [num(float(v), "+.4g") for v in per_window.sum(axis=1)])
    return table(header, rows)


def _percent(v: float) -> str:
    return num(100.0 * v, ".1f") + " %" if np.isfinite(v) else "n/a"


def _hurting(summary: CauseSummary) -> list[str]:
    h = summary.hurting
    if h is None:
        return []
    ranked = h.ranked()
    if not np.isfinite(ranked[0][1]):
        return [f"No entry raised the {summary.split} loss: there is no positive LCA to split."]
    spelled = ", ".join(f"{_percent(f)} from {_label(c)}" for c, f in ranked if f > 0)
    against = [f"{_label(c)} ({_percent(f)})" for c, f in ranked if f < 0]
    if against:
        spelled += "; pulling the other way: " + ", ".join(against)
    names, selectors = _columns(summary)
    # back to LCA, so that a column of several layers is their sum over their positive LCA
    lca = (np.nan_to_num(h.fractions) * h.positive).reshape(-1, len(summary.layers))
    positive = [float(h.positive @ s) for s in selectors]
    rows = [
        [_label(c)]
        + [_percent(float(v @ s) / p) if p > 0 else "n/a" for s, p in zip(selectors, positive)]
        for c, v in zip(summary.causes, lca)
    ]
    rows.append(["**positive LCA**"] + [num(p, ".4g") for p in positive])
    return [
        f"Of the positive LCA on the {summary.split} split (Σ {num(float(h.positive.sum()), '.4g')}"
        f" {_unit()} over the entries A[t, i] > 0, which raised the loss), {spelled}.",
        "",
        table(["cause", *names], rows),
    ]


def _validation(drivers: ValidationDrivers) -> list[str]:
    rows = []
    for k, term in enumerate(drivers.terms):
        fo, curv = drivers.totals[k]
        verdict = drivers.verdicts()[k]
        rows.append(
            [term, num(float(fo), "+.4g"), num(float(curv), "+.4g"),
             num(float(fo + curv), "+.4g"), verdict]
        )  # fmt: skip
    lines = [
        "### What drives generalisation (validation split)",
        "",
        "Each update term's validation LCA over the run, all layers: a negative total lowered "
        "the validation loss (drives **generalisation**), a positive one raised it while "
        "training went on (drives **overfitting**).",
        "",
        table(["term", "first order", "curvature", "total", "drives"], rows),
    ]
    if drivers.signal_first_order is not None:
        lines += [
            "",
            "The training signal's first-order validation share, −lr ∇L_train(θ_t)·∇L_val(θ_t) "
            "summed over the run (through the optimiser's preconditioner): "
            f"{num(drivers.signal_first_order, '+.4g')} {_unit()}; it was positive (following "
            "the training gradient raised the validation loss) at "
            f"{drivers.signal_hurt_iterations} of {drivers.iterations} iterations.",
        ]
    return lines


def _markdown(
    terms: list[str],
    summaries: dict[str, CauseSummary],
    drivers: ValidationDrivers | None,
    residual: dict,
    figures: dict[str, Path],
) -> str:
    lines = [
        "## Why parameters hurt: the LCA by cause",
        "",
        "Each share A[t, i] = Δθ_i·ḡ_i splits exactly by the terms of the optimiser's step "
        f"(Δθ = Σ_k u⁽ᵏ⁾; this run's terms: {', '.join(terms)}) and each term's share into a "
        "**first-order** part u·∇L(θ_t), the gradient at the start of the step, and a "
        "**curvature** part u·(ḡ − ∇L(θ_t)), how the gradient changed along the step.",
        "",
    ]
    checks = [
        f"{s}: {num(c.max_deviation, '.3g')} ({num(c.relative, '.2g')} of the largest |layer "
        "LCA| of an iteration)"
        for s, c in ((s, m.check) for s, m in summaries.items())
        if c is not None
    ]
    if checks:
        lines.append(
            "The causes add up to the stored layer LCA to within (max |Σ causes − layer LCA| "
            f"over iterations and layers) {'; '.join(checks)}."
        )
    if residual["max"] is not None:
        lines += [""] if checks else []
        lines.append(
            f"Replay residual ‖r‖/‖Δθ‖ (the part of the recorded step the replay of the "
            f"optimiser did not reproduce): max {num(residual['max'], '.3g')} at iteration "
            f"{residual['max_iteration']}, median {num(residual['median'], '.3g')}. Rounding "
            "θ_t+1 = θ_t + Δθ to float32 alone leaves about 6e-8·|θ|/|Δθ|, so a few 1e-4 is a "
            "faithful replay."
        )
    for split, summary in summaries.items():
        lines += [
            "",
            f"### Causes of the {split} LCA",
            "",
            f"Each cause's {split} LCA per layer over the run ({_unit()}; negative helped, "
            "positive hurt); a column sums to the layer's LCA.",
            "",
            _cause_table(summary),
            "",
            "By window of iterations:",
            "",
            _window_table(summary),
        ]
        if f"causes_{split}" in figures:
            lines += ["", f"![LCA by cause, {split}]({figures[f'causes_{split}'].name})"]
        hurting = _hurting(summary)
        if hurting:
            lines += ["", f"### Where the hurting comes from ({split} split)", "", *hurting]
    if drivers is not None:
        lines += ["", *_validation(drivers)]
    lines += ["", *_HOW_TO_READ]
    return "\n".join(lines) + "\n"


_HOW_TO_READ = [
    "### How to read",
    "",
    "- **signal** is what full-batch training would have done: the whole training split's "
    "gradient through the optimiser (−lr ∇L_train for SGD). **deviation** is what the "
    "mini-batch changed about it (sampling noise, and dropout or batch statistics). "
    "**momentum** (SGD) or **history** (Adam) is the part of the step carried over from "
    "earlier iterations; **weight_decay** (AdamW) the decay; **residual** what the replay "
    "of the optimiser did not reproduce (near zero when the replay is faithful).",
    "- **first order** is the term times the gradient where the step starts; on the training "
    "split the signal's first order is always ≤ 0 for SGD (−lr‖∇L‖²). **curvature** is the "
    "term times how the gradient changed along the step: positive curvature on the signal "
    "means the step overshot.",
    '- The hurting breakdown answers "why did parameters raise the loss": a large momentum '
    "or deviation share says the hurting came from past steps or mini-batch noise, a large "
    "curvature share from steps too long for the loss's curvature.",
    "- On the validation split the signal's first order is −lr ∇L_train·∇L_val: negative when "
    "the training and validation gradients agree, positive (hurting) when they disagree.",
]
