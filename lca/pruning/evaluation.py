"""What a pruned θ scores, and the table ``lca prune`` makes of the scores.

Loss and accuracy of a run's model at any θ, on the fixed batches ``lca allocate`` uses.

Pruning asks how good a θ is, not how it changes, so only a forward pass is needed. It
reuses the allocation's objective (`lca.allocation.load_objective`: the evaluation
model, the same fixed, unshuffled batches, float64 sums of float32 per-example losses) and
adds the one thing the objective never computes: how many predictions are right. The loss
is summed with the objective's own terms, so an unpruned θ_T gives the stored L(θ_T).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SplitScore:
    """The mean loss over a whole split, and the accuracy (None without classes)."""

    loss: float
    accuracy: float | None


class PruningEvaluator:
    """``evaluator(theta) -> {split: SplitScore}`` for a run, compiled once."""

    def __init__(self, run_dir: str | Path, splits: tuple[str, ...]) -> None:
        from ..allocation import load_objective
        from ..storage import open_run, read_run_config

        run = open_run(run_dir)
        stored = dict(run.lca_store.attrs["settings"]) if run.lca_store is not None else {}
        config = read_run_config(run_dir)
        self.classification = bool(config.model.classification)
        # the batches the stored losses were made with (the config's before); the losses of
        # every precision come from a float32 pass (TF32 off), which `scores` repeats
        self.objective = load_objective(
            run_dir,
            splits,
            int(stored.get("eval_batch_size", config.allocate.eval_batch_size)),
            jit_compile=bool(stored.get("jit_compile", config.allocate.jit_compile)),
            reuse_input_layer=bool(
                stored.get("reuse_input_layer", config.allocate.reuse_input_layer)
            ),
        )
        self.splits = tuple(splits)
        self.num_params = self.objective.num_params

    def __call__(self, theta: np.ndarray) -> dict[str, SplitScore]:
        scores = {}
        for name, (loss, right) in self.objective.scores(theta).items():
            count = self.objective.num_examples(name)
            accuracy = right / count if self.classification else None
            scores[name] = SplitScore(loss=loss, accuracy=accuracy)
        return scores


# --- the table (pure numpy) ----------------------------------------------------------------------


@dataclass(frozen=True)
class PruneRow:
    """One criterion at one fraction; ``random``: the mean over seeds, with their std."""

    criterion: str
    fraction: float
    zeroed_by_scope: dict[str, int]  # weights set to zero in each scope (one mask's; all alike)
    loss: dict[str, float]
    accuracy: dict[str, float | None]
    loss_std: dict[str, float] | None = None
    accuracy_std: dict[str, float | None] | None = None
    seeds: tuple[int, ...] = ()

    @property
    def zeroed(self) -> int:
        return sum(self.zeroed_by_scope.values())


@dataclass
class PruneTable:
    """What ``lca prune`` measured, and where it wrote it."""

    run_dir: Path
    split: str  # whose LCA ranks the weights
    scope: str
    include: str
    splits: tuple[str, ...]  # evaluated
    prunable: int
    parameters: int
    groups: dict[str, int]  # scope -> its number of prunable weights
    unpruned: PruneRow
    rows: list[PruneRow]
    stored_loss: dict[str, float] = field(default_factory=dict)  # the allocation's L(θ_T)
    loss_unit: str = "nats"
    out_dir: Path | None = None

    @property
    def fractions(self) -> list[float]:
        return sorted({r.fraction for r in self.rows})

    @property
    def criteria(self) -> list[str]:
        return list(dict.fromkeys(r.criterion for r in self.rows))

    @property
    def ranked_on(self) -> str:
        """The split whose accuracy decides which criterion is best: validation if measured."""
        return "val" if "val" in self.splits else self.splits[0]

    def row(self, criterion: str, fraction: float) -> PruneRow:
        return next(r for r in self.rows if r.criterion == criterion and r.fraction == fraction)

    @property
    def headline_metric(self) -> str:
        """``accuracy`` for a classifier, else ``loss``: what decides the best criterion."""
        return "accuracy" if self.unpruned.accuracy[self.ranked_on] is not None else "loss"

    def best(self) -> dict[float, list[str]]:
        """Per fraction, the criteria with the highest (mean) accuracy, else the lowest loss."""
        split, metric, out = self.ranked_on, self.headline_metric, {}
        sign = 1.0 if metric == "accuracy" else -1.0
        for f in self.fractions:
            rows = [r for r in self.rows if r.fraction == f]
            top = max(sign * getattr(r, metric)[split] for r in rows)
            out[f] = [r.criterion for r in rows if sign * getattr(r, metric)[split] == top]
        return out

    def to_dict(self) -> dict[str, Any]:
        return _finite(
            {
                "run_dir": str(self.run_dir),
                "split": self.split,
                "scope": self.scope,
                "include": self.include,
                "evaluated_on": list(self.splits),
                "parameters": self.parameters,
                "prunable": self.prunable,
                "groups": self.groups,
                "stored_loss": self.stored_loss,
                "loss_unit": self.loss_unit,
                "unpruned": _row_dict(self.unpruned),
                "rows": [_row_dict(r) for r in self.rows],
                "best": [
                    {"fraction": f, "criteria": c, "by": f"{self.ranked_on} {self.headline_metric}"}
                    for f, c in self.best().items()
                ],
            }
        )

    def headline_table(self) -> str:
        """Criteria × fractions: the deciding split's mean accuracy (%) or loss, best in bold."""
        split, metric, best = self.ranked_on, self.headline_metric, self.best()

        def cell(r: PruneRow) -> str:
            std = (getattr(r, f"{metric}_std") or {}).get(split)
            if metric == "accuracy":
                return _pct(r.accuracy[split], std)
            return f"{r.loss[split]:.4f}" + (f" ± {std:.4f}" if std is not None else "")

        lines = [["criterion", "0 %", *(f"{100 * f:g} %" for f in self.fractions)]]
        for c in self.criteria:
            cells = [c, cell(self.unpruned)]
            for f in self.fractions:
                text = cell(self.row(c, f))
                cells.append(f"**{text}**" if c in best[f] else text)
            lines.append(cells)
        return _table(lines)

    def to_markdown(self) -> str:
        split, metric = self.ranked_on, self.headline_metric
        unit = " (%)" if metric == "accuracy" else f" ({self.loss_unit})"
        seeds = max((len(r.seeds) for r in self.rows), default=0)
        about = (
            f"θ_T with the least important weights set to zero (`--include {self.include}`: "
            f"{self.prunable:,} of {self.parameters:,} parameters prunable; `--scope "
            f"{self.scope}`: exactly round(fraction · n) of "
            f"{'each layer group' if self.scope == 'layer' else 'them'} zeroed), evaluated on "
            "the whole splits with the allocation's evaluation model and fixed batches. The "
            f"LCA criteria rank by the {self.split} split's LCA"
            + (f"; random is mean ± std over {seeds} seeds" if seeds else "")
            + ".\n\n"
        )
        best = "; ".join(f"{100 * f:g} %: {', '.join(c)}" for f, c in self.best().items())
        header = ["criterion", "pruned", "weights zeroed"]
        for s in self.splits:
            header += [f"{s} loss", f"{s} accuracy %"]
        lines = [header, self._cells(self.unpruned)] + [self._cells(r) for r in self.rows]
        return (
            f"# Pruning {self.run_dir.name}\n\n{about}"
            f"## {split} {metric}{unit} by criterion and fraction pruned\n\n"
            f"{self.headline_table()}\n\n"
            f"Best {split} {metric} at each fraction (bold): {best}.\n\n"
            f"## Every measurement\n\n{_table(lines)}\n"
        )

    def _cells(self, r: PruneRow) -> list[str]:
        cells = [r.criterion, f"{100 * r.fraction:g} %", f"{r.zeroed:,}"]
        for s in self.splits:
            std = (r.loss_std or {}).get(s)
            cells.append(f"{r.loss[s]:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
            cells.append(_pct(r.accuracy[s], (r.accuracy_std or {}).get(s)))
        return cells


def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _table(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def _row_dict(r: PruneRow) -> dict[str, Any]:
    return {
        "criterion": r.criterion,
        "fraction": r.fraction,
        "zeroed": r.zeroed,
        "zeroed_by_scope": r.zeroed_by_scope,
        "loss": r.loss,
        "accuracy": r.accuracy,
        "loss_std": r.loss_std,
        "accuracy_std": r.accuracy_std,
        "seeds": list(r.seeds),
    }


def _finite(value: Any) -> Any:
    """JSON without NaN: non-finite floats become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def average_row(
    criterion: str,
    fraction: float,
    zeroed_by_scope: dict[str, int],
    scores: list[dict[str, SplitScore]],
    seeds: tuple[int, ...] = (),
) -> PruneRow:
    """One row from the evaluations of one or more masks (std only for several seeds)."""
    splits = list(scores[0])
    loss = {s: np.array([sc[s].loss for sc in scores]) for s in splits}
    acc = {s: [sc[s].accuracy for sc in scores] for s in splits}
    several = len(scores) > 1

    def mean_std(values):
        if values[0] is None:
            return None, None
        a = np.asarray(values, dtype=np.float64)
        return float(a.mean()), float(a.std(ddof=1)) if several else None

    accuracy = {s: mean_std(acc[s]) for s in splits}
    return PruneRow(
        criterion=criterion,
        fraction=fraction,
        zeroed_by_scope=zeroed_by_scope,
        loss={s: float(loss[s].mean()) for s in splits},
        accuracy={s: accuracy[s][0] for s in splits},
        loss_std={s: float(loss[s].std(ddof=1)) for s in splits} if several else None,
        accuracy_std={s: accuracy[s][1] for s in splits} if several else None,
        seeds=tuple(seeds),
    )


def figure_curves(table: PruneTable) -> dict[str, dict[tuple[str, str], tuple]]:
    """criterion -> (metric, split) -> (fractions, mean, std or None), 0 % included."""
    curves = {}
    for c in table.criteria:
        rows = [table.unpruned] + [table.row(c, f) for f in table.fractions]
        x = np.array([r.fraction for r in rows])
        panels = {}
        for metric in ("accuracy", "loss"):
            for s in table.splits:
                mean = [getattr(r, metric)[s] for r in rows]
                if mean[0] is None:
                    continue
                std = [(getattr(r, f"{metric}_std") or {}).get(s) for r in rows]
                band = None if c != "random" else np.array([v or 0.0 for v in std])
                panels[(metric, s)] = (x, np.array(mean, dtype=np.float64), band)
        curves[c] = panels
    return curves
