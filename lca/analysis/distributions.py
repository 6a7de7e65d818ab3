"""Distributions of LCA values: the fraction that helped, moments, samples, histograms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .streaming import (
    RowSliceable,
    _check_layers,
    _LayerReducer,
    _Result,
    _shape2,
    _stream,
)

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
