"""The quadrature rules and the adaptive step integrator, on functions with known integrals."""

import numpy as np
import pytest

from lca.quadrature import (
    FIRST_ORDER,
    SIMPSON,
    TRAPEZOID,
    integrate,
    integrate_step,
    refinement_levels,
    simpson_weights,
)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_simpson_weights_pattern_and_sum(n):
    w = simpson_weights(n) * 3 * n
    expected = [1] + [4, 2] * (n // 2 - 1) + [4, 1]
    np.testing.assert_array_equal(w, expected)
    assert simpson_weights(n).sum() == pytest.approx(1.0, abs=1e-15)


def test_simpson_rejects_odd_intervals():
    with pytest.raises(ValueError, match="multiple of 2"):
        simpson_weights(3)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_simpson_is_exact_on_cubics(n):
    rng = np.random.default_rng(0)
    coef = rng.normal(size=4)  # a + b s + c s^2 + d s^3 on [0, 1]
    s = np.linspace(0, 1, n + 1)
    values = coef[0] + coef[1] * s + coef[2] * s**2 + coef[3] * s**3
    exact = coef[0] + coef[1] / 2 + coef[2] / 3 + coef[3] / 4
    assert integrate(SIMPSON, values) == pytest.approx(exact, abs=1e-14)


def test_simpson_is_not_exact_on_quartics():
    s = np.linspace(0, 1, 3)
    assert abs(integrate(SIMPSON, s**4) - 0.2) > 1e-3


@pytest.mark.parametrize(("formula", "order"), [(SIMPSON, 4), (TRAPEZOID, 2), (FIRST_ORDER, 1)])
def test_composite_formulas_converge_at_their_order(formula, order):
    exact = np.e - 1.0  # ∫_0^1 e^s ds
    errors = []
    for n in (2, 4, 8, 16, 32):
        errors.append(abs(integrate(formula, np.exp(np.linspace(0, 1, n + 1))) - exact))
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(rates, order, atol=0.1)


class CountingGradient:
    """∇ of L(θ) = Σ_i c_i θ_i^p along θ(s) = θ0 + sΔ, counting evaluations and their nodes."""

    def __init__(self, theta0, delta, power, coef):
        self.theta0, self.delta, self.power, self.coef = theta0, delta, power, coef
        self.calls: list[float] = []

    def loss(self, s):
        return float(np.sum(self.coef * (self.theta0 + s * self.delta) ** self.power))

    def grad(self, s):
        return self.power * self.coef * (self.theta0 + s * self.delta) ** (self.power - 1)

    def __call__(self, s):
        self.calls.append(s)
        g = self.grad(s)
        return {"train": g, "val": 0.5 * g}


def _step(f, **kwargs):
    dl = f.loss(1.0) - f.loss(0.0)
    return integrate_step(
        f,
        f.delta,
        {"train": dl, "val": 0.5 * dl},
        {"train": f.grad(0.0), "val": 0.5 * f.grad(0.0)},
        {"train": f.grad(1.0), "val": 0.5 * f.grad(1.0)},
        **kwargs,
    )


def test_cubic_loss_is_conserved_by_one_simpson_step():
    rng = np.random.default_rng(1)
    f = CountingGradient(rng.normal(size=50), rng.normal(size=50), 4, rng.normal(size=50))
    result = _step(f)  # the gradient of a quartic is cubic: Simpson is exact
    assert result.intervals == 2
    assert f.calls == [0.5]  # the midpoint only; the endpoints were given
    assert abs(result.error["train"]) < 1e-5
    # first order is visibly worse on the same step
    assert abs(result.error_first_order["train"]) > 100 * abs(result.error["train"])
    # the stored float32 LCA sums to the loss change up to the reported error
    dl = f.loss(1.0) - f.loss(0.0)
    assert result.lca["train"].sum(dtype=np.float64) == pytest.approx(dl - result.error["train"])


def test_adaptive_rule_halves_only_while_needed_and_reuses_every_gradient():
    rng = np.random.default_rng(2)
    f = CountingGradient(
        rng.uniform(0.5, 1.5, 40), 0.5 * rng.uniform(0.5, 1.5, 40), 6, rng.uniform(0.5, 1.0, 40)
    )
    result = _step(f, threshold=1e-3, max_intervals=32)
    ns = [n for n, _ in result.history]
    assert ns == [2, 4, 8, 16]
    # composite Simpson: halving h divides the error by about 2**4
    train_errors = np.array([abs(e["train"]) for _, e in result.history])
    np.testing.assert_allclose(np.log2(train_errors[:-1] / train_errors[1:]), 4, atol=0.2)
    # every level but the last was above the threshold, the last is within it
    for _, errors in result.history[:-1]:
        assert max(abs(e) for e in errors.values()) > 1e-3
    assert max(abs(e) for e in result.error.values()) <= 1e-3
    assert result.intervals == ns[-1] > 2
    # each interior node evaluated exactly once: n - 1 new gradients in all
    assert len(f.calls) == len(set(f.calls)) == result.intervals - 1 == result.evaluations
    assert sorted(f.calls) == [k / result.intervals for k in range(1, result.intervals)]


def test_adaptive_rule_stops_at_max_intervals():
    rng = np.random.default_rng(3)
    f = CountingGradient(rng.uniform(1, 2, 10), rng.uniform(1, 2, 10), 30, np.ones(10))
    result = _step(f, threshold=1e-12, max_intervals=8)
    assert result.intervals == 8
    assert len(f.calls) == 7
    assert abs(result.error["train"]) > 1e-12  # still above: verify-error must flag it


def test_error_of_either_split_triggers_halving():
    rng = np.random.default_rng(4)
    theta0, delta = rng.uniform(0.5, 1, 20), rng.uniform(0.5, 1, 20)
    f = CountingGradient(theta0, delta, 8, np.ones(20))
    dl = f.loss(1.0) - f.loss(0.0)
    g0, g1 = f.grad(0.0), f.grad(1.0)
    # "val" is linear (exact at once), "train" is not: train alone drives the refinement
    result = integrate_step(
        lambda s: {"train": f(s)["train"], "val": g0},
        delta,
        {"train": dl, "val": float(g0 @ delta)},
        {"train": g0, "val": g0},
        {"train": g1, "val": g0},
        threshold=1e-6,
    )
    assert result.intervals > 2
    assert abs(result.error["val"]) < 1e-5 * abs(float(g0 @ delta))  # float32 rounding only


# --- the endpoint-first rule ("adaptive") ----------------------------------------------------


def test_rule_sequences():
    simpson = refinement_levels("simpson", 1e-3, 32)
    assert [(lv.intervals, lv.formula.name) for lv in simpson] == [
        (2, "simpson"),
        (4, "simpson"),
        (8, "simpson"),
        (16, "simpson"),
        (32, "simpson"),
    ]
    adaptive = refinement_levels("adaptive", 1e-3, 8, trapezoid_threshold=2e-4)
    assert [(lv.intervals, lv.formula.name, lv.threshold) for lv in adaptive] == [
        (1, "trapezoid", 2e-4),
        (2, "simpson", 1e-3),
        (4, "simpson", 1e-3),
        (8, "simpson", 1e-3),
    ]
    assert refinement_levels("adaptive", 1e-3, 8)[0].threshold == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="unknown rule 'rk45'"):
        refinement_levels("rk45")


def test_endpoint_first_is_exact_for_gradients_linear_along_the_step():
    rng = np.random.default_rng(5)
    # a quadratic loss: its gradient is linear in s, so the trapezoid on the ends is exact
    f = CountingGradient(rng.normal(size=30), rng.normal(size=30), 2, rng.normal(size=30))
    result = _step(f, rule="adaptive", threshold=1e-3, trapezoid_threshold=1e-6)
    assert (result.intervals, result.formula, result.evaluations, result.halvings) == (
        1,
        "trapezoid",
        0,
        0,
    )
    assert f.calls == []  # no new gradient at all: both ends are shared with the neighbours
    assert abs(result.error["train"]) < 1e-6 and result.converged
    expected = f.delta * (f.grad(0.0) + f.grad(1.0)) / 2
    np.testing.assert_allclose(result.lca["train"], expected, rtol=1e-6)


def _trapezoid_error(f):
    dl = f.loss(1.0) - f.loss(0.0)
    return dl - float(np.sum(f.delta * (f.grad(0.0) + f.grad(1.0)) / 2))


@pytest.mark.parametrize("margin", [0.9, 1.1])
def test_endpoint_first_refines_exactly_where_the_trapezoid_error_exceeds_its_threshold(margin):
    rng = np.random.default_rng(6)
    # a cubic loss: quadratic gradient, so the trapezoid errs and Simpson is exact
    f = CountingGradient(rng.uniform(0.5, 1, 25), rng.uniform(0.1, 0.3, 25), 3, np.ones(25))
    err = abs(_trapezoid_error(f))  # the larger of the two splits ("val" is half of "train")
    assert err > 1e-6
    result = _step(f, rule="adaptive", threshold=1.0, trapezoid_threshold=margin * err)
    if margin > 1:  # within the trapezoid's threshold: accepted with no new gradient
        assert [n for n, _ in result.history] == [1] and f.calls == []
        assert result.error["train"] == pytest.approx(_trapezoid_error(f), rel=1e-5, abs=1e-9)
    else:  # just above it: the midpoint, Simpson, exact for a cubic loss
        assert [n for n, _ in result.history] == [1, 2] and f.calls == [0.5]
        assert result.formula == "simpson" and abs(result.error["train"]) < 1e-5
        assert result.history[0][1]["train"] == pytest.approx(_trapezoid_error(f), rel=1e-5)


def test_endpoint_first_reuses_every_gradient_up_the_levels():
    rng = np.random.default_rng(2)
    f = CountingGradient(
        rng.uniform(0.5, 1.5, 40), 0.5 * rng.uniform(0.5, 1.5, 40), 6, rng.uniform(0.5, 1.0, 40)
    )
    result = _step(f, rule="adaptive", threshold=1e-3, max_intervals=32)
    ns = [n for n, _ in result.history]
    assert ns == [1, 2, 4, 8, 16]
    assert result.halvings == 4 and result.converged
    # each interior node evaluated exactly once, on the finest grid: n - 1 new gradients
    assert len(f.calls) == len(set(f.calls)) == result.intervals - 1 == result.evaluations
    assert sorted(f.calls) == [k / result.intervals for k in range(1, result.intervals)]
    # above the trapezoid level the result is the paper's rule, bit for bit
    g = CountingGradient(f.theta0, f.delta, f.power, f.coef)
    paper = _step(g, rule="simpson", threshold=1e-3, max_intervals=32)
    assert paper.intervals == result.intervals
    np.testing.assert_array_equal(paper.lca["train"], result.lca["train"])


class NoisyGradient(CountingGradient):
    """Gradients with a fixed relative rounding error per node, like bfloat16 arithmetic."""

    def __call__(self, s):
        g = super().__call__(s)["train"]
        noise = np.random.default_rng(int(s * 1e6)).normal(size=g.shape)
        g = g * (1 + 1e-2 * noise)
        return {"train": g, "val": 0.5 * g}


def test_a_rounding_floor_stops_refinement_early_when_asked():
    rng = np.random.default_rng(7)
    args = (rng.uniform(0.5, 1.5, 200), 0.3 * rng.uniform(0.5, 1.5, 200), 4, np.ones(200))
    stalled = _step(NoisyGradient(*args), rule="adaptive", threshold=1e-9, stop_when_stalled=True)
    assert stalled.stalled and not stalled.converged
    assert stalled.intervals < 32  # stopped once a halving no longer reduced the error
    plain = _step(NoisyGradient(*args), rule="adaptive", threshold=1e-9)
    assert plain.intervals == 32 and not plain.stalled and not plain.converged
