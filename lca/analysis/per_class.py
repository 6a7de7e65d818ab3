"""Per-class measurements (paper §5 Fig 6, S21, S22): which classes each layer and unit learn.

Inputs come from ``allocate.per_class`` (per-class layer and unit series) or, for a single
unit's incoming weights, from the per-parameter LCA. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .parameters import _layer_entries
from .series import synchronisation
from .streaming import RowSliceable, _blocks, _read


def class_synchronisation(
    class_layer_series: np.ndarray,
    top: int = 20,
    shifts: Sequence[int] = (-2, -1, 0, 1, 2),
    repeats: int = 1000,
    seed: int = 0,
    min_fraction: float = 1.0,
) -> dict[str, Any]:
    """Synchronised moments of learning of each class (Fig 6): ``synchronisation`` per class.

    ``class_layer_series`` is (T, C, L): per iteration, class and layer, the summed LCA.
    """
    series = np.asarray(class_layer_series, dtype=np.float64)
    results = [
        synchronisation(series[:, c, :], top, shifts, repeats, seed + c, min_fraction)
        for c in range(series.shape[1])
    ]
    counts = np.array([r.count for r in results], dtype=float)
    baselines = np.array([r.baseline_mean for r in results])
    return {
        "count": counts,
        "baseline_mean": baselines,
        "p_value": np.array([r.p_value for r in results]),
        "mean_count": float(counts.mean()),
        "mean_baseline": float(baselines.mean()),
    }


def class_specialisation(
    class_unit_totals: np.ndarray, threshold: float = 0.8, tops: Sequence[int] = (1, 2, 3)
) -> dict[str, Any]:
    """How much of each unit's helping its top classes carry (S21).

    ``class_unit_totals`` is (C, units): each unit's LCA summed over training, per class. A
    class helps a unit by the negative part of its total; the share of the top k classes is
    their helping over the unit's total helping. Returns, per k, the fraction of units (with
    any helping) whose top-k share exceeds ``threshold``, and the shares themselves.
    """
    helping = np.maximum(-np.asarray(class_unit_totals, dtype=np.float64), 0.0)
    total = helping.sum(axis=0)
    keep = total > 0
    ranked = -np.sort(-helping[:, keep], axis=0)
    shares = {k: ranked[:k].sum(axis=0) / total[keep] for k in tops}
    return {
        "units": int(keep.sum()),
        "fraction_over": {
            k: float((s > threshold).mean()) if s.size else float("nan") for k, s in shares.items()
        },
        "shares": shares,
        "threshold": threshold,
    }


def neuron_input_totals(
    lca: RowSliceable, layout: Any, layer: str, unit: int, chunk_rows: int = 64
) -> np.ndarray:
    """Total LCA over training of each incoming weight of one unit of a dense layer (S22)."""
    kernel = next(e for e in _layer_entries(layout, layer) if len(e.shape) == 2)
    inputs, outputs = kernel.shape
    columns = kernel.offset + np.arange(inputs) * outputs + unit  # kernel[:, unit], C order
    totals = np.zeros(inputs)
    for start, stop in _blocks(lca.shape[0], chunk_rows):
        totals += _read(lca, start, stop)[:, columns].sum(axis=0, dtype=np.float64)
    return totals
