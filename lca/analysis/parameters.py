"""Measurements of single parameters and units: unit series, kernels, curves, agreement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .distributions import _HelpedAcc
from .streaming import RowSliceable, _blocks, _check_layers, _LayerReducer, _read, _Result, _shape2


def _layer_name(layout: Any, layer: str | int) -> str:
    names = layout.layers
    if isinstance(layer, (int, np.integer)):
        return names[int(layer)]
    if layer not in names:
        raise ValueError(f"no layer group {layer!r}; have {names}")
    return layer


def _layer_entries(layout: Any, layer: str | int) -> list:
    name = _layer_name(layout, layer)
    return [e for e in layout.entries if e.layer == name]


def _layer_indices(layout: Any, layer: str | int) -> np.ndarray:
    parts = [np.arange(e.offset, e.offset + e.size) for e in _layer_entries(layout, layer)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def unit_series(
    lca: RowSliceable, layout: Any, layer: str | int, chunk_rows: int = 64
) -> np.ndarray:
    """(T, units) LCA per output unit / channel of one layer group, bias and BN included (S1).

    A parameter belongs to the unit of its last axis index (kernel (…, out), bias (out,)).
    """
    entries = _layer_entries(layout, layer)
    units = {e.shape[-1] if e.shape else 1 for e in entries}
    if len(units) != 1:
        raise ValueError(f"layer {layer!r}: variables disagree on the unit count {units}")
    n_units = units.pop()
    rows, _ = _shape2(lca)
    out = np.zeros((rows, n_units))
    for start, stop in _blocks(rows, chunk_rows):
        block = _read(lca, start, stop)
        b = stop - start
        for e in entries:
            part = block[:, e.offset : e.offset + e.size].reshape(b, -1, n_units)
            out[start:stop] += part.sum(axis=1, dtype=np.float64)
    return out


def kernel_matrix(values: np.ndarray, layout: Any, layer: str | int) -> np.ndarray:
    """One layer's kernel as a heatmap: outputs down, inputs across (Fig 2).

    Dense (in, out) → (out, in). Conv (kh, kw, cin, cout) → (cout·kh, cin·kw), a grid of
    kh × kw blocks, block (o, c) = kernel[:, :, c, o]. Bias and batch-norm are left out.
    """
    values = np.asarray(values).reshape(-1)
    kernels = [e for e in _layer_entries(layout, layer) if len(e.shape) >= 2]
    if len(kernels) != 1:
        raise ValueError(f"layer {layer!r}: expected one kernel variable, got {len(kernels)}")
    e = kernels[0]
    w = values[e.offset : e.offset + e.size].reshape(e.shape)
    if w.ndim == 2:
        return w.T
    if w.ndim == 3:  # 1-D conv (k, cin, cout): one row of blocks per output channel
        w = w[None]
    if w.ndim != 4:
        raise ValueError(f"layer {layer!r}: cannot lay out a kernel of shape {e.shape}")
    kh, kw, cin, cout = w.shape
    return w.transpose(3, 0, 2, 1).reshape(cout * kh, cin * kw)


def parameter_curves(
    lca: RowSliceable,
    layout: Any,
    layer: str | int,
    n_helpful: int = 50,
    n_random: int = 50,
    seed: int = 0,
    chunk_rows: int = 64,
) -> dict[str, np.ndarray]:
    """Cumulative LCA of a layer's most helpful and of random parameters (S2); two passes.

    Indices are global (into θ); helpful ones are ordered most negative total first, random
    ones (drawn from the rest of the layer group) ascending.
    """
    indices = _layer_indices(layout, layer)
    rows, _ = _shape2(lca)
    totals = np.zeros(indices.size)
    for start, stop in _blocks(rows, chunk_rows):
        totals += _read(lca, start, stop)[:, indices].sum(axis=0, dtype=np.float64)
    order = np.argsort(totals, kind="stable")
    helpful = indices[order[:n_helpful]]
    rest = indices[order[n_helpful:]]
    rng = np.random.default_rng(seed)
    random = np.sort(rng.choice(rest, size=min(n_random, rest.size), replace=False))
    chosen = np.concatenate([helpful, random])
    curves = np.zeros((rows, chosen.size))
    for start, stop in _blocks(rows, chunk_rows):
        curves[start:stop] = _read(lca, start, stop)[:, chosen]
    curves = np.cumsum(curves, axis=0)
    return {
        "helpful_indices": helpful,
        "random_indices": random,
        "helpful": curves[:, : helpful.size],
        "random": curves[:, helpful.size :],
    }


@dataclass
class Agreement(_Result):
    """How far a candidate LCA array is from a reference one of the same iterations."""

    sign_agreement: float  # share of entries with reference ≠ 0 whose signs agree
    helped: float  # mean % helped of the candidate (Helped.mean_helped)
    helped_reference: float
    helped_difference: float  # candidate − reference, percentage points
    layer_totals: np.ndarray  # (L,) Σ_t Σ_{i in layer} A of the candidate
    layer_totals_reference: np.ndarray
    layer_relative_difference: np.ndarray  # (L,) |candidate − reference| / |reference|
    max_layer_relative_difference: float


def agreement(
    candidate: RowSliceable,
    reference: RowSliceable,
    layer_index: np.ndarray,
    num_layers: int,
    chunk_rows: int = 64,
) -> Agreement:
    """Sign agreement, % helped and per-layer totals of ``candidate`` against ``reference``.

    The measures a researcher reads off an allocation, so a cheaper way to compute it can be
    judged by what it would change in the conclusions, not only by its conservation error.
    """
    _check_layers(num_layers)
    rows, K = _shape2(reference)
    if _shape2(candidate) != (rows, K):
        raise ValueError(f"shapes differ: {candidate.shape} vs {reference.shape}")
    reduce = _LayerReducer(layer_index, num_layers, K)
    agree = nonzero = 0
    totals = np.zeros((2, num_layers))
    helped = [_HelpedAcc(reduce, rows, K) for _ in range(2)]
    for start, stop in _blocks(rows, chunk_rows):
        cand, ref = _read(candidate, start, stop), _read(reference, start, stop)
        moved = ref != 0
        nonzero += int(moved.sum())
        agree += int((np.sign(cand[moved]) == np.sign(ref[moved])).sum())
        for k, block in enumerate((cand, ref)):
            totals[k] += reduce(block).sum(axis=0)
            helped[k].update(block, start)
    mean = [acc.result().mean_helped for acc in helped]
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.abs(totals[0] - totals[1]) / np.abs(totals[1])
    return Agreement(
        sign_agreement=agree / nonzero if nonzero else float("nan"),
        helped=mean[0],
        helped_reference=mean[1],
        helped_difference=mean[0] - mean[1],
        layer_totals=totals[0],
        layer_totals_reference=totals[1],
        layer_relative_difference=relative,
        max_layer_relative_difference=float(np.nanmax(relative)) if num_layers else float("nan"),
    )
