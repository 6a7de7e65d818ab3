"""lca.analysis.causes: cause tables, windows, hurting shares, validation drivers, sums check."""

import numpy as np
import pytest

from lca import analysis
from lca.analysis.causes import (
    cause_bins,
    cause_names,
    cause_totals,
    hurting_shares,
    residual_summary,
    summarise_causes,
    sums_check,
    validation_drivers,
    window_edges,
)

TERMS = ["signal", "deviation", "momentum", "residual"]


def shares_and_steps(T=30, P=12, seed=0):
    """Per-parameter cause shares (T, terms, 2, P) whose sum is A = Δθ·ḡ, and a layer index."""
    rng = np.random.default_rng(seed)
    shares = rng.normal(size=(T, len(TERMS), 2, P))
    layer_of = np.repeat([0, 1, 2], P // 3)
    return shares, layer_of


def per_layer(x, layer_of, L=3):
    out = np.zeros((*x.shape[:-1], L))
    for layer in range(L):
        out[..., layer] = x[..., layer_of == layer].sum(axis=-1)
    return out


def test_exported_from_lca_analysis():
    for name in ("summarise_causes", "hurting_shares", "validation_drivers", "sums_check"):
        assert getattr(analysis, name) is globals()[name]


def test_names_are_term_part_in_stored_order():
    assert cause_names(["signal", "residual"]) == [
        "signal_first_order",
        "signal_curvature",
        "residual_first_order",
        "residual_curvature",
    ]


@pytest.mark.parametrize("chunk_rows", [1, 7, 1024])
def test_bins_and_totals_sum_the_rows(chunk_rows):
    causes = np.random.default_rng(1).normal(size=(23, 4, 2, 3))
    edges = [0, 5, 5, 17, 23]
    binned = cause_bins(causes, edges, chunk_rows)
    assert binned.shape == (4, 4, 2, 3)
    for b, (a, c) in enumerate(zip(edges[:-1], edges[1:])):
        np.testing.assert_allclose(binned[b], causes[a:c].sum(axis=0), atol=1e-12)
    assert np.all(binned[1] == 0)  # an empty window
    np.testing.assert_allclose(cause_totals(causes, chunk_rows=chunk_rows), causes.sum(0))
    np.testing.assert_allclose(cause_totals(causes, 3, 9, chunk_rows), causes[3:9].sum(0))


def test_bad_shapes_and_edges_are_one_line_errors():
    with pytest.raises(ValueError, match="T, n_terms, 2, K"):
        cause_totals(np.zeros((5, 4, 3, 2)))
    with pytest.raises(ValueError, match="edges"):
        cause_bins(np.zeros((5, 4, 2, 2)), [0, 9])
    with pytest.raises(ValueError, match="layer_lca"):
        sums_check(np.zeros((5, 4, 2, 2)), np.zeros((5, 3)))


def test_window_edges_cover_the_run():
    assert window_edges(40, 4).tolist() == [0, 10, 20, 30, 40]
    assert window_edges(3, 10).tolist() == [0, 1, 2, 3]
    assert window_edges(0, 4).tolist() == [0, 0]
    assert window_edges(10, 3).tolist() == [0, 3, 7, 10]


def test_sums_check_finds_the_worst_deviation():
    shares, layer_of = shares_and_steps()
    causes = per_layer(shares, layer_of)
    layer_lca = per_layer(shares.sum(axis=(1, 2)), layer_of)
    exact = sums_check(causes, layer_lca, chunk_rows=4)
    assert exact.max_deviation < 1e-12 and exact.scale == np.abs(layer_lca).max()
    layer_lca[17, 2] += 0.25
    off = sums_check(causes, layer_lca, chunk_rows=4)
    assert off.max_deviation == pytest.approx(0.25)
    assert (off.iteration, off.layer) == (17, 2)
    assert off.relative == pytest.approx(0.25 / off.scale)
    assert off.to_dict()["relative"] == pytest.approx(off.relative)


def test_hurting_shares_are_fractions_of_the_positive_lca():
    shares, layer_of = shares_and_steps(seed=2)
    lca = shares.sum(axis=(1, 2))  # A[t, i]
    hurt = per_layer(np.where((lca > 0)[:, None, None, :], shares, 0.0), layer_of)
    result = hurting_shares(hurt, TERMS, chunk_rows=5)
    positive = per_layer(np.where(lca > 0, lca, 0.0), layer_of).sum(axis=0)
    np.testing.assert_allclose(result.positive, positive)
    np.testing.assert_allclose(result.fractions.sum(axis=(0, 1)), 1.0)
    np.testing.assert_allclose(result.fractions, hurt.sum(0) / positive)
    np.testing.assert_allclose(result.overall.sum(), 1.0)
    np.testing.assert_allclose(result.overall, hurt.sum(axis=(0, 3)) / positive.sum())
    ranked = result.ranked()
    assert [f for _, f in ranked] == sorted((f for _, f in ranked), reverse=True)
    assert sorted(name for name, _ in ranked) == sorted(cause_names(TERMS))


def test_a_layer_that_never_hurt_has_no_fractions():
    hurt = np.zeros((4, len(TERMS), 2, 2))
    hurt[:, 0, 0, 0] = 1.0  # only signal first order, only layer 0
    result = hurting_shares(hurt, TERMS)
    assert result.fractions[0, 0, 0] == 1.0 and np.isnan(result.fractions[..., 1]).all()
    assert result.ranked()[0] == ("signal_first_order", 1.0)
    assert result.to_dict()["fractions"][0][1] is None  # NaN -> null in JSON
    assert np.isnan(hurting_shares(np.zeros((3, 4, 2, 2)), TERMS).overall).all()


def test_validation_drivers_sign_and_the_signal_share():
    T = 10
    val = np.zeros((T, len(TERMS), 2, 2))
    val[:, 0, 0, 0] = np.where(np.arange(T) < 3, 0.5, -1.0)  # signal first order: hurts 3 times
    val[:, 0, 1, 1] = 0.1  # signal curvature
    val[:, 1, 0, 1] = 0.2  # deviation: overfits
    val[:, 2, 1, 0] = -0.3  # momentum: generalises
    drivers = validation_drivers(val, TERMS, chunk_rows=4)
    assert drivers.signal_first_order == pytest.approx(3 * 0.5 - 7)
    assert drivers.signal_hurt_iterations == 3 and drivers.iterations == T
    np.testing.assert_allclose(drivers.totals, val.sum(axis=(0, 3)))
    np.testing.assert_allclose(drivers.per_layer, val.sum(axis=(0, 2)))
    assert drivers.verdicts() == ["generalisation", "overfitting", "generalisation", "none"]
    assert drivers.to_dict()["verdicts"][1] == "overfitting"


def test_a_term_within_rounding_of_zero_drives_nothing():
    """A full-batch run's deviation is zero up to float64 rounding: not "generalisation"."""
    val = np.zeros((4, len(TERMS), 2, 1))
    val[:, 0, 0, 0] = -2.5  # signal first order
    val[:, 1, 0, 0] = -1e-10  # deviation: 1.6e-11 of the signal's total, rounding
    val[:, 2, 0, 0] = 1e-6  # momentum: small, but a real contribution
    verdicts = validation_drivers(val, TERMS, chunk_rows=4).verdicts()
    assert verdicts == ["generalisation", "none", "overfitting", "none"]


def test_validation_drivers_without_a_signal_term():
    drivers = validation_drivers(np.ones((3, 2, 2, 1)), ["deviation", "residual"])
    assert drivers.signal_first_order is None and drivers.signal_hurt_iterations is None


def test_residual_summary():
    r = np.array([1e-7, 3e-5, np.inf, 2e-6, 1e-6])
    s = residual_summary(r)
    assert s == {"max": 3e-5, "max_iteration": 1, "median": 1.5e-6, "infinite": 1}
    assert residual_summary(np.array([]))["max"] is None


def test_summary_windows_bins_and_json():
    shares, layer_of = shares_and_steps(T=40, seed=3)
    causes = per_layer(shares, layer_of)
    lca = shares.sum(axis=(1, 2))
    hurt = per_layer(np.where((lca > 0)[:, None, None, :], shares, 0.0), layer_of)
    layer_lca = per_layer(lca, layer_of)
    s = summarise_causes(
        "train", causes, TERMS, ["a", "b", "c"], hurt=hurt, layer_lca=layer_lca,
        windows=4, bins=8, chunk_rows=6,
    )  # fmt: skip
    np.testing.assert_allclose(s.totals, causes.sum(0))
    np.testing.assert_allclose(s.layer_totals, layer_lca.sum(0))
    assert s.window_edges.tolist() == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(s.windows[2], causes[20:30].sum(0))
    assert s.bins.shape == (8, 4, 2, 3) and s.bin_edges.tolist() == list(range(0, 41, 5))
    np.testing.assert_allclose(s.bins.sum(0), s.totals)
    assert s.check.max_deviation < 1e-12
    # windows that are not bin edges are read from the array
    odd = summarise_causes("train", causes, TERMS, ["a", "b", "c"], windows=3, bins=8)
    np.testing.assert_allclose(odd.windows[1], causes[13:27].sum(0))
    d = s.to_dict()
    assert d["causes"][0] == "signal_first_order"
    assert d["totals"]["momentum_curvature"]["b"] == pytest.approx(causes[:, 2, 1, 1].sum())
    assert np.asarray(d["windows"]).shape == (4, 8)
    with pytest.raises(ValueError, match="names given"):
        summarise_causes("train", causes, TERMS[:3], ["a", "b", "c"])
