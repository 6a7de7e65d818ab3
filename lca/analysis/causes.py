"""Why parameters hurt: the LCA of each layer split by cause, over the run and over windows.

``lca allocate --causes`` splits every share A[t, i] = Δθ_i ḡ_i by the terms of the optimiser's
step (signal, mini-batch deviation, momentum or history, weight decay, replay residual) and by
part: ``first_order`` = u·∇L(θ_t) and ``curvature`` = u·(ḡ − ∇L(θ_t)). It stores, per split,

``cause_layer``  (T, n_terms, 2, L): the causes summed per layer (or per unit: (T, n_terms, 2, U));
``hurt_layer``   (T, n_terms, 2, L): the same sums over the entries with A[t, i] > 0 only.

Every function here takes such arrays (numpy or Zarr, streamed ``chunk_rows`` rows at a time)
and returns small numpy arrays or dataclasses (``to_dict()`` gives JSON types). Causes sum to
the layer LCA: [`sums_check`][lca.analysis.causes.sums_check] says by how much they do not. Sign
convention as everywhere:
negative LCA lowered the loss (helped), positive raised it (hurt). On the validation split a
negative term drives generalisation, a positive one overfitting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .streaming import RowSliceable, jsonable

PARTS = ("first_order", "curvature")
#: A cause's LCA within this fraction of the largest |value| beside it is rounding of a float64
#: sum (the causes add up to about 1e-9 of the layer LCA): zero, neither helping nor hurting.
NEGLIGIBLE = 1e-9
SIGNAL = "signal"


def cause_names(terms: Sequence[str], parts: Sequence[str] = PARTS) -> list[str]:
    """``<term>_<part>`` of every cause, in the stored (term, part) order (row-major)."""
    return [f"{term}_{part}" for term in terms for part in parts]


def _check_shape(causes: RowSliceable, name: str = "causes") -> tuple[int, int, int, int]:
    if len(causes.shape) != 4 or causes.shape[2] != len(PARTS):
        raise ValueError(f"{name} must be (T, n_terms, 2, K), got shape {tuple(causes.shape)}")
    return tuple(int(n) for n in causes.shape)  # type: ignore[return-value]


def cause_bins(causes: RowSliceable, edges: Sequence[int], chunk_rows: int = 1024) -> np.ndarray:
    """(len(edges) − 1, n_terms, 2, K) float64: the causes summed over iterations
    [edges[b], edges[b + 1]), reading ``chunk_rows`` rows at a time."""
    T, n_terms, n_parts, K = _check_shape(causes)
    edges = np.asarray(edges, np.int64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) < 0):
        raise ValueError("edges must be at least two non-decreasing iterations")
    if edges[0] < 0 or edges[-1] > T:
        raise ValueError(f"edges must lie in [0, {T}], got {edges[0]} … {edges[-1]}")
    out = np.zeros((edges.size - 1, n_terms, n_parts, K))
    first, last = int(edges[0]), int(edges[-1])
    for start in range(first, last, chunk_rows):
        stop = min(last, start + chunk_rows)
        block = np.asarray(causes[start:stop], np.float64)
        which = np.searchsorted(edges, np.arange(start, stop), side="right") - 1
        np.add.at(out, which, block)
    return out


def cause_totals(
    causes: RowSliceable, start: int = 0, stop: int | None = None, chunk_rows: int = 1024
) -> np.ndarray:
    """(n_terms, 2, K) float64: each cause's LCA over iterations [start, stop) (default all)."""
    T = _check_shape(causes)[0]
    return cause_bins(causes, [start, T if stop is None else stop], chunk_rows)[0]


def window_edges(num_iterations: int, windows: int) -> np.ndarray:
    """``windows + 1`` iteration boundaries cutting [0, T) into near-equal windows (fewer
    when T is smaller; empty windows dropped)."""
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if num_iterations <= 0:
        return np.zeros(2, np.int64)
    edges = np.linspace(0, num_iterations, min(windows, max(num_iterations, 1)) + 1)
    return np.unique(edges.round().astype(np.int64))


@dataclass(frozen=True)
class SumsCheck:
    """How far Σ over causes is from the layer LCA it splits (float64 rounding when exact)."""

    max_deviation: float  # max |Σ causes − layer LCA| over iterations and layers
    scale: float  # max |layer LCA|: what the deviation compares with
    iteration: int | None  # where the largest deviation is
    layer: int | None

    @property
    def relative(self) -> float:
        return self.max_deviation / self.scale if self.scale > 0 else 0.0

    def to_dict(self) -> dict:
        return jsonable({**self.__dict__, "relative": self.relative})


def sums_check(causes: RowSliceable, layer_lca: RowSliceable, chunk_rows: int = 1024) -> SumsCheck:
    """Compare Σ_(term, part) causes[t, :, :, l] with ``layer_lca[t, l]`` at every t and l."""
    T, _, _, K = _check_shape(causes)
    if tuple(layer_lca.shape) != (T, K):
        raise ValueError(f"layer_lca must be ({T}, {K}), got shape {tuple(layer_lca.shape)}")
    worst, scale, where = 0.0, 0.0, (None, None)
    for start in range(0, T, chunk_rows):
        block = np.asarray(causes[start : start + chunk_rows], np.float64)
        lca = np.asarray(layer_lca[start : start + chunk_rows], np.float64)
        deviation = np.abs(block.sum(axis=(1, 2)) - lca)
        scale = max(scale, float(np.abs(lca).max(initial=0.0)))
        if deviation.size and deviation.max() > worst:
            t, layer = np.unravel_index(int(np.argmax(deviation)), deviation.shape)
            worst, where = float(deviation[t, layer]), (start + int(t), int(layer))
    return SumsCheck(worst, scale, *where)


@dataclass(frozen=True)
class HurtingShares:
    """Of the positive LCA (entries that raised the loss), the part each cause accounts for.

    ``fractions[k, p, l]`` = Σ_t hurt[t, k, p, l] / Σ_t Σ_(k, p) hurt[t, k, p, l]: the causes
    of one layer sum to 1. A cause can exceed 1 or fall below 0: among the hurting entries
    one term may push up more than the whole while another pulls back.
    """

    terms: list[str]
    positive: np.ndarray  # (K,) positive LCA per layer (or unit)
    fractions: np.ndarray  # (n_terms, 2, K); NaN where a layer never hurt
    overall: np.ndarray  # (n_terms, 2): over every layer

    def ranked(self) -> list[tuple[str, float]]:
        """(cause, fraction of all positive LCA), largest first."""
        names = cause_names(self.terms)
        order = np.argsort(-self.overall.reshape(-1), kind="stable")
        return [(names[i], float(self.overall.reshape(-1)[i])) for i in order]

    def to_dict(self) -> dict:
        return jsonable(
            {
                "causes": cause_names(self.terms),
                "positive": self.positive,
                "fractions": self.fractions.reshape(-1, self.fractions.shape[-1]),
                "overall": self.overall.reshape(-1),
            }
        )


def hurting_shares(
    hurt: RowSliceable, terms: Sequence[str], chunk_rows: int = 1024
) -> HurtingShares:
    """Each cause's fraction of the positive LCA per layer, from the ``hurt_layer`` array."""
    if _check_shape(hurt, "hurt")[1] != len(terms):
        raise ValueError(f"hurt has {hurt.shape[1]} terms, names given for {len(terms)}")
    totals = cause_totals(hurt, chunk_rows=chunk_rows)
    positive = totals.sum(axis=(0, 1))
    everything = float(positive.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(positive > 0, totals / positive, np.nan)
        overall = totals.sum(axis=2) / (everything if everything > 0 else np.nan)
    return HurtingShares(list(terms), positive, fractions, overall)


@dataclass(frozen=True)
class ValidationDrivers:
    """Which update terms lowered the validation loss (generalisation) or raised it
    (overfitting), summed over layers and over the run.

    ``signal_first_order`` is −lr ∇L_train(θ_t)·∇L_val(θ_t) summed (through the optimiser's
    preconditioner for Adam): following the training gradient hurts validation where the two
    gradients disagree; ``signal_hurt_iterations`` counts the iterations where it did.
    """

    terms: list[str]
    totals: np.ndarray  # (n_terms, 2) validation LCA per term and part, all layers
    per_layer: np.ndarray  # (n_terms, L) validation LCA per term (both parts)
    signal_first_order: float | None
    signal_hurt_iterations: int | None
    iterations: int

    @property
    def term_totals(self) -> np.ndarray:
        return self.totals.sum(axis=1)

    def verdicts(self) -> list[str]:
        """Per term: "generalisation" (negative), "overfitting" (positive) or "none" (zero,
        or within `NEGLIGIBLE` of the largest total or part: rounding, as a full-batch run's
        mini-batch deviation)."""
        totals = np.asarray(self.totals, dtype=np.float64)
        finite = np.abs(np.concatenate([totals.ravel(), self.term_totals]))
        finite = finite[np.isfinite(finite)]
        zero = NEGLIGIBLE * (finite.max() if finite.size else 0.0)
        return [
            "none" if abs(v) <= zero else "generalisation" if v < 0 else "overfitting"
            for v in self.term_totals
        ]

    def to_dict(self) -> dict:
        return jsonable(
            {
                "terms": self.terms,
                "parts": list(PARTS),
                "totals": self.totals,
                "term_totals": self.term_totals,
                "per_layer": self.per_layer,
                "verdicts": self.verdicts(),
                "signal_first_order": self.signal_first_order,
                "signal_hurt_iterations": self.signal_hurt_iterations,
                "iterations": self.iterations,
            }
        )


def validation_drivers(
    val_causes: RowSliceable, terms: Sequence[str], chunk_rows: int = 1024
) -> ValidationDrivers:
    """Sum the validation split's causes per term; the signal's first-order share and how
    often it hurt validation (needs the per-iteration array, read once)."""
    T, n_terms, _, K = _check_shape(val_causes, "val_causes")
    if n_terms != len(terms):
        raise ValueError(f"val_causes has {n_terms} terms, names given for {len(terms)}")
    totals = np.zeros((n_terms, len(PARTS), K))
    signal = list(terms).index(SIGNAL) if SIGNAL in terms else None
    signal_series = np.zeros(T)
    for start in range(0, T, chunk_rows):
        block = np.asarray(val_causes[start : start + chunk_rows], np.float64)
        totals += block.sum(axis=0)
        if signal is not None:
            signal_series[start : start + len(block)] = block[:, signal, 0, :].sum(axis=1)
    return ValidationDrivers(
        terms=list(terms),
        totals=totals.sum(axis=2),
        per_layer=totals.sum(axis=1),
        signal_first_order=None if signal is None else float(signal_series.sum()),
        signal_hurt_iterations=None if signal is None else int(np.sum(signal_series > 0)),
        iterations=T,
    )


def residual_summary(replay_residual: np.ndarray) -> dict:
    """Max (and where) and median of the per-iteration replay residual ‖r‖/‖Δθ‖ (finite values;
    ``infinite`` counts the steps with a residual but no movement)."""
    values = np.asarray(replay_residual, np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"max": None, "max_iteration": None, "median": None, "infinite": int(values.size)}
    at = int(np.flatnonzero(values == finite.max())[0])
    return {
        "max": float(finite.max()),
        "max_iteration": at,
        "median": float(np.median(finite)),
        "infinite": int(np.sum(np.isinf(values))),
    }


@dataclass(frozen=True)
class CauseSummary:
    """One split's causes: totals over the run and per window, per-bin series for a stacked
    figure over iterations, the hurting breakdown and the check that the causes add up."""

    split: str
    terms: list[str]
    layers: list[str]
    totals: np.ndarray  # (n_terms, 2, L) over the run
    window_edges: np.ndarray  # (W + 1,) iterations
    windows: np.ndarray  # (W, n_terms, 2, L)
    bin_edges: np.ndarray  # (B + 1,)
    bins: np.ndarray  # (B, n_terms, 2, L)
    hurting: HurtingShares | None
    check: SumsCheck | None

    @property
    def causes(self) -> list[str]:
        return cause_names(self.terms)

    @property
    def layer_totals(self) -> np.ndarray:
        """(L,) Σ over causes: the layer's LCA over the run (as far as the causes add up)."""
        return self.totals.sum(axis=(0, 1))

    def to_dict(self) -> dict:
        flat = self.totals.reshape(-1, self.totals.shape[-1])
        return jsonable(
            {
                "split": self.split,
                "terms": self.terms,
                "parts": list(PARTS),
                "causes": self.causes,
                "layers": self.layers,
                "totals": {c: dict(zip(self.layers, row)) for c, row in zip(self.causes, flat)},
                "window_edges": self.window_edges,
                "windows": self.windows.sum(axis=3).reshape(len(self.windows), -1),
                "hurting": None if self.hurting is None else self.hurting.to_dict(),
                "sums_check": None if self.check is None else self.check.to_dict(),
            }
        )


def summarise_causes(
    split: str,
    causes: RowSliceable,
    terms: Sequence[str],
    layers: Sequence[str],
    *,
    hurt: RowSliceable | None = None,
    layer_lca: RowSliceable | None = None,
    windows: int = 4,
    bins: int = 40,
    chunk_rows: int = 1024,
) -> CauseSummary:
    """Everything a report says about one split's causes, from its stored arrays."""
    T, n_terms, _, n_layers = _check_shape(causes)
    if n_terms != len(terms) or n_layers != len(layers):
        raise ValueError(
            f"causes are ({n_terms} terms, {n_layers} layers), names given for "
            f"({len(terms)}, {len(layers)})"
        )
    w_edges = window_edges(T, windows)
    b_edges = window_edges(T, bins)
    binned = cause_bins(causes, b_edges, chunk_rows)
    # windows from the bins when their edges are bin edges, else from the array
    if np.all(np.isin(w_edges, b_edges)):
        at = np.searchsorted(b_edges, w_edges)
        per_window = np.stack([binned[a:b].sum(axis=0) for a, b in zip(at[:-1], at[1:])])
    else:
        per_window = cause_bins(causes, w_edges, chunk_rows)
    return CauseSummary(
        split=split,
        terms=list(terms),
        layers=list(layers),
        totals=binned.sum(axis=0),
        window_edges=w_edges,
        windows=per_window,
        bin_edges=b_edges,
        bins=binned,
        hurting=None if hurt is None else hurting_shares(hurt, terms, chunk_rows),
        check=None if layer_lca is None else sums_check(causes, layer_lca, chunk_rows),
    )
