"""``lca prune``: LCA as a measure of weight importance, against magnitude and random pruning.

If a weight's total LCA says how much it lowered the loss, the weights that helped least
should be the ones a trained network misses least. Each criterion ranks the prunable weights
of θ_T (kernels by default), the least important ``round(fraction · n)`` of each scope are
set to zero, and the pruned network is evaluated on the whole train and validation splits
with the allocation's own evaluation model and fixed batches. This module ranks, masks and
writes; `lca.pruning.evaluation` evaluates and tabulates.

Rankings and masks are pure numpy (testable without TensorFlow). Importance is "larger is
kept"; ties go by flat index (a stable sort), so every mask is reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..layout import ParameterLayout
from ..storage import Run, RunError, location, open_run
from ..storage.base import writing_to
from ..storage.outputs import local_folder, write_text
from .evaluation import PruneTable, average_row, figure_curves

#: Ranking criteria; the first three read the per-parameter LCA (``allocate.store: parameters``).
CRITERIA = ("lca", "lca-abs", "lca-late", "magnitude", "movement", "random")
LCA_CRITERIA = ("lca", "lca-abs", "lca-late")
DEFAULT_FRACTIONS = (0.5, 0.8, 0.9, 0.95, 0.98)
SCOPES = ("global", "layer")
#: What ``include`` means by name: the variables whose name ends with one of these.
INCLUDE_ALIASES = {"kernels": ("kernel",), "all": ("",)}
LATE_FRACTION = 0.25  # lca-late: the last quarter of the iterations


# --- rankings and masks (pure numpy) ---------------------------------------------------------


def parse_criteria(by: str | Sequence[str]) -> tuple[str, ...]:
    """``"lca,magnitude"`` or a sequence, checked and without duplicates."""
    names = [s.strip() for s in by.split(",")] if isinstance(by, str) else list(by)
    names = list(dict.fromkeys(n for n in names if n))
    unknown = [n for n in names if n not in CRITERIA]
    if unknown or not names:
        raise ValueError(
            f"--by {unknown[0] if unknown else by!r}: choose from {', '.join(CRITERIA)}"
        )
    return tuple(names)


def parse_fractions(fractions: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.5,0.9"`` or a sequence: sorted, unique, each in (0, 1] (0 is always measured)."""
    try:
        values = [
            float(f) for f in (fractions.split(",") if isinstance(fractions, str) else fractions)
        ]
    except ValueError:
        raise ValueError(f"--fractions {fractions!r}: expected numbers like 0.5,0.9") from None
    bad = [f for f in values if not 0.0 <= f <= 1.0]
    if bad or not values:
        raise ValueError(f"--fractions: {bad[0] if bad else fractions!r} is not in [0, 1]")
    return tuple(sorted({f for f in values if f > 0.0}))


def prunable_indices(layout: ParameterLayout, include: str = "kernels") -> np.ndarray:
    """Flat indices of the variables that may be pruned: ``kernels`` (dense and conv kernels:
    a Keras name ending in "kernel", a torch "weight" of two or more axes that is not an
    embedding), ``all``, or comma-separated name endings (``kernel,embeddings``)."""
    if include == "kernels":
        chosen = [e for e in layout.entries if _is_kernel(e)]
    else:
        endings = INCLUDE_ALIASES.get(include) or tuple(
            e.strip() for e in include.split(",") if e.strip()
        )
        chosen = [e for e in layout.entries if e.name.endswith(endings)]
    if not chosen:
        names = ", ".join(e.name for e in layout.entries)
        raise ValueError(f"--include {include!r}: no variable's name ends so (variables: {names})")
    return np.concatenate([np.arange(e.offset, e.offset + e.size) for e in chosen])


def _is_kernel(entry) -> bool:
    if entry.name.endswith("kernel"):
        return True
    torch_weight = entry.name.endswith("/weight") and len(entry.shape) >= 2
    return torch_weight and entry.unit_kind not in ("token", "position")


def scope_groups(
    layout: ParameterLayout, prunable: np.ndarray, scope: str
) -> dict[str, np.ndarray]:
    """The sets of weights each pruned by the fraction: all of them, or each layer group's."""
    if scope not in SCOPES:
        raise ValueError(f"--scope {scope!r}: choose from {', '.join(SCOPES)}")
    if scope == "global":
        return {"global": np.sort(prunable)}
    layer_of = layout.layer_index()[prunable]
    groups = {}
    for position, layer in enumerate(layout.layers):
        members = np.sort(prunable[layer_of == position])
        if members.size:
            groups[layer] = members
    return groups


def pruned_count(fraction: float, size: int) -> int:
    """Exactly how many weights of a scope of ``size`` a fraction zeroes (round half to even)."""
    return int(round(fraction * size))


def pruning_mask(
    importance: np.ndarray, groups: Mapping[str, np.ndarray], fraction: float
) -> np.ndarray:
    """(K,) bool, True where the weight is zeroed: in each group its least important
    ``pruned_count`` weights, ties going to the lower flat index first."""
    mask = np.zeros(importance.shape[0], dtype=bool)
    for members in groups.values():
        order = np.argsort(importance[members], kind="stable")  # members are sorted by index
        mask[members[order[: pruned_count(fraction, members.size)]]] = True
    return mask


def lca_sums(
    lca: zarr.Array, late_start: int, chunk_rows: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_t A[t, i] over all iterations and over t ≥ ``late_start``, in float64, reading
    ``chunk_rows`` rows at a time (the (T, K) array need not fit in memory). Added row by row,
    so the sums are bitwise numpy's sums of the whole array along its first axis."""
    total = np.zeros(lca.shape[1])
    late = np.zeros(lca.shape[1])
    for start in range(0, lca.shape[0], chunk_rows):
        block = np.asarray(lca[start : start + chunk_rows], dtype=np.float64)
        for t, row in enumerate(block, start):
            total += row
            if t >= late_start:
                late += row
    return total, late


def late_start(iterations: int) -> int:
    """The first iteration of lca-late's last quarter."""
    return iterations - int(np.ceil(LATE_FRACTION * iterations))


def importance(
    criterion: str,
    theta_0: np.ndarray,
    theta_T: np.ndarray,
    lca_total: np.ndarray | None = None,
    lca_late: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(K,) float64, larger = kept longer. LCA < 0 helped, so the most negative sums rank
    highest for ``lca`` and ``lca-late``; ``lca-abs`` keeps the largest effect of either sign."""
    if criterion == "lca":
        return -np.asarray(lca_total, dtype=np.float64)
    if criterion == "lca-abs":
        return np.abs(np.asarray(lca_total, dtype=np.float64))
    if criterion == "lca-late":
        return -np.asarray(lca_late, dtype=np.float64)
    if criterion == "magnitude":
        return np.abs(theta_T.astype(np.float64))
    if criterion == "movement":
        return np.abs(theta_T.astype(np.float64) - theta_0.astype(np.float64))
    if criterion == "random":
        return np.random.default_rng(seed).random(theta_T.shape[0])
    raise ValueError(f"unknown criterion {criterion!r}")


def pruned_theta(theta: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """θ with the masked weights set to +0, everything else bitwise unchanged."""
    return np.where(mask, np.float32(0.0), theta).astype(np.float32, copy=False)


# --- the command ------------------------------------------------------------------------------


def prune(
    run_dir: str | Path,
    by: str | Sequence[str] = CRITERIA,
    fractions: str | Sequence[float] = DEFAULT_FRACTIONS,
    scope: str = "global",
    split: str = "train",
    out: str | Path | None = None,
    include: str = "kernels",
    seeds: int = 5,
    chunk_rows: int = 64,
    evaluate: Callable[[np.ndarray], Mapping[str, Any]] | None = None,
) -> PruneTable:
    """Prune θ_T of a run by each criterion and fraction; write prune.json, .md and .png.

    ``out`` defaults to ``RUN/prune`` (a URL works, as for ``lca report``). ``evaluate``
    replaces the TensorFlow evaluation (``theta -> {split: SplitScore}``), for tests.
    """
    from ..report.measures import loss_unit

    criteria, fractions = parse_criteria(by), parse_fractions(fractions)
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: must be >= 1")
    run = open_run(run_dir)
    run.trajectory.require_complete()
    groups = scope_groups(run.layout, prunable_indices(run.layout, include), scope)
    total, late = _lca_criteria_sums(run, criteria, split, chunk_rows)
    theta_0 = np.asarray(run.theta[0])
    theta_T = np.asarray(run.theta[run.num_iterations])
    has_val = run.trajectory.group["val_indices"].shape[0] > 0
    splits = ("train", "val") if has_val else ("train",)
    if evaluate is None:
        from .evaluation import PruningEvaluator

        evaluate = PruningEvaluator(run.path, splits)

    unpruned = average_row("none", 0.0, dict.fromkeys(groups, 0), [evaluate(theta_T)])
    rows = []
    for criterion in criteria:
        draws = range(seeds) if criterion == "random" else [0]
        ranks = [importance(criterion, theta_0, theta_T, total, late, seed) for seed in draws]
        for f in fractions:
            masks = [pruning_mask(rank, groups, f) for rank in ranks]
            scores = [evaluate(pruned_theta(theta_T, m)) for m in masks]
            zeroed = {name: int(masks[0][g].sum()) for name, g in groups.items()}
            seeds_used = tuple(draws) if criterion == "random" else ()
            rows.append(average_row(criterion, f, zeroed, scores, seeds_used))

    table = PruneTable(
        run_dir=run.path,
        split=split,
        scope=scope,
        include=include,
        splits=splits,
        prunable=int(sum(g.size for g in groups.values())),
        parameters=int(run.layout.total),
        groups={name: int(g.size) for name, g in groups.items()},
        unpruned=unpruned,
        rows=rows,
        stored_loss=_stored_loss(run, splits),
        loss_unit=loss_unit(run),
    )
    target = location(out) if out is not None else run.path / "prune"
    with writing_to(
        f"the pruning results to {target}",
        "the run is not changed: free space or fix the permissions, then rerun `lca prune`, "
        "or pass --out DIR for another folder",
    ):
        table.out_dir = _write(table, target)
    return table


def _lca_criteria_sums(run: Run, criteria, split: str, chunk_rows: int):
    """The LCA sums the LCA criteria rank by (None, None when none is asked for)."""
    if not any(c in LCA_CRITERIA for c in criteria):
        return None, None
    if run.lca_store is not None and run.store_level != "parameters":
        asked = ",".join(c for c in criteria if c in LCA_CRITERIA)
        raise RunError(
            f"{run.path}: --by {asked} ranks by the per-parameter LCA, which `store: "
            f"{run.store_level}` does not keep; reallocate with `lca allocate {run.path} "
            "--store parameters --restart` (or prune --by magnitude,movement,random)"
        )
    lca = run.lca(split)  # a one-line RunError before allocation, or for a missing split
    run.require_allocated()
    return lca_sums(lca, late_start(run.num_iterations), chunk_rows)


def _stored_loss(run: Run, splits: Sequence[str]) -> dict[str, float]:
    """The allocation's L(θ_T) per split, which the unpruned evaluation must reproduce."""
    return {s: float(run.loss(s)[-1]) for s in splits if s in run.splits}


def _write(table: PruneTable, target: Path) -> Path:
    """prune.json, prune.md, prune.png, each whole or not at all; a URL is uploaded last."""
    from ..report.style import PlotStyle
    from . import figure as plots_pruning

    with local_folder(target, "lca-prune-") as out:
        data = table.to_dict()
        write_text(out / "prune.json", json.dumps(data, indent=1, allow_nan=False))
        figure = "prune.png"
        markdown = (
            table.to_markdown() + f"\n![accuracy and loss against the fraction pruned]({figure})\n"
        )
        write_text(out / "prune.md", markdown)
        partial = out / ".prune.partial.png"
        plots_pruning.pruning_curves(
            figure_curves(table),
            partial,
            title=f"{table.run_dir.name}: pruning θ_T",
            style=PlotStyle(loss_unit=table.loss_unit),
        )
        partial.replace(out / figure)
    return target
