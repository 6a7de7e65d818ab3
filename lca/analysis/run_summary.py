"""One run summarised as plain numbers (``lca.analysis.summary``): every measurement at once."""

from __future__ import annotations

from typing import Any

import numpy as np

from .distributions import _HelpedAcc, _MomentsAcc, _nanmean
from .series import _LayerSeriesAcc, oscillations, synchronisation
from .streaming import _LayerReducer, _shape2, _stream, jsonable


def summary(run: Any, split: str = "train", chunk_rows: int = 64) -> dict[str, Any]:
    """The paper's headline numbers for one run and split, as plain JSON types.

    One pass over the LCA array (percent helped, layer sums, moments), one over θ and one
    over the gradients (oscillations).
    """
    layout = run.layout
    names = list(layout.layers)
    L = len(names)
    index = layout.layer_index()
    lca = run.lca(split)
    rows, K = _shape2(lca)
    reducer = _LayerReducer(index, L, K)
    helped, series, moments = (
        _HelpedAcc(reducer, rows, K),
        _LayerSeriesAcc(reducer, rows),
        _MomentsAcc(),
    )
    _stream(lca, chunk_rows, [helped, series, moments])
    h = helped.result()
    totals = series.series.sum(axis=0)
    osc = oscillations(run.theta, run.grad(split), index, L, chunk_rows)
    min_fraction = 0.5 if L > 4 else 1.0
    sync = synchronisation(series.series, min_fraction=min_fraction)
    loss = np.asarray(run.loss(split), dtype=np.float64)
    nz, everything = moments.nonzero(), moments.all()
    result = {
        "split": split,
        "iterations": rows,
        "parameters": K,
        "layers": names,
        "percent_helped": h.mean_helped,
        "percent_helped_per_layer": dict(zip(names, h.mean_helped_per_layer)),
        "percent_zero": _nanmean(h.zero),
        "layer_totals": dict(zip(names, totals)),
        "lca_mean": nz.mean,
        "lca_std": nz.std,
        "excess_kurtosis": nz.excess_kurtosis,
        "excess_kurtosis_all": everything.excess_kurtosis,
        "iterations_per_direction_change": osc.iterations_per_direction_change,
        "iterations_per_direction_change_per_layer": dict(
            zip(names, osc.iterations_per_direction_change_per_layer)
        ),
        "iterations_per_gradient_crossing": osc.iterations_per_gradient_crossing,
        "iterations_per_gradient_crossing_per_layer": dict(
            zip(names, osc.iterations_per_gradient_crossing_per_layer)
        ),
        "synchronisation": {
            "min_fraction": min_fraction,
            "required_layers": sync.required_layers,
            "count": sync.count,
            "baseline_mean": sync.baseline_mean,
            "baseline_std": sync.baseline_std,
            "p_value": sync.p_value,
        },
        "loss_change": float(loss[-1] - loss[0]),
        "lca_sum": float(totals.sum()),
    }
    return jsonable(result)
