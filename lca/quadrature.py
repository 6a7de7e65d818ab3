"""Path integrals of the gradient along one training step, in pure numpy.

LCA of iteration t is A_t,i = Δ_i ∫_0^1 g_i(θ_t + sΔ) ds. The integral is approximated by a
Newton–Cotes formula on equally spaced nodes s = k/n; the formula is a pluggable object
(Simpson's is the paper's "RK4"), and [`integrate_step`][lca.quadrature.integrate_step] refines it
adaptively, halving
the sub-intervals while the conservation error of any split exceeds the threshold. The
refinement sequence, the rule ``allocate.rule`` names, is pluggable too
([`RULES`][lca.quadrature.RULES]):
``simpson`` is the paper's, ``adaptive`` starts
from the trapezoid on the two endpoints, which costs one new gradient per iteration instead
of two. Nodes live on the grid of the finest level, so every gradient computed at a coarse
level is reused at the finer ones and never evaluated twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np


@dataclass(frozen=True)
class QuadratureFormula:
    """A closed Newton–Cotes family: ``weights(n)`` for the n+1 nodes k/n of [0, 1]."""

    name: str
    min_intervals: int
    weights: Callable[[int], np.ndarray]
    order: int  # the error falls as h**order for smooth integrands

    def check(self, n: int) -> None:
        if n < self.min_intervals or n % self.min_intervals:
            raise ValueError(
                f"{self.name} needs a multiple of {self.min_intervals} sub-intervals, got {n}"
            )


def simpson_weights(n: int) -> np.ndarray:
    """Composite Simpson weights 1,4,2,4,…,4,1 / (3n) for n (even) sub-intervals of [0, 1]."""
    SIMPSON.check(n)
    w = np.ones(n + 1)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    return w / (3.0 * n)


def trapezoid_weights(n: int) -> np.ndarray:
    """Composite trapezoid weights 1,2,…,2,1 / (2n)."""
    TRAPEZOID.check(n)
    w = np.full(n + 1, 2.0)
    w[[0, -1]] = 1.0
    return w / (2.0 * n)


def left_riemann_weights(n: int) -> np.ndarray:
    """First order: every node but the last, 1/n each (n=1 is the paper's first-order LCA)."""
    w = np.full(n + 1, 1.0 / n)
    w[-1] = 0.0
    return w


SIMPSON = QuadratureFormula("simpson", 2, simpson_weights, order=4)
TRAPEZOID = QuadratureFormula("trapezoid", 1, trapezoid_weights, order=2)
FIRST_ORDER = QuadratureFormula("first_order", 1, left_riemann_weights, order=1)
FORMULAS = {formula.name: formula for formula in (SIMPSON, TRAPEZOID, FIRST_ORDER)}


def integrate(formula: QuadratureFormula, values: np.ndarray) -> np.ndarray:
    """Apply ``formula`` to function values at the n+1 equally spaced nodes (first axis)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0] - 1
    return np.tensordot(formula.weights(n), values, axes=1)


@dataclass(frozen=True)
class Level:
    """One stage of a refinement: ``formula`` on ``intervals`` sub-intervals, accepted when every
    split's |conservation error| is at most ``threshold``."""

    intervals: int
    formula: QuadratureFormula
    threshold: float


def simpson_levels(threshold: float, max_intervals: int, **_) -> tuple[Level, ...]:
    """The paper's rule: composite Simpson on 2, 4, …, ``max_intervals`` sub-intervals."""
    SIMPSON.check(max_intervals)
    return tuple(Level(2**k, SIMPSON, threshold) for k in range(1, int(np.log2(max_intervals)) + 1))


def adaptive_levels(
    threshold: float, max_intervals: int, trapezoid_threshold: float | None = None
) -> tuple[Level, ...]:
    """Endpoint-first: the trapezoid on the two endpoints, whose gradients every iteration
    shares with its neighbours (one new gradient per iteration), then the paper's Simpson
    levels where the trapezoid's error is too large.

    The trapezoid's error has one sign along smooth stretches of training, so its errors add
    up over iterations where Simpson's (two orders smaller) do not: it is accepted only within
    the stricter ``trapezoid_threshold`` (default: ``threshold``/10).
    """
    strict = threshold / 10 if trapezoid_threshold is None else trapezoid_threshold
    first = (Level(1, TRAPEZOID, min(strict, threshold)),)
    return first + (simpson_levels(threshold, max_intervals) if max_intervals >= 2 else ())


#: The pluggable refinement sequences, by the name ``allocate.rule`` takes.
RULES: dict[str, Callable[..., tuple[Level, ...]]] = {
    "simpson": simpson_levels,
    "adaptive": adaptive_levels,
}

#: The names :data:`RULES` holds, as a type: ``allocate.rule`` is checked against it.
RuleName = Literal[tuple(RULES)]  # type: ignore[valid-type]


def refinement_levels(
    rule: str,
    threshold: float = 1e-3,
    max_intervals: int = 32,
    trapezoid_threshold: float | None = None,
) -> tuple[Level, ...]:
    """The levels ``rule`` tries, coarsest first (see [`RULES`][lca.quadrature.RULES])."""
    try:
        make = RULES[rule]
    except KeyError:
        raise ValueError(f"unknown rule {rule!r} (choose from {', '.join(RULES)})") from None
    return make(threshold, max_intervals, trapezoid_threshold=trapezoid_threshold)


@dataclass
class StepAllocation:
    """The LCA of one iteration, with the conservation error that certifies it."""

    lca: dict[str, np.ndarray]  # split -> (K,) float32, A_i = Δ_i · mean gradient on the path
    error: dict[str, float]  # split -> ΔL − Σ_i A_i (float64, from the stored float32 values)
    error_first_order: dict[str, float]  # split -> ΔL − Σ_i Δ_i g_i(θ_t)
    intervals: int  # sub-intervals of the accepted level (1: the trapezoid on the endpoints)
    evaluations: int  # gradient evaluations this call made (start and end not counted)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (n, errors)
    components: dict[str, np.ndarray] = field(default_factory=dict)  # see integrate_step
    formula: str = "simpson"  # the Newton–Cotes formula of the accepted level
    converged: bool = True  # the last level tried is within its threshold
    stalled: bool = False  # refinement stopped early: it no longer reduced the error
    # split -> (K,) float64 path-mean gradient ḡ of the accepted level (lca = (Δ·ḡ) as float32)
    mean_grad: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def halvings(self) -> int:
        """How often the sub-intervals were halved beyond the first level."""
        return len(self.history) - 1


def integrate_step(
    gradient_at: Callable[[float], Mapping[str, np.ndarray]],
    delta: np.ndarray,
    loss_change: Mapping[str, float],
    start: Mapping[str, np.ndarray],
    end: Mapping[str, np.ndarray],
    *,
    threshold: float = 1e-3,
    max_intervals: int = 32,
    rule: str = "simpson",
    trapezoid_threshold: float | None = None,
    components: tuple[str, ...] = (),
    stop_when_stalled: bool = False,
) -> StepAllocation:
    """Adaptive LCA of one step θ → θ + Δ for every split (train, val, …) at once.

    ``gradient_at(s)`` returns the gradient of each split at θ + sΔ for an interior s;
    ``start``/``end`` are the gradients at s = 0 and 1, which the caller shares with the
    neighbouring iterations. The levels of ``rule``
    ([`refinement_levels`][lca.quadrature.refinement_levels]) are tried in
    order until every split's |error| is within the level's threshold or none is left.

    ``stop_when_stalled`` (for reduced-precision gradients, whose rounding puts a floor under
    the error) stops once a Simpson halving fails to reduce the largest |error| at all:
    refining further would only spend gradients. The result then says ``converged=False``.

    ``components`` names further entries of the node dictionaries (e.g. per-class gradients,
    shaped (C, K)) that are integrated with the accepted level without steering it:
    ``result.components[name] = Δ · Σ_k w_k g_k`` as float32.
    """
    levels = refinement_levels(rule, threshold, max_intervals, trapezoid_threshold)
    finest = levels[-1].intervals
    delta64 = np.asarray(delta, dtype=np.float64)
    nodes: dict[int, Mapping[str, np.ndarray]] = {0: start, finest: end}
    evaluations = 0
    history: list[tuple[int, dict[str, float]]] = []

    # Elementwise product and sum rather than np.dot: a BLAS call wakes OpenBLAS threads that
    # keep spinning and steal the cores TensorFlow's next gradient evaluation needs.
    first_order = {
        split: float(loss_change[split] - (delta64 * start[split]).sum()) for split in loss_change
    }
    converged = stalled = False
    previous: Level | None = None
    for level in levels:
        n, stride = level.intervals, finest // level.intervals
        for k in range(n + 1):
            j = k * stride
            if j not in nodes:
                nodes[j] = gradient_at(j / finest)
                evaluations += 1
        weights = level.formula.weights(n)
        lca, error, mean_grads = {}, {}, {}
        for split in loss_change:
            mean_grad = np.zeros_like(delta64)
            for k, w in enumerate(weights):
                if w:
                    mean_grad += w * np.asarray(nodes[k * stride][split], dtype=np.float64)
            lca[split] = (delta64 * mean_grad).astype(np.float32)
            mean_grads[split] = mean_grad
            error[split] = float(loss_change[split] - lca[split].sum(dtype=np.float64))
        worst = max(abs(e) for e in error.values())
        if (
            stop_when_stalled
            and previous is not None
            and previous.formula is level.formula
            and worst >= max(abs(e) for e in history[-1][1].values())
        ):
            stalled = True
        history.append((n, error))
        converged = worst <= level.threshold
        if converged or stalled:
            break
        previous = level
    parts = {}
    for name in components:
        total = sum(
            w * np.asarray(nodes[k * stride][name], np.float64) for k, w in enumerate(weights) if w
        )
        parts[name] = (delta64 * total).astype(np.float32)
    return StepAllocation(
        lca,
        error,
        first_order,
        n,
        evaluations,
        history,
        parts,
        formula=level.formula.name,
        converged=converged,
        stalled=stalled,
        mean_grad=mean_grads,
    )


def segment_point(start: np.ndarray, end: np.ndarray, fraction: float) -> np.ndarray:
    """θ = start + fraction (end − start), computed in float64 and stored as float32."""
    start64 = np.asarray(start, dtype=np.float64)
    return (start64 + fraction * (np.asarray(end, np.float64) - start64)).astype(np.float32)


class LossAndGradient(NamedTuple):
    """One split's values at a θ, as an objective returns them (``objective(θ)[split]``)."""

    loss: float  # float64 mean of the per-example losses
    gradient: np.ndarray  # (K,) float32, in θ's order


class ClassLossAndGradient(NamedTuple):
    """[`LossAndGradient`][lca.quadrature.LossAndGradient] and its exact split into classes
    (``allocate.per_class``)."""

    loss: float
    gradient: np.ndarray  # (K,) float32
    class_loss: np.ndarray  # (C,): L = Σ_c class_loss[c]
    class_gradient: np.ndarray  # (C, K)
