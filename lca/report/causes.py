"""report.md's "Why parameters hurt": the LCA of each layer split by the optimiser's terms.

A run allocated with ``lca allocate RUN --causes`` keeps, per split, every layer's LCA split by
update term (signal, mini-batch deviation, momentum or history, weight decay, replay
residual) × part (first order, curvature). This module measures it with
`lca.analysis.causes` and writes the section: per split a table of each cause's LCA per
layer and per window of iterations, a stacked figure over iterations, the breakdown of the
positive (hurting) LCA, on the validation split which terms drive generalisation or
overfitting, the check that the causes add up and the replay residual.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import analysis
from ..analysis import CauseSummary, ValidationDrivers
from ..analysis.causes import NEGLIGIBLE
from .markdown import num, table
from .plots_causes import panel_layers, stacked_causes
from .style import PlotStyle

if TYPE_CHECKING:
    from .section import ReportRuns

MAX_COLUMNS = 8  # layer columns in a table; beyond it the largest 6 and "other layers"
WINDOWS = 4
BINS = 40
CHUNK_ROWS = 1024  # iterations read at once: the cause arrays are per layer, small


class CausesSection:
    """Each cause's LCA per layer and window, stacked over iterations; what drove the hurting."""

    def __init__(
        self,
        run_name: str,
        terms: list[str],
        layers: list[str],
        summaries: dict[str, CauseSummary],
        drivers: ValidationDrivers | None,
        residual: dict,
        unit: str,
    ) -> None:
        self._run_name, self._terms, self._layers = run_name, terms, layers
        self._summaries, self._drivers, self._residual = summaries, drivers, residual
        self._unit = unit
        self.data: dict[str, Any] = {"causes": None}
        if summaries:
            self.data["causes"] = analysis.jsonable(
                {
                    "terms": terms,
                    "parts": list(analysis.PARTS),
                    "splits": {s: summary.to_dict() for s, summary in summaries.items()},
                    "validation": None if drivers is None else drivers.to_dict(),
                    "replay_residual": residual,
                    "figures": {f"causes_{s}": f"causes_{s}.png" for s in summaries},
                }
            )

    @classmethod
    def from_runs(cls, runs: ReportRuns) -> CausesSection:
        """Measure the causes of every allocated split (the report's split first)."""
        run, split = runs.runs[0], runs.split
        if not run.has_causes:
            return cls(run.path.name, [], [], {}, None, {}, runs.loss_unit)
        terms = run.cause_terms
        layers = run.layer_names
        summaries: dict[str, CauseSummary] = {}
        for s in [split] + [s for s in run.splits if s != split]:
            summaries[s] = analysis.summarise_causes(
                s, run.cause_layer_lca(s), terms, layers, hurt=run.cause_hurt_layer_lca(s),
                layer_lca=run.layer_lca(s), windows=WINDOWS, bins=BINS, chunk_rows=CHUNK_ROWS,
            )  # fmt: skip
        drivers = None
        if "val" in summaries:
            drivers = analysis.validation_drivers(run.cause_layer_lca("val"), terms, CHUNK_ROWS)
        residual = analysis.residual_summary(run.replay_residual())
        return cls(run.path.name, terms, layers, summaries, drivers, residual, runs.loss_unit)

    def figures(self, out_dir: Path, style: PlotStyle) -> dict[str, Path]:
        figures: dict[str, Path] = {}
        layers = self._layers
        for s, summary in self._summaries.items():
            shown = panel_layers(layers, summary.totals)
            which = "" if len(shown) == len(layers) else f" (the {len(shown)} largest layers)"
            figures[f"causes_{s}"] = stacked_causes(
                [layers[k] for k in shown], self._terms, summary.bin_edges,
                summary.bins[..., shown], out_dir / f"causes_{s}.png",
                f"{self._run_name}: LCA by cause over iterations, {s} split{which}", style=style,
            )  # fmt: skip
        return figures

    def markdown(self, figures: Mapping[str, Path]) -> str:
        if not self._summaries:
            return ""
        return _markdown(
            self._terms, self._summaries, self._drivers, self._residual, figures, self._unit
        )


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


def _nats(values: np.ndarray) -> list[list[str]]:
    """A table's values as ``+.4g``, those within rounding of zero (`NEGLIGIBLE` of the
    table's largest |value|) as "0", not as 1e-23."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.abs(values[np.isfinite(values)])
    zero = NEGLIGIBLE * (finite.max() if finite.size else 0.0)
    return [["0" if abs(v) <= zero else num(float(v), "+.4g") for v in row] for row in values]


def _cause_table(summary: CauseSummary) -> str:
    names, selectors = _columns(summary)
    flat = summary.totals.reshape(-1, len(summary.layers))
    values = _nats([[v @ s for s in selectors] for v in [*flat, flat.sum(0)]])
    rows = [[_label(c), *v] for c, v in zip(summary.causes, values)]
    rows.append(["**sum (layer LCA)**", *values[-1]])
    return table(["cause", *names], rows)


def _window_table(summary: CauseSummary) -> str:
    edges = summary.window_edges
    per_window = summary.windows.sum(axis=3).reshape(len(summary.windows), -1)  # (W, causes)
    header = ["cause (all layers)"] + [f"iterations {a}–{b - 1}" for a, b in zip(edges, edges[1:])]
    values = _nats([*per_window.T, per_window.sum(axis=1)])
    rows = [[_label(c), *v] for c, v in zip(summary.causes, values)]
    rows.append(["**sum**", *values[-1]])
    return table(header, rows)


def _percent(v: float) -> str:
    text = num(100.0 * v, ".1f")
    return ("0.0" if text == "-0.0" else text) + " %" if np.isfinite(v) else "n/a"


SHOWN = 0.0005  # a share that prints as 0.0 % is left out of the spelled-out sentence


def _hurting(summary: CauseSummary, unit: str) -> list[str]:
    h = summary.hurting
    if h is None:
        return []
    ranked = h.ranked()
    if not np.isfinite(ranked[0][1]):
        return [f"No entry raised the {summary.split} loss: there is no positive LCA to split."]
    spelled = ", ".join(f"{_percent(f)} from {_label(c)}" for c, f in ranked if f >= SHOWN)
    against = [f"{_label(c)} ({_percent(f)})" for c, f in ranked if f <= -SHOWN]
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
        f" {unit} over the entries A[t, i] > 0, which raised the loss), {spelled}.",
        "",
        table(["cause", *names], rows),
    ]


def _validation(drivers: ValidationDrivers, unit: str) -> list[str]:
    totals = np.asarray(drivers.totals, dtype=np.float64)  # (terms, parts)
    values = _nats(np.column_stack([totals, totals.sum(axis=1)]))
    rows = []
    for k, term in enumerate(drivers.terms):
        # the replay residual is no update term: it drives nothing
        verdict = "— (replay residual)" if term == "residual" else drivers.verdicts()[k]
        rows.append([term, *values[k], verdict])
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
            f"{num(drivers.signal_first_order, '+.4g')} {unit}; it was positive (following "
            "the training gradient raised the validation loss) at "
            f"{drivers.signal_hurt_iterations} of {drivers.iterations} iterations.",
        ]
    return lines


def _markdown(
    terms: list[str],
    summaries: dict[str, CauseSummary],
    drivers: ValidationDrivers | None,
    residual: dict,
    figures: Mapping[str, Path],
    unit: str,
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
            f"Each cause's {split} LCA per layer over the run ({unit}; negative helped, "
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
        hurting = _hurting(summary, unit)
        if hurting:
            lines += ["", f"### Where the hurting comes from ({split} split)", "", *hurting]
    if drivers is not None:
        lines += ["", *_validation(drivers, unit)]
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
