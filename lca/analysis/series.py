"""Measurements over iterations: per-layer series and totals, oscillations, synchronisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .streaming import (
    RowSliceable,
    _check_layers,
    _LayerReducer,
    _Result,
    _row_groups,
    _shape2,
    _stream,
)


class _LayerSeriesAcc:
    def __init__(self, reducer: _LayerReducer, rows: int) -> None:
        self.reducer = reducer
        self.series = np.zeros((rows, reducer.L))

    def update(self, block: np.ndarray, start: int) -> None:
        self.series[start : start + block.shape[0]] = self.reducer(block)


def layer_series(
    lca: RowSliceable, layer_index: np.ndarray, num_layers: int, chunk_rows: int = 64
) -> np.ndarray:
    """(T, L) float64 per-iteration per-layer LCA: its cumsum is the cumulative layer LCA."""
    _check_layers(num_layers)
    rows, K = _shape2(lca)
    acc = _LayerSeriesAcc(_LayerReducer(layer_index, num_layers, K), rows)
    _stream(lca, chunk_rows, [acc])
    return acc.series


def layer_totals(
    lca: RowSliceable, layer_index: np.ndarray, num_layers: int, chunk_rows: int = 64
) -> np.ndarray:
    """(L,) float64 LCA summed over iterations and each layer: which layers hurt (§4)."""
    return layer_series(lca, layer_index, num_layers, chunk_rows).sum(axis=0)


@dataclass
class Oscillations(_Result):
    """How often weights reverse direction and full-set gradients cross zero (Table S2).

    Frequencies are per consecutive pair (T − 1 movement pairs, T gradient pairs); the
    "iterations per …" figures are their inverses (None in ``to_dict()`` when infinite).
    """

    direction_changes: np.ndarray  # (K,) int64
    gradient_crossings: np.ndarray  # (K,) int64
    mean_direction_change_frequency: float
    iterations_per_direction_change: float
    mean_gradient_crossing_frequency: float
    iterations_per_gradient_crossing: float
    direction_change_frequency_per_layer: np.ndarray  # (L,)
    iterations_per_direction_change_per_layer: np.ndarray  # (L,)
    gradient_crossing_frequency_per_layer: np.ndarray  # (L,)
    iterations_per_gradient_crossing_per_layer: np.ndarray  # (L,)

    _per_parameter = ("direction_changes", "gradient_crossings")


def _sign_changes(a: RowSliceable, chunk_rows: int, differences: bool) -> np.ndarray:
    """Per column, how often consecutive rows (or row differences) have opposite signs.

    Signs, not products: the product of two tiny float32 values can underflow to zero.
    The last row (and its sign) is carried into the next block, so blocks join seamlessly.
    """
    _, K = _shape2(a)
    counts = np.zeros(K, dtype=np.int64)
    last_row: np.ndarray | None = None
    last_sign: np.ndarray | None = None
    for _, block in _row_groups(a, chunk_rows):
        if differences:
            joined = block if last_row is None else np.concatenate([last_row[None], block])
            last_row = block[-1].copy()
            values = np.diff(joined, axis=0)
        else:
            values = block
        if values.shape[0] == 0:
            continue
        sign = np.sign(values).astype(np.int8)
        if last_sign is not None:
            sign = np.concatenate([last_sign[None], sign])
        counts += ((sign[:-1] * sign[1:]) < 0).sum(axis=0)
        last_sign = sign[-1].copy()
    return counts


def _inverse(x: np.ndarray | float) -> np.ndarray | float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.float64(1.0) / x


def oscillations(
    theta: RowSliceable,
    grad: RowSliceable,
    layer_index: np.ndarray,
    num_layers: int,
    chunk_rows: int = 64,
) -> Oscillations:
    """Direction changes of d_t = θ_t+1 − θ_t (d_t·d_t+1 < 0) and gradient zero crossings."""
    _check_layers(num_layers)
    steps, K = _shape2(theta)
    if tuple(grad.shape) != (steps, K):
        raise ValueError(f"grad shape {tuple(grad.shape)} != theta shape {(steps, K)}")
    T = steps - 1
    moves = _sign_changes(theta, chunk_rows, differences=True)
    crossings = _sign_changes(grad, chunk_rows, differences=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        move_freq = moves / (T - 1) if T > 1 else np.full(K, np.nan)
        grad_freq = crossings / T if T > 0 else np.full(K, np.nan)
        index = np.asarray(layer_index).astype(np.int64).reshape(-1)
        sizes = np.bincount(index, minlength=num_layers)
        move_l = np.bincount(index, weights=move_freq, minlength=num_layers) / sizes
        grad_l = np.bincount(index, weights=grad_freq, minlength=num_layers) / sizes
    move_mean = float(move_freq.mean()) if K else float("nan")
    grad_mean = float(grad_freq.mean()) if K else float("nan")
    return Oscillations(
        direction_changes=moves,
        gradient_crossings=crossings,
        mean_direction_change_frequency=move_mean,
        iterations_per_direction_change=float(_inverse(move_mean)),
        mean_gradient_crossing_frequency=grad_mean,
        iterations_per_gradient_crossing=float(_inverse(grad_mean)),
        direction_change_frequency_per_layer=move_l,
        iterations_per_direction_change_per_layer=_inverse(move_l),
        gradient_crossing_frequency_per_layer=grad_l,
        iterations_per_gradient_crossing_per_layer=_inverse(grad_l),
    )


def local_minima(series: np.ndarray) -> np.ndarray:
    """(T, L) bool: series[t] below both neighbours ("moment of learning"); never endpoints."""
    s = np.asarray(series, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"expected a (T, L) series, got shape {s.shape}")
    out = np.zeros(s.shape, dtype=bool)
    if s.shape[0] >= 3:
        out[1:-1] = (s[1:-1] < s[:-2]) & (s[1:-1] < s[2:])
    return out


def top_moments(series: np.ndarray, top: int = 20) -> np.ndarray:
    """(T, L) bool: per layer the ``top`` local minima with the most negative values."""
    s = np.asarray(series, dtype=np.float64)
    minima = local_minima(s)
    out = np.zeros(s.shape, dtype=bool)
    for layer in range(s.shape[1]):
        t = np.flatnonzero(minima[:, layer])
        chosen = t[np.argsort(s[t, layer], kind="stable")[:top]]
        out[chosen, layer] = True
    return out


@dataclass
class Synchronisation(_Result):
    """Iterations where (enough) layers learn at once, against a random-shift baseline."""

    count: int
    baseline_mean: float
    baseline_std: float  # over the repeats, ddof=0
    p_value: float  # (1 + #{baseline >= count}) / (1 + repeats)
    iterations: np.ndarray  # the synchronised iterations
    required_layers: int  # ceil(min_fraction · L)
    baseline_counts: np.ndarray  # (repeats,)


def _shifted(mask: np.ndarray, shift: int) -> np.ndarray:
    """mask moved ``shift`` rows later; moments pushed past either end are dropped (no wrap)."""
    out = np.zeros_like(mask)
    T = mask.shape[0]
    if shift >= 0:
        out[shift:] = mask[: max(T - shift, 0)]
    else:
        out[: T + shift] = mask[-shift:]
    return out


def synchronisation(
    series: np.ndarray,
    top: int = 20,
    shifts: Sequence[int] = (-2, -1, 0, 1, 2),
    repeats: int = 1000,
    seed: int = 0,
    min_fraction: float = 1.0,
) -> Synchronisation:
    """Count iterations with a top moment in >= ceil(min_fraction·L) layers; p-value by shifts.

    The baseline shifts each layer's moments independently by a random element of ``shifts``
    (``np.random.default_rng(seed)``), ``repeats`` times, and counts the same way.
    """
    moments = top_moments(series, top)
    T, L = moments.shape
    need = max(1, math.ceil(min_fraction * L - 1e-9))
    synced = np.flatnonzero(moments.sum(axis=1) >= need)
    count = int(synced.size)
    shifts = [int(s) for s in shifts]
    # shifted[j, l] = layer l's mask shifted by shifts[j]
    table = np.stack([_shifted(moments, s).T for s in shifts])  # (S, L, T) bool
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, len(shifts), size=(repeats, L))
    baseline = np.zeros(repeats, dtype=np.int64)
    layers = np.arange(L)
    for start in range(0, repeats, 128):
        pick = choice[start : start + 128]  # (r, L)
        per_t = table[pick, layers].sum(axis=1)  # (r, T)
        baseline[start : start + 128] = (per_t >= need).sum(axis=1)
    return Synchronisation(
        count=count,
        baseline_mean=float(baseline.mean()) if repeats else float("nan"),
        baseline_std=float(baseline.std()) if repeats else float("nan"),
        p_value=float((1 + (baseline >= count).sum()) / (1 + repeats)),
        iterations=synced,
        required_layers=need,
        baseline_counts=baseline,
    )


def approximate_loss(loss: np.ndarray, error: np.ndarray, error_fo: np.ndarray) -> dict:
    """Measured loss vs L_0 + cumulative Σ LCA (allocated rule, first order): conservation."""
    loss = np.asarray(loss, dtype=np.float64)
    step = np.diff(loss)

    def rebuilt(err: np.ndarray) -> np.ndarray:
        return loss[0] + np.concatenate([[0.0], np.cumsum(step - np.asarray(err, np.float64))])

    return {"measured": loss, "rk4": rebuilt(error), "first_order": rebuilt(error_fo)}
