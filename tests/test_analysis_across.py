"""lca.analysis across runs and classes: the statistics of several seeds, per-class measures."""

import math

import numpy as np
import pytest

from lca import analysis
from lca.analysis import per_class
from lca.analysis.statistics import (
    across_runs,
    regularized_incomplete_beta,
    sign_test,
    t_two_sided_p,
)
from lca.layout import ParameterEntry, ParameterLayout

# --- statistics across runs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "df", "p", "tol"),
    [
        (2.262, 9, 0.05, 2e-4),  # the textbook table values
        (3.25, 9, 0.01, 2e-5),
        (2.262157, 9, 0.05, 1e-6),  # the same to more digits
        (3.249836, 9, 0.01, 1e-6),
        (0.0, 9, 1.0, 1e-12),
        (1.959964, 1e6, 0.05, 1e-6),  # large df → normal
    ],
)
def test_t_test_p_values(t, df, p, tol):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=tol)
    assert t_two_sided_p(-t, df) == t_two_sided_p(t, df)


def test_t_distribution_exact_forms():
    for t in (0.1, 1.0, 3.0, 30.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10)
        assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    for x in (0.0, 0.2, 0.7, 1.0):
        assert regularized_incomplete_beta(1, 1, x) == pytest.approx(x)
        assert regularized_incomplete_beta(3, 1, x) == pytest.approx(x**3)
        assert regularized_incomplete_beta(2.5, 4, x) == pytest.approx(
            1 - regularized_incomplete_beta(4, 2.5, 1 - x)
        )
    assert t_two_sided_p(math.inf, 5) == 0.0


def test_sign_test_and_across_runs():
    totals = np.array([[1.0, -1.0, 0.0], [2.0, 1.0, 0.0], [3.0, 0.5, 0.0], [4.0, -0.2, 0.0]])
    out = sign_test(totals)
    np.testing.assert_allclose(out["mean"], [2.5, 0.075, 0])
    np.testing.assert_allclose(out["std"], totals.std(axis=0, ddof=1))
    t0 = 2.5 / (np.std([1, 2, 3, 4], ddof=1) / 2)
    assert out["t"][0] == pytest.approx(t0) and out["t"][2] == 0
    assert out["p_value"][0] == pytest.approx(t_two_sided_p(t0, 3)) and out["p_value"][0] < 0.05
    assert out["p_value"][1] > 0.5 and out["p_value"][2] == 1.0
    np.testing.assert_allclose(out["fraction_positive"], [1, 0.5, 0])
    runs = across_runs([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}, {"a": 5.0}])
    assert runs["a"] == {"mean": 3.0, "std": 2.0, "n": 3}
    assert runs["b"]["mean"] == 3.0 and runs["b"]["std"] == pytest.approx(math.sqrt(2))


# --- per class -----------------------------------------------------------------------------


def test_class_specialisation_known_answer():
    # 3 classes x 4 units; negative totals help
    totals = np.array(
        [
            [-9.0, -1.0, -1.0, 2.0],
            [-1.0, -1.0, -1.0, 3.0],
            [0.0, -1.0, -8.0, 1.0],
        ]
    )
    result = per_class.class_specialisation(totals, threshold=0.8)
    assert result["units"] == 3  # the last unit has no helping at all
    np.testing.assert_allclose(result["shares"][1], [0.9, 1 / 3, 0.8])
    np.testing.assert_allclose(result["shares"][2], [1.0, 2 / 3, 0.9])
    assert result["fraction_over"][1] == pytest.approx(1 / 3)  # 0.8 is not over 0.8
    assert result["fraction_over"][2] == pytest.approx(2 / 3)
    assert result["fraction_over"][3] == pytest.approx(1.0)


def test_class_synchronisation_is_synchronisation_per_class():
    rng = np.random.default_rng(0)
    series = rng.normal(size=(60, 3, 2))
    result = per_class.class_synchronisation(series, top=5, repeats=50, seed=3)
    for c in range(3):
        alone = analysis.synchronisation(series[:, c, :], top=5, repeats=50, seed=3 + c)
        assert result["count"][c] == alone.count
        assert result["baseline_mean"][c] == pytest.approx(alone.baseline_mean)
    assert result["mean_count"] == pytest.approx(result["count"].mean())


def test_neuron_input_totals_picks_the_units_kernel_column():
    layout = ParameterLayout(
        (
            ParameterEntry("d/kernel", (3, 2), 0, 6, "d"),
            ParameterEntry("d/bias", (2,), 6, 2, "d"),
        )
    )
    lca = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)  # 4 iterations
    totals = per_class.neuron_input_totals(lca, layout, "d", unit=1, chunk_rows=3)
    # kernel[:, 1] sits at flat offsets 1, 3, 5 (C order); summed over the 4 rows
    np.testing.assert_allclose(totals, lca[:, [1, 3, 5]].sum(axis=0))
