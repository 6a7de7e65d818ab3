"""An independent float64 check of a run's stored cause split (``lca allocate --causes``).

A test recomputes each iteration's step terms u_k (P,) in float64 from the optimiser's documented
update rule (:func:`independent_terms`), the recorded θ_t and mini-batch and its own whole-split
gradients; :class:`CauseCheck` then sums u_k·∇L(θ_t) (first order) and u_k·(ḡ − ∇L(θ_t))
(curvature, ḡ by the rule and sub-intervals the store says were used) per layer, per unit and
over the entries with A[t, i] > 0, with ``np.bincount`` on the layout's indices, and compares
every term and both parts with ``<split>/causes/layer``, ``unit/<layer>`` and ``hurt_layer``.
Nothing here calls the library's cause code (``lca.allocation.causes``, ``cause_sums``).

The bound is derived from where the two computations differ, per entry i of a sum:

* the library's gradients are float32 (TensorFlow's or torch's, summed over hundreds to
  thousands of examples) and its θ rows are float32: each factor of a share u_k,i·w_i carries
  an error of a few eps32 (log₂N ≈ 11 for N = 2,000) against the sum of the magnitudes that
  made it, so a sum over a set S of entries differs by ≤ ρ·Σ_k Σ_{i∈S} |u_k,i|·(|∇_iL| + |ḡ_i|);
  the curvature's weight ḡ − ∇L is a difference of two such gradients, so its error is counted
  against |∇L| + |ḡ|, not against the small difference;
* SGD's gradient part is taken from the recorded step (Δθ − μΔθ_{t−1}) and θ_{t+1} = θ_t + v
  rounds to half an ulp of θ: each term's u_k,i moves by up to eps32·(|θ_t,i| + |θ_{t+1},i|);
* Adam divides by √v + ε: where g_B is small (at t = 0 the step is −lr·g/|g_B|) the relative
  rounding of g_B becomes that of u; and at a ReLU's kink float32 and float64 may send one
  example to different sides at a node, moving that example's share of one unit's gradient.
  Both concentrate on single entries, so a unit's sum is held to its layer's bound.

Hence, per layer (and for each of its units) the bound
    RHO · Σ_k Σ_{i∈layer} (|u_k,i| + eps32 (|θ_t,i| + |θ_{t+1},i|)) · (|∇_iL| + |ḡ_i|)
(over the hurting entries only for ``hurt_layer``), with RHO = 2⁻¹³ = 1024 eps32. Measured on
the tests' runs (tiny FC with Keras; FC, LeNet with dropout and torch.optim runs with torch),
the worst error is 0.15 of the bound (torch Adam's curvature at t = 1, a ReLU kink; the dropout
LeNet's 0.14): RHO leaves a factor of six; SGD's worst is 0.013.

A share given to the wrong term or part moves a sum by the difference of two terms' (or parts')
sums: :meth:`CauseCheck.finish` asserts that for every two terms this is ≥ SEPARATION bounds
somewhere in the run (measured: ≥ 16, mostly thousands), unless both terms stay within
SEPARATION bounds of zero throughout (a small weight decay's curvature beside the residual:
no float32 computation can tell those apart, and swapping them changes no sum beyond rounding).
"""

from __future__ import annotations

import itertools

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
RHO = 2.0**-13  # the bound's multiple of the shares' magnitudes (see above)
SEPARATION = 10.0  # a swap of two terms must move some sum by this many bounds


def path_mean(gradient, theta0: np.ndarray, theta1: np.ndarray, n: int, start: np.ndarray):
    """ḡ of the step θ0 → θ1 with n sub-intervals: n = 1 the trapezoid on the endpoints (the
    adaptive rule's first level), else composite Simpson, on the float32 points the allocation
    evaluated (θ0 + k/n·Δθ in float64, stored as float32); ``start`` is ∇L(θ0)."""
    if n == 1:
        weights = np.array([0.5, 0.5])
    else:
        assert n % 2 == 0, n
        weights = np.ones(n + 1)
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        weights /= 3.0 * n
    total = weights[0] * start
    for k in range(1, n + 1):
        point = (theta0 + k / n * (theta1 - theta0)).astype(np.float32).astype(np.float64)
        total = total + weights[k] * gradient(point)
    return total


def independent_terms(kind: str, opt, t: int, theta, g_b, g_train, state: dict, active=1.0):
    """The float64 terms of iteration t from the documented update rules (``state`` carried
    between iterations; ``active`` 0 where a layer is frozen).

    ``kind``: ``sgd``/``plain_sgd``/``adam``/``adamw`` (``lca train``: ``opt`` its optimizer
    config) or ``torch_sgd``/``torch_adam``/``torch_adamw`` (torch.optim: ``opt`` the group).
    """
    if kind in ("sgd", "plain_sgd"):  # lca train: v = active·(μ v − lr g_B); θ += v
        terms = {
            "signal": -active * opt.lr * g_train,
            "deviation": -active * opt.lr * (g_b - g_train),
        }
        if kind == "sgd":
            terms["momentum"] = active * opt.momentum * state.get("v", 0.0)
        state["v"] = sum(terms.values())
        return terms
    if kind.startswith("torch_sgd"):  # torch: b = μ b + (1−d) G (b₀ = G); G = g + wd θ
        mu, d, wd, lr = opt["momentum"], opt["dampening"], opt["weight_decay"], opt["lr"]
        damp = 1.0 if "b" not in state else 1.0 - d
        c = lr * (1 + mu) if opt["nesterov"] else lr * damp  # the step is −c G − (carry)
        carry = lr * mu * mu if opt["nesterov"] else lr * mu
        terms = {
            "signal": -c * g_train,
            "deviation": -c * (g_b - g_train),
            "momentum": -carry * state.get("b", 0.0),
            "weight_decay": -c * wd * theta,
        }
        state["b"] = mu * state.get("b", 0.0) + damp * (g_b + wd * theta)
        return terms
    # Adam: m = β₁m + (1−β₁)G, v = β₂v + (1−β₂)G², step −lr/(1−β₁ᵗ) m / (√v/√(1−β₂ᵗ) + ε)
    if kind.startswith("torch"):
        lr, (b1, b2), eps, wd = opt["lr"], opt["betas"], opt["eps"], opt["weight_decay"]
        coupled = 0.0 if kind == "torch_adamw" else wd
    else:  # lca train: Keras' ε inside the bias-corrected denominator, decoupled decay
        lr, b1, b2, eps = opt.lr, opt.beta_1, opt.beta_2, opt.epsilon
        wd, coupled = (opt.weight_decay if kind == "adamw" else 0.0), 0.0
    n, m = t + 1, state.get("m", 0.0)
    gradient = g_b + coupled * theta
    v = state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * gradient**2
    if kind.startswith("torch"):
        precondition = lr / (1 - b1**n) / (np.sqrt(v) / np.sqrt(1 - b2**n) + eps)
    else:
        precondition = lr * np.sqrt(1 - b2**n) / (1 - b1**n) / (np.sqrt(v) + eps)
    terms = {
        "signal": -precondition * (1 - b1) * g_train,
        "deviation": -precondition * (1 - b1) * (g_b - g_train),
        "history": -precondition * b1 * m,
    }
    if kind in ("adamw", "torch_adam", "torch_adamw"):
        terms["weight_decay"] = (
            -precondition * (1 - b1) * wd * theta if coupled else -lr * wd * theta
        )
    state["m"] = b1 * m + (1 - b1) * gradient
    return terms


def stored_intervals(run, split: str) -> np.ndarray:
    """Per iteration, the sub-intervals of the rule the allocation accepted."""
    group = run.lca_store[split]
    return group["intervals" if "intervals" in group else "splits"][:]


class CauseCheck:
    """One split's stored cause sums against the independent ones, iteration by iteration."""

    def __init__(self, run, split: str) -> None:
        self.split, self.terms = split, list(run.cause_terms)
        assert run.cause_parts == ["first_order", "curvature"]
        rule = run.lca_store.attrs["settings"].get("rule", "simpson")
        assert rule in ("adaptive", "simpson"), rule  # what path_mean knows
        self.layer_of = run.layout.layer_index()
        self.L = len(run.layer_names)
        self.layer = run.cause_layer_lca(split)
        self.hurt = run.cause_hurt_layer_lca(split)
        self.lca = run.lca_store[split]["lca"]  # per-parameter A: the store level "parameters"
        # the layout's own unit numbering, one global unit index per parameter
        self.unit_of = np.empty(run.layout.total, np.int64)
        self.unit_slices, self.units, first = {}, {}, 0
        self.layer_of_unit: list[int] = []
        for layer, (flat, unit, count) in run.layout.unit_index().items():
            self.unit_of[flat] = first + unit
            self.layer_of_unit.extend([run.layer_names.index(layer)] * count)
            self.unit_slices[layer] = slice(first, first + count)
            self.units[layer] = run.cause_unit_lca(split, layer)
            first += count
        self.U = first
        self.layer_of_unit = np.array(self.layer_of_unit)
        self.worst: dict[str, float] = {}  # "<array> <part>": max |stored − mine| / bound
        # per (array, term, other term, part): max over the run of |mine_j − mine_k| / bound
        self.separation: dict[tuple[str, str, str, int], float] = {}
        # per (array, term, part): max over the run of |mine_j| / bound
        self.visible: dict[tuple[str, str, int], float] = {}
        self.part_separation = 0.0  # the same for first order against curvature

    def add(self, t, mine: dict, g0, gbar, theta0, theta1) -> None:
        """Iteration t: ``mine`` the independent terms without the residual (it is
        Δθ − Σ of them here), ``g0`` ∇L(θ_t) of this split, ``gbar`` its path mean."""
        delta = theta1 - theta0
        terms = {**mine, "residual": delta - sum(mine.values())}
        assert set(terms) == set(self.terms), (sorted(terms), self.terms)
        rows = np.array(
            [np.broadcast_to(terms[name], delta.shape) for name in self.terms]
        )  # (n, P)
        weights = np.array([g0, gbar - g0])  # (2, P)
        # the bound's mass per entry: Σ_k (|u_k| + eps32 (|θ_t| + |θ_{t+1}|)) · (|g0| + |ḡ|)
        mass = (np.abs(rows).sum(0) + len(rows) * EPS32 * (np.abs(theta0) + np.abs(theta1))) * (
            np.abs(g0) + np.abs(gbar)
        )
        hurts = np.asarray(self.lca[t]) > 0
        everywhere = np.ones_like(hurts)
        layer_bound = RHO * self.sums(mass, self.layer_of, self.L, everywhere)
        unit_bound = layer_bound[self.layer_of_unit]  # see the module's docstring
        for name, index, size, where, bound, stored in (
            ("layer", self.layer_of, self.L, everywhere, layer_bound, self.layer[t]),
            ("unit", self.unit_of, self.U, everywhere, unit_bound, self._stored_units(t)),
            (
                "hurt_layer",
                self.layer_of,
                self.L,
                hurts,
                RHO * self.sums(mass, self.layer_of, self.L, hurts),
                self.hurt[t],
            ),
        ):
            bound = bound + 1e-300
            expected = np.array(
                [[self.sums(r * w, index, size, where) for w in weights] for r in rows]
            )
            for part in (0, 1):
                key = f"{name} {('first_order', 'curvature')[part]}"
                error = np.abs(stored[:, part] - expected[:, part]) / bound
                self.worst[key] = max(self.worst.get(key, 0.0), float(error.max()))
            if name == "hurt_layer":
                continue
            for part in (0, 1):
                for j, a in enumerate(self.terms):
                    size = float((np.abs(expected[j, part]) / bound).max())
                    key = (name, a, part)
                    self.visible[key] = max(self.visible.get(key, 0.0), size)
                for (j, a), (k, b) in itertools.combinations(enumerate(self.terms), 2):
                    gap = np.abs(expected[j, part] - expected[k, part]) / bound
                    key = (name, a, b, part)
                    self.separation[key] = max(self.separation.get(key, 0.0), float(gap.max()))
            gap = np.abs(expected[:, 0] - expected[:, 1]) / bound
            self.part_separation = max(self.part_separation, float(gap.max()))

    @staticmethod
    def sums(values, index, size, where) -> np.ndarray:
        return np.bincount(index[where], weights=values[where], minlength=size)

    def _stored_units(self, t) -> np.ndarray:
        out = np.empty((len(self.terms), 2, self.U))
        for layer, columns in self.unit_slices.items():
            out[..., columns] = self.units[layer][t]
        return out

    def finish(self) -> dict[str, float]:
        """Every sum within its bound, and the check able to tell every two terms and the
        two parts apart; returns the worst error ratios (for the test's message)."""
        assert all(value <= 1.0 for value in self.worst.values()), (self.split, self.worst)

        def seen(name, term, part) -> bool:
            return self.visible[(name, term, part)] >= SEPARATION

        # two terms whose sums both stay within rounding of zero (a small decay's curvature,
        # the residual) are alike to any float32 computation: a swap of them changes nothing
        blind = {
            key: gap
            for key, gap in self.separation.items()
            if gap < SEPARATION and (seen(*key[:2], key[3]) or seen(key[0], *key[2:]))
        }
        assert not blind, f"{self.split}: terms this check cannot tell apart: {blind}"
        for name, part in itertools.product(("layer", "unit"), (0, 1)):
            assert seen(name, "signal", part), (name, part, self.visible)
        assert self.part_separation >= SEPARATION, self.part_separation
        return self.worst
