"""lca.allocation.causes: the terms add up to the step and their shares to the LCA, on numpy runs.

The trajectories are made here by numpy transcriptions of the optimisers (SGD exactly as
lca/training/loop.py writes it; Adam as Keras documents it), on a quadratic loss whose gradient and
path-mean gradient are known in closed form.
"""

import numpy as np
import pytest

from lca.allocation.causes import (
    CURVATURE,
    FIRST_ORDER,
    TERM_NAMES,
    AdamReplay,
    ParameterSettings,
    cause_shares,
    optimizer_kind,
    residual_ratio,
    sgd_block_terms,
    step_of,
)

EPS32 = float(np.finfo(np.float32).eps)
OFFSETS = np.array([0, 6, 9, 15])  # four variables: sizes 6, 3, 6, 5
P = 20
NEVER = np.iinfo(np.int64).max


def settings(lr=(0.1, 0.1, 0.05, 0.2), momentum=(0.9, 0.9, 0.5, 0.9), freeze=(NEVER,) * 4):
    return ParameterSettings.from_variables(
        np.array(lr), np.array(momentum), np.array(freeze), OFFSETS, P
    )


class Quadratic:
    """L(θ) = ½ Σ h (θ − c)²: ∇L is linear, so the path mean of a step is ∇L at its midpoint."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.h = rng.uniform(0.2, 2.0, P)
        self.c = rng.normal(size=P)

    def loss(self, theta):
        return 0.5 * float(np.sum(self.h * (np.asarray(theta, np.float64) - self.c) ** 2))

    def grad(self, theta):
        return self.h * (np.asarray(theta, np.float64) - self.c)


def sgd_trajectory(s, loss, steps, noise, seed=1):
    """training.py's update in float32: v ← active·(μ v − lr g); θ ← θ + v."""
    rng = np.random.default_rng(seed)
    theta = np.random.default_rng(seed + 1).normal(size=P).astype(np.float32)
    vel = np.zeros(P, np.float32)
    rows, batch = [theta.copy()], []
    for t in range(steps):
        g = (loss.grad(theta) + noise * rng.normal(size=P)).astype(np.float32)
        vel = s.active(t) * (s.momentum * vel - s.lr * g)
        theta = theta + vel
        rows.append(theta.copy())
        batch.append(g)
    return np.array(rows), np.array(batch)


def rounding_bound(theta0, theta1):
    """Half an ulp of θ per parameter (θ_{t+1} = θ_t + v in float32), as a norm, with margin."""
    return 4 * EPS32 * float(np.linalg.norm(np.abs(theta0) + np.abs(theta1)))


def test_shares_sum_to_the_lca_for_random_data():
    rng = np.random.default_rng(0)
    for kind, names in TERM_NAMES.items():
        terms = {name: rng.normal(size=P) * 10.0 ** rng.integers(-6, 0) for name in names}
        g0, gbar = rng.normal(size=P), rng.normal(size=P)
        shares = cause_shares(terms, g0, gbar)
        assert set(shares) == {(n, part) for n in names for part in (FIRST_ORDER, CURVATURE)}
        lca = step_of(terms) * gbar
        total = sum(share for share in shares.values())
        scale = sum(np.abs(share) for share in shares.values())
        assert np.all(np.abs(total - lca) <= 8 * np.finfo(float).eps * scale), kind
        for name in names:  # each term's two parts make its share of the path mean
            both = shares[(name, FIRST_ORDER)] + shares[(name, CURVATURE)]
            np.testing.assert_allclose(both, terms[name] * gbar, rtol=1e-12, atol=1e-300)


def test_optimizer_kind():
    assert optimizer_kind("sgd", np.zeros(3)) == "sgd_no_momentum"
    assert optimizer_kind("sgd", np.array([0, 0.9, 0])) == "sgd"
    assert optimizer_kind("adamw", weight_decay=0.0) == "adam"
    assert optimizer_kind("adamw", weight_decay=1e-4) == "adamw"
    with pytest.raises(ValueError):
        optimizer_kind("rmsprop")


def test_per_variable_settings_expand_onto_parameters():
    s = settings(lr=(1, 2, 3, 4), freeze=(NEVER, 3, NEVER, 0))
    assert s.lr.tolist() == [1] * 6 + [2] * 3 + [3] * 6 + [4] * 5
    assert s.active(2)[6:9].tolist() == [1, 1, 1] and s.active(3)[6:9].tolist() == [0, 0, 0]
    assert not s.active(0)[15:].any()


@pytest.mark.parametrize("replayed", [False, True], ids=["from_theta", "with_batch_grad"])
def test_sgd_terms_reproduce_the_trajectory(replayed):
    s, loss = settings(), Quadratic()
    theta, batch = sgd_trajectory(s, loss, 40, noise=0.3)
    first = 15  # a block in the middle: its momentum needs the row before it
    rows = theta[first : first + 11]
    grads = [loss.grad(row) for row in rows[:-1]]
    found = list(
        sgd_block_terms(
            rows, first, theta[first - 1], s, grads, batch[first : first + 10] if replayed else None
        )
    )
    assert [t for t, _ in found] == list(range(first, first + 10))
    for k, (t, terms) in enumerate(found):
        assert set(terms) == set(TERM_NAMES["sgd"])
        delta = rows[k + 1].astype(np.float64) - rows[k]
        np.testing.assert_allclose(step_of(terms), delta, rtol=0, atol=1e-15)
        bound = rounding_bound(rows[k], rows[k + 1]) if replayed else 1e-15
        assert np.linalg.norm(terms["residual"]) <= bound
        assert residual_ratio(terms) <= bound / np.linalg.norm(delta)
        # the gradient part is −lr g_B, the momentum μ v_{t−1}, to the rounding of θ
        gradient = terms["signal"] + terms["deviation"]
        np.testing.assert_allclose(gradient, -s.lr * batch[t], rtol=0, atol=1e-6)
        # on a quadratic the path mean is the midpoint gradient: shares sum to ΔL
        gbar = loss.grad((rows[k].astype(np.float64) + rows[k + 1]) / 2)
        shares = cause_shares(terms, grads[k], gbar)
        total = sum(float(v.sum()) for v in shares.values())
        assert total == pytest.approx(loss.loss(rows[k + 1]) - loss.loss(rows[k]), abs=1e-12)


def test_plain_full_batch_sgd_signal_always_helps():
    s, loss = settings(momentum=(0, 0, 0, 0)), Quadratic(3)
    theta, batch = sgd_trajectory(s, loss, 20, noise=0.0)
    grads = [loss.grad(row) for row in theta[:-1]]
    for t, terms in sgd_block_terms(theta, 0, None, s, grads):
        assert not terms["momentum"].any()  # exactly zero
        signal = cause_shares(terms, grads[t], grads[t])[("signal", FIRST_ORDER)]
        np.testing.assert_allclose(signal, -s.lr * grads[t] ** 2, rtol=1e-12)
        assert np.all(signal <= 0)
        # g_B = ∇L: nothing is left for the mini-batch but the rounding of g_B and θ_{t+1}
        rounding = EPS32 * (np.abs(theta[t]) + np.abs(theta[t + 1]) + 2 * s.lr * np.abs(grads[t]))
        assert np.all(np.abs(terms["deviation"]) <= rounding)


def test_frozen_layer_has_every_term_zero():
    s, loss = settings(freeze=(NEVER, 5, NEVER, 0)), Quadratic()
    theta, _ = sgd_trajectory(s, loss, 12, noise=0.3)
    grads = [loss.grad(row) for row in theta[:-1]]
    for t, terms in sgd_block_terms(theta, 0, None, s, grads):
        frozen = ~s.active(t).astype(bool)
        for name, value in terms.items():
            assert not value[frozen].any(), (t, name)
        if t < 5:  # variable 1 trains until iteration 5
            assert terms["signal"][6:9].all()
        shares = cause_shares(terms, grads[t], grads[t])
        assert not any(v[frozen].any() for v in shares.values())


def test_momentum_zero_on_one_layer():
    s, loss = settings(momentum=(0.9, 0.0, 0.5, 0.9)), Quadratic()
    theta, _ = sgd_trajectory(s, loss, 10, noise=0.3)
    grads = [loss.grad(row) for row in theta[:-1]]
    for t, terms in sgd_block_terms(theta, 0, None, s, grads):
        assert not terms["momentum"][6:9].any()
        if t > 0:
            assert terms["momentum"][:6].all() and terms["momentum"][9:].all()


def test_block_after_the_first_needs_the_previous_row():
    s = settings()
    with pytest.raises(ValueError, match="first > 0"):
        next(sgd_block_terms(np.zeros((3, P), np.float32), 4, None, s, [None, None]))


def keras_adam(theta, grads, lr, b1, b2, eps, wd, active):
    """Keras' documented Adam(W), written out independently, in float32.

    AdamW first shrinks θ by lr·wd·θ; then m = β₁m + (1−β₁)g, v = β₂v + (1−β₂)g²,
    θ ← θ − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε), with t counted from 1.
    """
    f = np.float32
    m = np.zeros(P, f)
    v = np.zeros(P, f)
    rows, ms = [theta.copy()], []
    for step, g in enumerate(grads, start=1):
        on = active(step - 1)
        theta = theta - on * f(lr * wd) * theta
        m = np.where(on > 0, f(b1) * m + f(1 - b1) * g, m)
        v = np.where(on > 0, f(b2) * v + f(1 - b2) * g * g, v)
        lr_t = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
        theta = theta - on * f(lr_t) * m / (np.sqrt(v) + f(eps))
        rows.append(theta.astype(f))
        ms.append(m)
    return np.array(rows), ms


@pytest.mark.parametrize("wd", [0.0, 0.01], ids=["adam", "adamw"])
def test_adam_replay_reproduces_an_independent_adam(wd):
    lr = 0.01
    s = settings(lr=(lr,) * 4, momentum=(0,) * 4, freeze=(NEVER, 7, NEVER, NEVER))
    rng = np.random.default_rng(5)
    loss = Quadratic(4)
    grads = (rng.normal(size=(30, P)) * rng.uniform(0.01, 3, P)).astype(np.float32)
    theta0 = rng.normal(size=P).astype(np.float32)
    rows, ms = keras_adam(theta0, grads, lr, 0.9, 0.999, 1e-7, wd, s.active)
    replay = AdamReplay(s, 0.9, 0.999, 1e-7, weight_decay=wd)
    names = TERM_NAMES[optimizer_kind("adamw", weight_decay=wd)]
    for t, g in enumerate(grads):
        train_grad = loss.grad(rows[t])
        terms = replay.step(t, rows[t], g, train_grad, rows[t + 1])
        assert set(terms) == set(names)
        bound = rounding_bound(rows[t], rows[t + 1])
        np.testing.assert_allclose(replay.theta_next, rows[t + 1], rtol=0, atol=bound)
        np.testing.assert_allclose(replay.m, ms[t], rtol=1e-5, atol=1e-7)
        assert np.linalg.norm(terms["residual"]) <= bound
        assert residual_ratio(terms) < 1e-3
        np.testing.assert_allclose(
            step_of(terms), rows[t + 1].astype(np.float64) - rows[t], rtol=0, atol=1e-15
        )
        frozen = ~s.active(t).astype(bool)
        assert not any(value[frozen].any() for value in terms.values())
        if wd:
            np.testing.assert_allclose(
                terms["weight_decay"], -s.active(t) * lr * wd * rows[t], rtol=1e-6
            )
        # the gradient's part and the history's make the Adam step −P m_t
        adam = terms["signal"] + terms["deviation"] + terms["history"]
        expected = rows[t + 1].astype(np.float64) - rows[t] - terms.get("weight_decay", 0.0)
        np.testing.assert_allclose(adam, expected, rtol=0, atol=bound)
        if t == 6:
            last_m, last_v = replay.m[6:9].copy(), replay.v[6:9].copy()
    # the frozen variable's slots stayed where iteration 6, its last, left them
    assert np.array_equal(replay.m[6:9], last_m) and np.array_equal(replay.v[6:9], last_v)


def test_adam_replay_without_recorded_rows_leaves_only_its_own_rounding():
    s = settings(momentum=(0,) * 4)
    rng = np.random.default_rng(2)
    replay = AdamReplay(s, 0.9, 0.99, 1e-7, weight_decay=0.1)
    theta = rng.normal(size=P).astype(np.float32)
    for t in range(5):
        g = rng.normal(size=P).astype(np.float32)
        terms = replay.step(t, theta, g, g)  # full batch: no deviation
        assert not terms["deviation"].any()
        assert np.linalg.norm(terms["residual"]) <= rounding_bound(theta, replay.theta_next)
        theta = replay.theta_next
