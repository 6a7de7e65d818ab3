"""The paper's measurements on LCA arrays: noise, heavy tails, oscillations, layers, synchrony.

Pure numpy, and streaming: a (T, K) input such as ``run.lca(split)`` (5000 × 1.4 M float32
is 28 GB) is only ever read in blocks of ``chunk_rows`` rows, never whole. Inputs are
"row-sliceable arrays": anything with ``.shape`` whose ``a[i:j]`` returns a numpy array
(numpy and zarr arrays both qualify). Results are small dataclasses (``to_dict()`` gives
plain JSON types, non-finite floats as ``None``) or dicts of numpy arrays.

Sign convention: A[t, i] < 0 means parameter i helped (lowered the loss) at iteration t,
A > 0 means it hurt, A == 0 means it had no effect.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np


class RowSliceable(Protocol):
    """What the streaming functions need: a shape and row slicing into numpy."""

    shape: tuple[int, ...]

    def __getitem__(self, key: slice) -> Any: ...


# --- plumbing ------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain Python types for json.dumps(allow_nan=False): NaN and ±inf become None."""
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


class _Result:
    """Mixin: ``to_dict()`` for the result dataclasses."""

    _per_parameter: tuple[str, ...] = ()  # (K,) fields, left out of to_dict() by default

    def to_dict(self, include_per_parameter: bool = False) -> dict[str, Any]:
        """JSON-friendly dict; per-parameter (K,) arrays only on request (they can be huge)."""
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if include_per_parameter or f.name not in self._per_parameter
        }


def _blocks(n: int, chunk_rows: int) -> Iterator[tuple[int, int]]:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    for start in range(0, n, chunk_rows):
        yield start, min(n, start + chunk_rows)


def _read(a: RowSliceable, start: int, stop: int) -> np.ndarray:
    block = np.asarray(a[start:stop])
    if block.ndim != 2 or block.shape[0] != stop - start:
        raise ValueError(f"expected a ({stop - start}, K) block, got shape {block.shape}")
    return block


def _shape2(a: RowSliceable) -> tuple[int, int]:
    shape = tuple(a.shape)
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D (rows, K) array, got shape {shape}")
    return int(shape[0]), int(shape[1])


WORK_ELEMENTS = 1 << 21  # elements per piece that is computed on (float64 temporaries: 16 MB)


def _row_groups(a: RowSliceable, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) pieces of ``a`` in order.

    Reads ``chunk_rows`` rows at a time (what suits the store), then hands them on in views
    of at most ``WORK_ELEMENTS`` elements (one row at least), so that the float64 and mask
    temporaries stay small even when a block of 64 rows of 1.4 M parameters is 358 MB.
    """
    rows, K = _shape2(a)
    step = max(1, WORK_ELEMENTS // max(K, 1))
    for start, stop in _blocks(rows, chunk_rows):
        block = _read(a, start, stop)
        for i in range(0, stop - start, step):
            yield start + i, block[i : i + step]


def _stream(a: RowSliceable, chunk_rows: int, accumulators: Sequence[Any]) -> None:
    """One pass over ``a``'s rows feeding every accumulator: one read serves many measures."""
    for start, block in _row_groups(a, chunk_rows):
        for acc in accumulators:
            acc.update(block, start)


class _LayerReducer:
    """Per-row, per-layer sums of a (b, K) block.

    Layouts keep a layer's parameters in a few contiguous runs, so the sums are one
    ``np.add.reduceat`` over those runs (plus a tiny runs → layers matmul when a layer has
    several runs); an arbitrary ``layer_index`` with many runs falls back to ``np.bincount``
    per row.
    """

    MAX_RUNS = 4096

    def __init__(self, layer_index: np.ndarray, num_layers: int, num_params: int) -> None:
        index = np.asarray(layer_index).astype(np.int64, copy=False).reshape(-1)
        if index.size != num_params:
            raise ValueError(f"layer_index has {index.size} entries, arrays have {num_params}")
        if index.size and (index.min() < 0 or index.max() >= num_layers):
            raise ValueError(f"layer_index values must lie in [0, {num_layers})")
        self.index = index
        self.L = int(num_layers)
        self.sizes = np.bincount(index, minlength=self.L).astype(np.int64)
        if index.size:
            self.starts = np.concatenate([[0], np.flatnonzero(np.diff(index)) + 1])
        else:
            self.starts = np.zeros(0, dtype=np.int64)
        self.run_layer = index[self.starts]
        self.direct = len(np.unique(self.run_layer)) == len(self.run_layer)
        if not self.direct and len(self.starts) <= self.MAX_RUNS:
            self.onehot = np.zeros((len(self.starts), self.L))
            self.onehot[np.arange(len(self.starts)), self.run_layer] = 1.0

    def __call__(self, block: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """(b, L) sums of ``block`` (values or a boolean mask) over each layer's parameters."""
        b = block.shape[0]
        out = np.zeros((b, self.L), dtype=dtype)
        if b == 0 or self.index.size == 0:
            return out
        if len(self.starts) > self.MAX_RUNS:
            for r in range(b):
                out[r] = np.bincount(self.index, weights=block[r], minlength=self.L)
            return out
        runs = np.add.reduceat(block, self.starts, axis=1, dtype=dtype)
        if self.direct:
            out[:, self.run_layer] = runs
        else:
            out[:] = (runs @ self.onehot).astype(dtype)  # integer counts stay exact in float64
        return out


def _check_layers(num_layers: int) -> None:
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")


# --- 1. percent helped (Fig 3a, 3c, 3d; Table 1) --------------------------------------------


@dataclass
class Helped(_Result):
    """Percent of parameters helping / hurting / doing nothing, per iteration and per layer.

    ``helped`` and ``hurt`` count only non-zero LCA (NaN for an iteration where every LCA is
    zero); ``zero`` is the share of all parameters.
    """

    helped: np.ndarray  # (T,) % of non-zero A with A < 0
    hurt: np.ndarray  # (T,) % of non-zero A with A > 0
    zero: np.ndarray  # (T,) % of all A with A == 0
    helped_per_layer: np.ndarray  # (T, L)
    hurt_per_layer: np.ndarray  # (T, L)
    zero_per_layer: np.ndarray  # (T, L) % of the layer's parameters
    mean_helped: float  # mean over iterations with a non-zero A
    mean_helped_per_layer: np.ndarray  # (L,)
    fraction_of_iterations_helped: np.ndarray  # (K,) count(A < 0) / T  (Fig 3d)

    _per_parameter = ("fraction_of_iterations_helped",)


class _HelpedAcc:
    def __init__(self, reducer: _LayerReducer, rows: int, num_params: int) -> None:
        self.reducer = reducer
        self.neg = np.zeros((rows, reducer.L), dtype=np.int64)
        self.pos = np.zeros((rows, reducer.L), dtype=np.int64)
        self.helped_count = np.zeros(num_params, dtype=np.int64)

    def update(self, block: np.ndarray, start: int) -> None:
        stop = start + block.shape[0]
        neg = block < 0
        self.neg[start:stop] = self.reducer(neg, np.int64)
        self.helped_count += neg.sum(axis=0)
        del neg
        self.pos[start:stop] = self.reducer(block > 0, np.int64)

    def result(self) -> Helped:
        rows = self.neg.shape[0]
        sizes = self.reducer.sizes
        per_param = self.helped_count / rows if rows else np.full(self.helped_count.shape, np.nan)
        neg, pos = self.neg.sum(axis=1), self.pos.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            helped = 100.0 * neg / (neg + pos)
            hurt = 100.0 * pos / (neg + pos)
            zero = 100.0 * (sizes.sum() - neg - pos) / sizes.sum()
            helped_l = 100.0 * self.neg / (self.neg + self.pos)
            hurt_l = 100.0 * self.pos / (self.neg + self.pos)
            zero_l = 100.0 * (sizes - self.neg - self.pos) / sizes
        return Helped(
            helped=helped,
            hurt=hurt,
            zero=zero,
            helped_per_layer=helped_l,
            hurt_per_layer=hurt_l,
            zero_per_layer=zero_l,
            mean_helped=_nanmean(helped),
            mean_helped_per_layer=np.array([_nanmean(c) for c in helped_l.T]),
            fraction_of_iterations_helped=per_param,
        )


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def helped_fractions(
    lca: RowSliceable, layer_index: np.ndarray, num_layers: int, chunk_rows: int = 64
) -> Helped:
    """How noisy learning is: the share of parameters that help at each iteration (§3)."""
    _check_layers(num_layers)
    rows, K = _shape2(lca)
    acc = _HelpedAcc(_LayerReducer(layer_index, num_layers, K), rows, K)
    _stream(lca, chunk_rows, [acc])
    return acc.result()


# --- 2. distribution of values (Fig 3b, S10) ----------------------------------------------


@dataclass
class Moments(_Result):
    """Exact streaming moments (population: std with ddof=0; Gaussian excess kurtosis = 0)."""

    count: int
    mean: float
    std: float
    excess_kurtosis: float


class _MomentsAcc:
    """Central moments merged block by block (Chan/Pébay), robust where raw power sums are not.

    Zeros add nothing to the non-zero moments; the all-values moments are the non-zero ones
    merged with a group of zeros, so one set of sums serves both.
    """

    def __init__(self) -> None:
        self.state = (0, 0.0, 0.0, 0.0, 0.0)  # n, mean, M2, M3, M4 of non-zero values
        self.zeros = 0

    @staticmethod
    def merge(a: tuple, b: tuple) -> tuple:
        na, ma, m2a, m3a, m4a = a
        nb, mb, m2b, m3b, m4b = b
        if na == 0:
            return b
        if nb == 0:
            return a
        n = na + nb
        d = mb - ma
        mean = ma + d * nb / n
        m2 = m2a + m2b + d * d * na * nb / n
        m3 = m3a + m3b + d**3 * na * nb * (na - nb) / n**2 + 3 * d * (na * m2b - nb * m2a) / n
        m4 = (
            m4a
            + m4b
            + d**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6 * d * d * (na * na * m2b + nb * nb * m2a) / n**2
            + 4 * d * (na * m3b - nb * m3a) / n
        )
        return (n, mean, m2, m3, m4)

    def update(self, block: np.ndarray, start: int) -> None:
        x = block[block != 0].astype(np.float64)
        self.zeros += block.size - x.size
        if x.size == 0:
            return
        mean = float(x.mean())
        x -= mean
        x2 = x * x
        stats = (x.size, mean, float(x2.sum()), float(np.dot(x2, x)), float(np.dot(x2, x2)))
        self.state = self.merge(self.state, stats)

    @staticmethod
    def moments(state: tuple) -> Moments:
        n, mean, m2, _, m4 = state
        if n == 0:
            return Moments(0, float("nan"), float("nan"), float("nan"))
        kurt = n * m4 / (m2 * m2) - 3.0 if m2 > 0 else float("nan")
        return Moments(int(n), float(mean), math.sqrt(m2 / n), float(kurt))

    def nonzero(self) -> Moments:
        return self.moments(self.state)

    def all(self) -> Moments:
        return self.moments(self.merge(self.state, (self.zeros, 0.0, 0.0, 0.0, 0.0)))


class _SampleAcc:
    """Uniform random sample without replacement of the non-zero values (bottom-k sampling).

    Every element gets an i.i.d. uniform key; the sample is the ``size`` non-zero values with
    the smallest keys. Only keys below the current k-th smallest (τ) can still enter, so per
    row we draw how many keys fall below τ (binomial), which elements they are, and their
    keys (uniform on [0, τ)): an exact simulation that touches ~size·rows/seen elements per
    row instead of all of them, with memory O(size + K).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = int(size)
        self.rng = np.random.default_rng(seed)
        self.keys = np.zeros(0)
        self.values = np.zeros(0)
        self.pending_keys: list[np.ndarray] = []
        self.pending_values: list[np.ndarray] = []
        self.pending = 0
        self.tau = 1.0

    def update(self, block: np.ndarray, start: int) -> None:
        if self.size <= 0:
            return
        K = block.shape[1]
        for row in block:
            m = int(self.rng.binomial(K, self.tau)) if self.tau < 1.0 else K
            if m == 0:
                continue
            pos = np.arange(K) if m == K else self.rng.choice(K, m, replace=False)
            values = row[pos]
            values = values[values != 0]
            keys = self.rng.random(values.size) * self.tau
            self.pending_keys.append(keys)
            self.pending_values.append(values.astype(np.float64))
            self.pending += values.size
            if self.pending >= max(self.size, K):
                self._prune()

    def _prune(self) -> None:
        keys = np.concatenate([self.keys, *self.pending_keys])
        values = np.concatenate([self.values, *self.pending_values])
        self.pending_keys, self.pending_values, self.pending = [], [], 0
        if keys.size > self.size:
            keep = np.argpartition(keys, self.size - 1)[: self.size]
            keys, values = keys[keep], values[keep]
        if keys.size == self.size:
            self.tau = float(keys.max())
        self.keys, self.values = keys, values

    def sample(self) -> np.ndarray:
        self._prune()
        return self.values


class _HistogramAcc:
    def __init__(self, low: float, high: float, bins: int) -> None:
        self.low, self.high, self.bins = low, high, bins
        self.helped = np.zeros(bins, dtype=np.int64)
        self.hurt = np.zeros(bins, dtype=np.int64)
        self.clipped = 0

    def update(self, block: np.ndarray, start: int) -> None:
        rng = (self.low, self.high)
        for values, counts in ((block[block < 0], self.helped), (block[block > 0], self.hurt)):
            h, _ = np.histogram(values, bins=self.bins, range=rng)
            counts += h
            self.clipped += values.size - int(h.sum())


@dataclass
class ValueHistogram(_Result):
    """Helping (A < 0) and hurting (A > 0) values on shared bins, 1 % tails cut (Fig 3b).

    ``low`` / ``high`` are the ``clip`` and ``1 − clip`` quantiles of the non-zero values,
    estimated from a uniform random sample of ``sample_size`` of them; the counts are exact.
    ``mean``/``std``/``excess_kurtosis`` are exact over all non-zero values, the ``*_all``
    ones over every value including zeros.
    """

    edges: np.ndarray  # (bins + 1,)
    helped_counts: np.ndarray  # (bins,) counts of A < 0
    hurt_counts: np.ndarray  # (bins,) counts of A > 0
    low: float
    high: float
    clipped: int  # non-zero values outside [low, high]
    nonzero: int
    zero: int
    sample_size: int  # size of the sample the quantiles came from
    mean: float
    std: float
    excess_kurtosis: float
    mean_all: float
    std_all: float
    excess_kurtosis_all: float


def value_moments(lca: RowSliceable, chunk_rows: int = 64) -> tuple[Moments, Moments]:
    """(non-zero values, all values) moments in one pass: is LCA heavy-tailed? (S10)."""
    acc = _MomentsAcc()
    _stream(lca, chunk_rows, [acc])
    return acc.nonzero(), acc.all()


def value_histogram(
    lca: RowSliceable,
    bins: int = 100,
    clip: float = 0.01,
    sample_size: int = 200_000,  # 2,000 values in each 1 % tail; about 15 MB at most
    seed: int = 0,
    chunk_rows: int = 64,
) -> ValueHistogram:
    """Two passes: (1) moments and a uniform sample for the tail quantiles, (2) exact counts."""
    if bins < 1 or not 0.0 <= clip < 0.5:
        raise ValueError(f"need bins >= 1 and 0 <= clip < 0.5, got {bins}, {clip}")
    moments, sampler = _MomentsAcc(), _SampleAcc(sample_size, seed)
    _stream(lca, chunk_rows, [moments, sampler])
    sample = sampler.sample()
    if sample.size:
        low, high = (float(q) for q in np.quantile(sample, [clip, 1.0 - clip]))
    else:
        low, high = 0.0, 0.0
    if high <= low:  # as np.histogram does for an empty range
        low, high = low - 0.5, high + 0.5
    hist = _HistogramAcc(low, high, bins)
    _stream(lca, chunk_rows, [hist])
    nz, everything = moments.nonzero(), moments.all()
    return ValueHistogram(
        edges=np.linspace(low, high, bins + 1),
        helped_counts=hist.helped,
        hurt_counts=hist.hurt,
        low=low,
        high=high,
        clipped=hist.clipped,
        nonzero=nz.count,
        zero=moments.zeros,
        sample_size=int(sample.size),
        mean=nz.mean,
        std=nz.std,
        excess_kurtosis=nz.excess_kurtosis,
        mean_all=everything.mean,
        std_all=everything.std,
        excess_kurtosis_all=everything.excess_kurtosis,
    )


# --- 3. per-layer sums (§4, Fig 4) --------------------------------------------------------


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


# --- 4. oscillations (Table S2, Fig S7) ---------------------------------------------------


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


# --- 5. moments of learning and synchronisation (§5, Fig 6, S15) --------------------------


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


# --- 6. loss reconstructed from LCA ---------------------------------------------------------


def approximate_loss(loss: np.ndarray, error: np.ndarray, error_fo: np.ndarray) -> dict:
    """Measured loss vs L_0 + cumulative Σ LCA (RK4/Simpson and first order): conservation."""
    loss = np.asarray(loss, dtype=np.float64)
    step = np.diff(loss)

    def rebuilt(err: np.ndarray) -> np.ndarray:
        return loss[0] + np.concatenate([[0.0], np.cumsum(step - np.asarray(err, np.float64))])

    return {"measured": loss, "rk4": rebuilt(error), "first_order": rebuilt(error_fo)}


# --- 7–9. views of one layer (Fig 2, S1, S2) ------------------------------------------------


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


# --- agreement of two allocations of the same run (cheaper rules, reduced precision) -------


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


# --- headline numbers of one run ------------------------------------------------------------


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
    return _jsonable(result)
