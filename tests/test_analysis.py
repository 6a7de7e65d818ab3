"""lca.analysis: known answers on hand-made arrays, streaming = in memory, bounded memory."""

import json
import math
import tracemalloc

import numpy as np
import pytest

from lca.analysis import (
    approximate_loss,
    distributions,
    helped_fractions,
    kernel_matrix,
    layer_series,
    layer_totals,
    local_minima,
    oscillations,
    parameter_curves,
    streaming,
    summary,
    synchronisation,
    top_moments,
    unit_series,
    value_histogram,
    value_moments,
)
from lca.analysis.series import _shifted
from lca.layout import ParameterEntry, ParameterLayout

CHUNKS = [1, 2, 3, 10_000]


def make_layout(*variables: tuple[str, tuple[int, ...], str]) -> ParameterLayout:
    entries, offset = [], 0
    for name, shape, layer in variables:
        size = int(np.prod(shape))
        entries.append(ParameterEntry(name, tuple(shape), offset, size, layer))
        offset += size
    return ParameterLayout(tuple(entries))


def random_lca(T: int, K: int, seed: int = 0, zero_fraction: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((T, K)).astype(np.float32)
    a[rng.random((T, K)) < zero_fraction] = 0
    return a


class NoFullRead:
    """A numpy array that refuses reads of more than ``max_rows`` rows (no ``a[:]``)."""

    def __init__(self, array: np.ndarray, max_rows: int) -> None:
        self.array, self.max_rows, self.shape = array, max_rows, array.shape

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.step is None
        start, stop, _ = key.indices(self.shape[0])
        assert stop - start <= self.max_rows, f"read {stop - start} rows at once"
        return self.array[key]


# --- percent helped ------------------------------------------------------------------------

HAND = np.array(
    [
        [-1.0, 2.0, 0.0, -3.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, -1.0, 0.0, 5.0],
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_helped_fractions_hand_made(chunk_rows):
    h = helped_fractions(NoFullRead(HAND, chunk_rows), np.array([0, 0, 0, 1, 1]), 2, chunk_rows)
    np.testing.assert_allclose(h.helped, [200 / 3, np.nan, 25])
    np.testing.assert_allclose(h.hurt, [100 / 3, np.nan, 75])
    np.testing.assert_allclose(h.zero, [40, 100, 20])
    np.testing.assert_allclose(h.helped_per_layer, [[50, 100], [np.nan, np.nan], [100 / 3, 0]])
    np.testing.assert_allclose(h.hurt_per_layer, [[50, 0], [np.nan, np.nan], [200 / 3, 100]])
    np.testing.assert_allclose(h.zero_per_layer, [[100 / 3, 50], [100, 100], [0, 50]])
    assert h.mean_helped == pytest.approx((200 / 3 + 25) / 2)  # the all-zero row is excluded
    np.testing.assert_allclose(h.mean_helped_per_layer, [(50 + 100 / 3) / 2, 50])
    np.testing.assert_allclose(h.fraction_of_iterations_helped, [1 / 3, 0, 1 / 3, 1 / 3, 0])
    d = h.to_dict()
    assert "fraction_of_iterations_helped" not in d and d["helped"][1] is None
    json.dumps(h.to_dict(include_per_parameter=True), allow_nan=False)


@pytest.mark.parametrize("path", ["direct", "interleaved", "bincount"])
def test_per_layer_grouping_paths_agree(path, monkeypatch):
    """Contiguous layers, layers split into several runs, and the per-row bincount fallback."""
    a = random_lca(17, 40, seed=1)
    rng = np.random.default_rng(2)
    if path == "direct":
        index = np.repeat([0, 1, 2], [10, 25, 5])
    elif path == "interleaved":
        index = np.repeat([0, 1, 0, 2, 1], [5, 10, 5, 5, 15])
    else:
        index = rng.integers(0, 3, size=40)
        monkeypatch.setattr(streaming._LayerReducer, "MAX_RUNS", 0)
    expected = np.stack([a[:, index == g].sum(axis=1, dtype=np.float64) for g in range(3)], 1)
    np.testing.assert_allclose(layer_series(a, index, 3, chunk_rows=4), expected, atol=1e-9)
    h = helped_fractions(a, index, 3, chunk_rows=4)
    for g in range(3):
        sub = a[:, index == g]
        neg, pos = (sub < 0).sum(1), (sub > 0).sum(1)
        np.testing.assert_allclose(h.helped_per_layer[:, g], 100 * neg / (neg + pos))
        np.testing.assert_allclose(h.zero_per_layer[:, g], 100 * (sub == 0).mean(1))


# --- values --------------------------------------------------------------------------------


def naive_moments(x: np.ndarray) -> tuple[float, float, float]:
    x = x.astype(np.float64)
    m, s = x.mean(), x.std()
    return m, s, ((x - m) ** 4).mean() / s**4 - 3


@pytest.mark.parametrize("chunk_rows", [3, 10_000])
def test_value_histogram_exact_when_sample_covers_everything(chunk_rows):
    a = random_lca(30, 41, seed=3)
    v = value_histogram(a, bins=7, clip=0.05, sample_size=10**6, chunk_rows=chunk_rows)
    nz = a[a != 0].astype(np.float64)
    low, high = np.quantile(nz, [0.05, 0.95])
    assert (v.low, v.high) == pytest.approx((low, high))
    assert v.sample_size == v.nonzero == nz.size and v.zero == a.size - nz.size
    neg, pos = nz[nz < 0], nz[nz > 0]
    np.testing.assert_array_equal(v.helped_counts, np.histogram(neg, 7, (low, high))[0])
    np.testing.assert_array_equal(v.hurt_counts, np.histogram(pos, 7, (low, high))[0])
    assert v.clipped == ((nz < low) | (nz > high)).sum() > 0
    assert v.helped_counts.sum() + v.hurt_counts.sum() + v.clipped == nz.size
    np.testing.assert_allclose(v.edges, np.linspace(low, high, 8))
    np.testing.assert_allclose([v.mean, v.std, v.excess_kurtosis], naive_moments(nz), rtol=1e-9)
    np.testing.assert_allclose(
        [v.mean_all, v.std_all, v.excess_kurtosis_all], naive_moments(a.ravel()), rtol=1e-9
    )
    json.dumps(v.to_dict(), allow_nan=False)


def test_kurtosis_tells_heavy_tails_from_gaussian():
    rng = np.random.default_rng(4)
    gauss = rng.standard_normal((200, 500)).astype(np.float32)
    laplace = rng.laplace(size=(200, 500)).astype(np.float32)
    assert abs(value_moments(gauss, chunk_rows=7)[0].excess_kurtosis) < 0.1
    assert value_moments(laplace, chunk_rows=7)[0].excess_kurtosis == pytest.approx(3, abs=0.3)


def test_moments_are_robust_to_a_large_offset():
    """Merged central moments, not raw power sums: no cancellation when |mean| ≫ std."""
    rng = np.random.default_rng(5)
    a = (1e4 + rng.standard_normal((50, 100))).astype(np.float32)
    nonzero, _ = value_moments(a, chunk_rows=3)
    np.testing.assert_allclose(
        [nonzero.mean, nonzero.std, nonzero.excess_kurtosis], naive_moments(a), rtol=1e-6
    )


def test_sampled_quantiles_are_close_and_sample_is_uniform():
    a = random_lca(400, 500, seed=6, zero_fraction=0.5)
    v = value_histogram(a, bins=10, sample_size=5000, seed=1, chunk_rows=32)
    nz = a[a != 0]
    low, high = np.quantile(nz, [0.01, 0.99])
    assert v.sample_size == 5000
    assert v.low == pytest.approx(low, abs=0.15) and v.high == pytest.approx(high, abs=0.15)
    assert v.clipped / nz.size == pytest.approx(0.02, abs=0.01)
    sampler = distributions._SampleAcc(5000, seed=2)
    for start in range(0, 400, 32):
        sampler.update(a[start : start + 32], start)
    s = sampler.sample()
    assert s.size == 5000 and (s != 0).all() and np.isin(s, nz).all()
    assert abs(s.mean()) < 0.05 and s.std() == pytest.approx(1, abs=0.05)
    # every row equally likely: value = row number, so the sample's mean row is ≈ (T − 1) / 2
    rows = np.repeat(np.arange(1, 401, dtype=np.float32)[:, None], 500, axis=1)
    sampler = distributions._SampleAcc(5000, seed=3)
    for start in range(0, 400, 32):
        sampler.update(rows[start : start + 32], start)
    picked = sampler.sample()
    assert picked.mean() == pytest.approx(200.5, abs=5)  # std of the mean ≈ 1.6
    assert np.histogram(picked, 4, (0.5, 400.5))[0] == pytest.approx([1250] * 4, abs=150)


def test_sample_of_fewer_values_than_wanted_is_all_of_them():
    a = random_lca(5, 9, seed=7)
    sampler = distributions._SampleAcc(1000, seed=0)
    sampler.update(a, 0)
    np.testing.assert_array_equal(np.sort(sampler.sample()), np.sort(a[a != 0]))


# --- layer sums ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_layer_totals_and_series_hand_made(chunk_rows):
    series = layer_series(HAND, np.array([0, 0, 0, 1, 1]), 2, chunk_rows)
    np.testing.assert_array_equal(series, [[1, -3], [0, 0], [1, 5]])
    assert series.dtype == np.float64
    np.testing.assert_array_equal(
        layer_totals(HAND, np.array([1, 1, 0, 0, 1]), 2, chunk_rows), [-4, 8]
    )


# --- oscillations --------------------------------------------------------------------------

THETA = np.array(
    [[0, 1, 0, 1, 0, 1, 0], [0, 1, 2, 2, 1, 1, 2], [0, 1, 2, 3, 2, 1, 0]], dtype=np.float32
).T  # (7, 3): T = 6 iterations
GRAD = np.array(
    [[1, -1, 1, -1, 1, -1, 1], [1, 0, -1, -1, 2, 2, 2], [1, 2, 3, 4, 5, 6, 7]], dtype=np.float32
).T


@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_oscillations_hand_made_across_blocks(chunk_rows):
    o = oscillations(
        NoFullRead(THETA, chunk_rows), NoFullRead(GRAD, chunk_rows), np.array([0, 0, 1]), 2,
        chunk_rows,
    )  # fmt: skip
    # d: (+-+-+-) 5 changes; (++0-0+) none, zero moves break a change; (+++---) one
    np.testing.assert_array_equal(o.direction_changes, [5, 0, 1])
    # g: 6 crossings; (1 0 -1 -1 2 2 2) only -1 → 2 crosses; never
    np.testing.assert_array_equal(o.gradient_crossings, [6, 1, 0])
    assert o.mean_direction_change_frequency == pytest.approx((1 + 0 + 0.2) / 3)
    assert o.iterations_per_direction_change == pytest.approx(2.5)
    assert o.mean_gradient_crossing_frequency == pytest.approx(7 / 18)
    assert o.iterations_per_gradient_crossing == pytest.approx(18 / 7)
    np.testing.assert_allclose(o.direction_change_frequency_per_layer, [0.5, 0.2])
    np.testing.assert_allclose(o.iterations_per_direction_change_per_layer, [2, 5])
    np.testing.assert_allclose(o.gradient_crossing_frequency_per_layer, [7 / 12, 0])
    np.testing.assert_allclose(o.iterations_per_gradient_crossing_per_layer, [12 / 7, np.inf])
    d = o.to_dict()
    assert d["iterations_per_gradient_crossing_per_layer"][1] is None
    json.dumps(d, allow_nan=False)


def test_oscillations_tiny_moves_do_not_underflow():
    theta = np.array([[0], [1e-30], [0], [1e-30]], dtype=np.float32)
    o = oscillations(theta, theta, np.zeros(1, int), 1, chunk_rows=2)
    assert o.direction_changes[0] == 2
    assert o.iterations_per_direction_change == pytest.approx(1.0)


def test_oscillations_match_naive_on_random_walks():
    rng = np.random.default_rng(8)
    theta = np.cumsum(rng.standard_normal((41, 30)), axis=0).astype(np.float32)
    theta[5:9, :10] = theta[4, :10]  # some parameters stand still for a while
    grad = rng.standard_normal((41, 30)).astype(np.float32)
    grad[rng.random(grad.shape) < 0.2] = 0
    d = np.diff(theta.astype(np.float64), axis=0)
    index = np.repeat([0, 1, 2], 10)
    for chunk_rows in (3, 10_000):
        o = oscillations(theta, grad, index, 3, chunk_rows)
        np.testing.assert_array_equal(o.direction_changes, (d[:-1] * d[1:] < 0).sum(0))
        np.testing.assert_array_equal(
            o.gradient_crossings, (grad[:-1].astype(float) * grad[1:] < 0).sum(0)
        )


# --- moments of learning and synchronisation -----------------------------------------------


def test_local_minima_and_top_moments():
    s = np.array([3, 1, 2, 0, 5, 5, 4, 4, 6, 2], dtype=float)[:, None]
    np.testing.assert_array_equal(np.flatnonzero(local_minima(s)), [1, 3])  # plateau: no
    np.testing.assert_array_equal(np.flatnonzero(top_moments(s, top=1)), [3])
    np.testing.assert_array_equal(np.flatnonzero(top_moments(s, top=5)), [1, 3])
    assert not local_minima(np.array([[1.0], [0.0]])).any()


def aligned_series(T: int, moments_per_layer: list[list[int]]) -> np.ndarray:
    s = np.zeros((T, len(moments_per_layer)))
    for g, ts in enumerate(moments_per_layer):
        s[ts, g] = -1.0 - np.arange(len(ts))  # distinct depths
    return s


def test_synchronisation_aligned_moments_beat_the_shift_baseline():
    times = [10, 20, 30, 40, 50]
    sync = synchronisation(aligned_series(60, [times] * 3), repeats=1000, seed=0)
    assert sync.count == 5 and sync.required_layers == 3
    np.testing.assert_array_equal(sync.iterations, times)
    # a repeat lines all 5 moments up only when the 3 layers draw the same shift (1/25)
    assert set(np.unique(sync.baseline_counts)) <= {0, 5}
    assert sync.baseline_mean == pytest.approx(5 / 25, abs=0.1)
    assert sync.p_value == pytest.approx(1 / 25, abs=0.02)
    json.dumps(sync.to_dict(), allow_nan=False)


def test_synchronisation_shift_drops_moments_at_the_edges():
    s = aligned_series(60, [[10, 20, 58]] * 2)
    later = synchronisation(s, shifts=(3,), repeats=7)  # 58 → 61 falls off: no wrap-around
    assert later.count == 3 and later.baseline_mean == 2 and later.baseline_std == 0
    assert later.p_value == pytest.approx(1 / 8)
    earlier = synchronisation(s, shifts=(-12,), repeats=7)  # 10 → −2 falls off
    assert earlier.baseline_mean == 2
    same = synchronisation(s, shifts=(0,), repeats=7)
    assert same.baseline_mean == 3 and same.p_value == 1.0
    np.testing.assert_array_equal(_shifted(np.array([1, 0, 0, 1]), 1), [0, 1, 0, 0])
    np.testing.assert_array_equal(_shifted(np.array([1, 0, 0, 1]), -1), [0, 0, 1, 0])


def test_synchronisation_min_fraction():
    s = aligned_series(40, [[10, 30], [10], [20], [20]])
    assert synchronisation(s, repeats=10).count == 0
    half = synchronisation(s, repeats=10, min_fraction=0.5)
    assert half.required_layers == 2 and half.count == 2
    np.testing.assert_array_equal(half.iterations, [10, 20])


# --- loss reconstruction -------------------------------------------------------------------


def test_approximate_loss():
    loss = np.array([1.0, 0.8, 0.5])
    out = approximate_loss(loss, np.array([0.01, -0.02]), np.zeros(2))
    np.testing.assert_array_equal(out["measured"], loss)
    np.testing.assert_allclose(out["rk4"], [1.0, 0.79, 0.51])
    np.testing.assert_allclose(out["first_order"], loss)


# --- views of one layer --------------------------------------------------------------------

LAYOUT = make_layout(
    ("dense/kernel", (3, 2), "dense"),
    ("dense/bias", (2,), "dense"),
    ("conv/kernel", (2, 3, 2, 4), "conv"),  # kh, kw, cin, cout
    ("conv/bias", (4,), "conv"),
    ("conv_bn/gamma", (4,), "conv"),
    ("conv_bn/beta", (4,), "conv"),
)


@pytest.mark.parametrize("chunk_rows", [1, 3, 10_000])
def test_unit_series_dense_and_conv_with_bias_and_bn(chunk_rows):
    T, K = 4, LAYOUT.total
    lca = (np.arange(K)[None, :] + 1000 * np.arange(T)[:, None]).astype(np.float32)
    dense = unit_series(lca, LAYOUT, "dense", chunk_rows)
    # kernel[i, j] sits at 2i + j; bias j at 6 + j
    np.testing.assert_array_equal(dense[0], [0 + 2 + 4 + 6, 1 + 3 + 5 + 7])
    np.testing.assert_array_equal(dense[:, 0], 12 + 4 * 1000 * np.arange(T))
    conv = unit_series(lca, LAYOUT, "conv", chunk_rows)
    for c in range(4):
        params = [8 + i for i in range(48) if i % 4 == c] + [56 + c, 60 + c, 64 + c]
        np.testing.assert_array_equal(conv[:, c], lca[:, params].sum(axis=1))
    np.testing.assert_array_equal(unit_series(lca, LAYOUT, 1, chunk_rows), conv)


def test_kernel_matrix_places_elements():
    values = np.arange(LAYOUT.total, dtype=np.float32)
    dense = kernel_matrix(values, LAYOUT, "dense")
    assert dense.shape == (2, 3)  # outputs down, inputs across
    assert dense[1, 2] == 5  # kernel[2, 1] at 2·2 + 1
    conv = kernel_matrix(values, LAYOUT, "conv")
    assert conv.shape == (4 * 2, 2 * 3)  # (cout·kh, cin·kw)
    i, j, c, o = 1, 2, 1, 3
    assert conv[o * 2 + i, c * 3 + j] == 8 + ((i * 3 + j) * 2 + c) * 4 + o
    kernel = values[8:56].reshape(2, 3, 2, 4)
    np.testing.assert_array_equal(conv[0:2, 3:6], kernel[:, :, 1, 0])  # block (o=0, c=1)
    assert not np.isin(values[56:], conv).any()  # bias and batch-norm left out


def test_parameter_curves_pick_the_most_helpful():
    T, K = 10, LAYOUT.total
    rng = np.random.default_rng(9)
    lca = (rng.standard_normal((T, K)) * 0.01).astype(np.float32)
    lca[:, 12] -= 1.0  # conv kernel parameters: global indices 8 … 55
    lca[:, 30] -= 0.5
    lca[:, 3] -= 5.0  # dense: must not be picked for the conv layer
    out = parameter_curves(lca, LAYOUT, "conv", n_helpful=2, n_random=5, seed=0, chunk_rows=3)
    np.testing.assert_array_equal(out["helpful_indices"], [12, 30])
    r = out["random_indices"]
    assert r.size == 5 and len(set(r)) == 5 and ((r >= 8) & (r < 68)).all()
    assert not np.isin(r, [12, 30]).any()
    np.testing.assert_allclose(
        out["helpful"], np.cumsum(lca[:, [12, 30]], 0, dtype=float), atol=1e-6
    )
    np.testing.assert_allclose(out["random"], np.cumsum(lca[:, r], 0, dtype=float), atol=1e-6)
    again = parameter_curves(lca, LAYOUT, "conv", n_helpful=2, n_random=5, seed=0, chunk_rows=100)
    np.testing.assert_array_equal(again["random_indices"], r)
    small = parameter_curves(lca, LAYOUT, "dense", n_helpful=50, n_random=50)
    assert small["helpful_indices"].size == 8 and small["random_indices"].size == 0


# --- streaming = in memory, numpy = zarr ---------------------------------------------------


@pytest.mark.parametrize(("chunk_rows", "work_elements"), [(3, 1 << 21), (3, 50), (10_000, 50)])
def test_streaming_equals_in_memory(chunk_rows, work_elements, monkeypatch):
    """Blocks of 3 rows, or pieces of one row (WORK_ELEMENTS < K), vs everything at once."""
    a = random_lca(37, 68, seed=10)
    index = LAYOUT.layer_index()
    theta = np.cumsum(a, axis=0)

    def measure(chunk_rows: int) -> tuple:
        return (
            helped_fractions(a, index, 2, chunk_rows).to_dict(include_per_parameter=True),
            layer_series(a, index, 2, chunk_rows),
            value_histogram(a, bins=13, sample_size=500, chunk_rows=chunk_rows).to_dict(),
            oscillations(theta, theta, index, 2, chunk_rows).to_dict(include_per_parameter=True),
            unit_series(a, LAYOUT, "conv", chunk_rows),
            parameter_curves(a, LAYOUT, "conv", 3, 3, chunk_rows=chunk_rows)["random"],
        )

    big = measure(10_000)  # one block, one piece: in memory
    monkeypatch.setattr(streaming, "WORK_ELEMENTS", work_elements)
    small = measure(chunk_rows)
    assert small[0] == big[0]
    np.testing.assert_allclose(small[1], big[1], rtol=1e-12)
    assert small[2]["helped_counts"] == big[2]["helped_counts"]  # same sample, same bins
    for key in ("mean", "std", "excess_kurtosis", "low", "high"):
        assert small[2][key] == pytest.approx(big[2][key], rel=1e-9)
    assert small[3] == big[3]
    np.testing.assert_allclose(small[4], big[4], rtol=1e-12)
    np.testing.assert_allclose(small[5], big[5], rtol=1e-12)
    # and the in-memory answers are the plain numpy ones
    np.testing.assert_allclose(
        big[1], np.stack([a[:, index == g].sum(1, dtype=float) for g in (0, 1)], 1), rtol=1e-9
    )
    assert big[0]["fraction_of_iterations_helped"] == pytest.approx((a < 0).mean(0).tolist())


def test_zarr_arrays_stream_like_numpy():
    zarr = pytest.importorskip("zarr")
    a = random_lca(20, 68, seed=11)
    z = zarr.create_array(store={}, shape=a.shape, chunks=(4, 68), dtype="float32")
    z[:] = a
    index = LAYOUT.layer_index()
    np.testing.assert_array_equal(layer_series(z, index, 2, 3), layer_series(a, index, 2, 3))
    assert helped_fractions(z, index, 2, 5).to_dict() == helped_fractions(a, index, 2, 7).to_dict()


# --- memory --------------------------------------------------------------------------------


class GeneratedRows:
    """A (T, K) float32 array that exists only row by row, generated on demand from a seed."""

    def __init__(self, T: int, K: int, seed: int = 0, max_rows: int = 64) -> None:
        self.shape, self.seed, self.max_rows = (T, K), seed, max_rows

    def row(self, t: int) -> np.ndarray:
        r = np.random.default_rng((self.seed, t)).standard_normal(self.shape[1], dtype=np.float32)
        r[np.abs(r) < 0.1] = 0  # ≈ 8 % zeros
        return r

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.shape[0])
        assert step == 1 and stop - start <= self.max_rows
        return np.stack([self.row(t) for t in range(start, stop)])


def test_memory_stays_bounded_on_an_array_that_is_not_in_memory():
    T, K = 5000, 20_000  # 400 MB of float32
    a = GeneratedRows(T, K)
    index = np.repeat(np.arange(4), [5000, 12000, 2500, 500]).astype(np.int32)
    tracemalloc.start()
    try:
        h = helped_fractions(a, index, 4)
        _, peak_helped = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        totals = layer_totals(a, index, 4)
        _, peak_totals = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_helped < 60 * 2**20 and peak_totals < 60 * 2**20, (peak_helped, peak_totals)
    zero = 100 * math.erf(0.1 / math.sqrt(2))
    assert h.mean_helped == pytest.approx(50, abs=0.1)
    assert h.zero.mean() == pytest.approx(zero, abs=0.1)
    assert h.fraction_of_iterations_helped.shape == (K,)
    # exact check of the totals on a few rows against a direct sum
    rows = [0, 1777, 4999]
    direct = np.stack(
        [[a.row(t)[index == g].sum(dtype=np.float64) for g in range(4)] for t in rows]
    )
    np.testing.assert_allclose(
        layer_series(NoFullRead(np.stack([a.row(t) for t in rows]), 64), index, 4), direct
    )
    assert np.isfinite(totals).all() and abs(totals.sum()) < 5 * math.sqrt(T * K)


# --- summary -------------------------------------------------------------------------------


class FakeRun:
    """What summary() needs of lca.storage.Run, over numpy arrays."""

    def __init__(self, layout: ParameterLayout, T: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        K = layout.total
        self.layout = layout
        self._lca = random_lca(T, K, seed)
        self.theta = np.cumsum(rng.standard_normal((T + 1, K)), axis=0).astype(np.float32)
        self._grad = rng.standard_normal((T + 1, K)).astype(np.float32)
        self._error = rng.standard_normal(T) * 1e-6
        steps = self._lca.sum(axis=1, dtype=np.float64) + self._error
        self._loss = 2.0 + np.concatenate([[0.0], np.cumsum(steps)])

    def lca(self, split="train"):
        return NoFullRead(self._lca, 64)

    def grad(self, split="train"):
        return NoFullRead(self._grad, 64)

    def loss(self, split="train"):
        return self._loss

    def error(self, split="train", first_order=False):
        return self._error


def test_summary_on_a_fake_run():
    run = FakeRun(LAYOUT, T=50)
    s = summary(run, chunk_rows=7)
    json.dumps(s, allow_nan=False)
    index = LAYOUT.layer_index()
    h = helped_fractions(run._lca, index, 2)
    assert s["percent_helped"] == pytest.approx(h.mean_helped)
    assert s["percent_helped_per_layer"]["conv"] == pytest.approx(h.mean_helped_per_layer[1])
    totals = layer_totals(run._lca, index, 2)
    assert s["layer_totals"] == pytest.approx({"dense": totals[0], "conv": totals[1]})
    assert s["lca_sum"] == pytest.approx(s["loss_change"], abs=1e-4)
    o = oscillations(run.theta, run._grad, index, 2)
    assert s["iterations_per_direction_change"] == pytest.approx(o.iterations_per_direction_change)
    assert s["synchronisation"]["min_fraction"] == 1.0  # ≤ 4 layer groups
    assert s["excess_kurtosis"] == pytest.approx(value_moments(run._lca)[0].excess_kurtosis)
    wide = make_layout(*[(f"l{i}/kernel", (2, 3), f"l{i}") for i in range(5)])
    assert summary(FakeRun(wide, T=30))["synchronisation"]["required_layers"] == 3


def test_summary_on_a_real_tiny_run(fresh_run):
    from lca.allocation import allocate
    from lca.storage import open_run

    run_dir = fresh_run("tiny_fc")
    allocate(run_dir, splits=["train"], progress=False)
    run = open_run(run_dir)
    s = summary(run)
    json.dumps(s, allow_nan=False)
    assert s["layers"] == run.layout.layers and s["iterations"] == run.num_iterations
    assert 0 < s["percent_helped"] < 100
    assert s["lca_sum"] == pytest.approx(s["loss_change"], rel=1e-3)
    assert sum(s["layer_totals"].values()) == pytest.approx(s["lca_sum"])
    assert s["loss_change"] < 0  # it learned
    assert s["iterations_per_gradient_crossing"] > 1


def test_agreement_of_two_allocations_known_answer():
    from lca.analysis import agreement

    reference = np.array([[-1.0, 2.0, 0.0, -3.0], [1.0, -1.0, -2.0, 4.0]])
    candidate = reference.copy()
    candidate[0, 1] = -0.5  # one sign flipped (a hurting parameter now helps)
    candidate[1, 2] = 0.0  # one helping entry now zero: no sign, disagrees
    candidate[0, 2] = 7.0  # reference zero: not counted in the sign agreement
    layers = np.array([0, 0, 1, 1])
    result = agreement(candidate, reference, layers, 2, chunk_rows=1)
    assert result.sign_agreement == pytest.approx(5 / 7)
    # % helped per row, over non-zero entries: reference 2/3 and 2/4; candidate 3/4 and 1/3
    assert result.helped_reference == pytest.approx(100 * (2 / 3 + 2 / 4) / 2)
    assert result.helped == pytest.approx(100 * (3 / 4 + 1 / 3) / 2)
    assert result.helped_difference == pytest.approx(result.helped - result.helped_reference)
    np.testing.assert_allclose(result.layer_totals_reference, [1.0, -1.0])
    np.testing.assert_allclose(result.layer_totals, [-1.5, 8.0])
    np.testing.assert_allclose(result.layer_relative_difference, [2.5, 9.0])
    assert result.max_layer_relative_difference == pytest.approx(9.0)
    same = agreement(reference, reference, layers, 2)
    assert same.sign_agreement == 1.0 and same.helped_difference == 0.0
    assert same.max_layer_relative_difference == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        agreement(reference[:1], reference, layers, 2)
