"""Split every LCA share by its cause: which term of the optimiser's step moved the parameter.

The step of iteration t is a sum of terms, Δθ_t = Σ_k u⁽ᵏ⁾, and the path-mean gradient of a
split is ḡ = ∇L(θ_t) + (ḡ − ∇L(θ_t)), so the LCA A_t,i = Δθ_i ḡ_i splits exactly into
u⁽ᵏ⁾_i ∇_iL(θ_t) (first order) and u⁽ᵏ⁾_i (ḡ_i − ∇_iL(θ_t)) (curvature along the step) for
every term k. The terms (names in `TERM_NAMES`):

``signal``        the whole training split's gradient, as the optimiser would have followed it:
                  −lr ∇L_train(θ_t) (SGD), −(1−β₁) P_t ∇L_train(θ_t) (Adam). Always the TRAIN
                  split's gradient, also when the LCA is on another split.
``deviation``     what the mini-batch added to that: the same with g_B − ∇L_train(θ_t).
``momentum``      SGD: μ v_{t−1}, the velocity carried over from earlier steps.
``history``       Adam: −β₁ P_t m_{t−1}, the first moment carried over from earlier steps.
``weight_decay``  AdamW: −lr·wd·θ_t, decoupled, applied before the Adam step (torch.optim's
                  SGD and Adam: the step's part that wd·θ_t added to the gradient).
``residual``      Δθ_recorded − Σ of the others: what the replay did not reproduce. Carried as
                  a term so the shares add up to A; `residual_ratio` reports its size.

The formulas follow ``lca/training/loop.py`` operation for operation (float32, same order), so a
replay on the recorded θ_t and mini-batch gradients reproduces the recorded Δθ to rounding
(``lca train``'s torch trainer computes the same; torch.optim's rules, for runs recorded from a
user's loop, are in `causes_torch_optim`).
Pure numpy: the gradients (∇L_train, g_B) and the path means ḡ come from the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

FIRST_ORDER = "first_order"
CURVATURE = "curvature"

#: The terms each kind of run has, in the order they are stored.
TERM_NAMES: dict[str, tuple[str, ...]] = {
    "sgd": ("signal", "deviation", "momentum", "residual"),
    "sgd_no_momentum": ("signal", "deviation", "residual"),
    "adam": ("signal", "deviation", "history", "residual"),
    "adamw": ("signal", "deviation", "history", "weight_decay", "residual"),
    # torch.optim's rules, in runs recorded from a torch loop (:mod:`.causes_torch_optim`)
    "torch_sgd": ("signal", "deviation", "momentum", "weight_decay", "residual"),
    "torch_adam": ("signal", "deviation", "history", "weight_decay", "residual"),
    "torch_adamw": ("signal", "deviation", "history", "weight_decay", "residual"),
}

Terms = dict[str, np.ndarray]  # term name -> (P,) float64 step component


def optimizer_kind(name: str, momentum: np.ndarray | float = 0.0, weight_decay: float = 0.0) -> str:
    """The key of `TERM_NAMES` for an optimiser config (``optimizer.name`` etc.).

    SGD whose momentum is zero everywhere has no momentum term; AdamW without decay is Adam.
    """
    if name == "sgd":
        return "sgd" if np.any(np.asarray(momentum) != 0) else "sgd_no_momentum"
    if name in ("adam", "adamw"):
        return "adamw" if name == "adamw" and weight_decay else "adam"
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass(frozen=True)
class ParameterSettings:
    """Per-parameter optimiser settings: training.py's per-variable ``LayerSettings`` expanded
    onto the flat θ, so every formula below is elementwise."""

    lr: np.ndarray  # (P,) float32
    momentum: np.ndarray  # (P,) float32 (0 for Adam, as resolve_layer_settings sets it)
    freeze_from: np.ndarray  # (P,) int64: no update at iterations t >= freeze_from

    @classmethod
    def from_variables(
        cls,
        lr: np.ndarray,
        momentum: np.ndarray,
        freeze_from: np.ndarray,
        offsets: np.ndarray,
        total: int,
    ) -> ParameterSettings:
        """Expand per-variable values; ``offsets`` are the variables' starts in θ (layout order),
        ``total`` the length of θ, so variable j covers offsets[j]:offsets[j+1]."""
        offsets = np.asarray(offsets, np.int64)
        sizes = np.diff(np.append(offsets, total))
        if offsets.size and (offsets[0] != 0 or np.any(sizes < 0)):
            raise ValueError("offsets must start at 0 and increase")
        return cls(
            lr=np.repeat(np.asarray(lr, np.float32), sizes),
            momentum=np.repeat(np.asarray(momentum, np.float32), sizes),
            freeze_from=np.repeat(np.asarray(freeze_from, np.int64), sizes),
        )

    def active(self, t: int) -> np.ndarray:
        """training.py's 1/0 mask: still trained at iteration t (float32, per parameter)."""
        return (t < self.freeze_from).astype(np.float32)

    def factors(self, t: int) -> StepFactors:
        """The float64 factors of iteration t, made once per stretch between freezes."""
        cache = self.__dict__.setdefault("_factors", {})  # frozen: the cache lives beside
        if "points" not in cache:
            cache["points"] = np.unique(self.freeze_from)
        key = int(np.searchsorted(cache["points"], t, side="right"))
        if key not in cache:
            active32 = self.active(t)
            active = active32.astype(np.float64)
            cache[key] = StepFactors(
                active32,
                active32 * self.lr,
                active,
                active * self.lr.astype(np.float64),
                active * self.momentum.astype(np.float64),
                bool(active.all()),
            )
        return cache[key]


@dataclass(frozen=True)
class StepFactors:
    """One iteration's ``active`` and ``active·lr`` per parameter as training.py's float32,
    and ``active``, ``active·lr``, ``active·μ`` in float64."""

    active32: np.ndarray
    active_lr32: np.ndarray
    active: np.ndarray
    active_lr: np.ndarray
    active_momentum: np.ndarray
    all_active: bool  # active is 1 everywhere (multiplying by it changes nothing)


# --- SGD: exact from the recorded trajectory ------------------------------------------------


def sgd_step_terms(
    t: int,
    delta: np.ndarray,
    previous_delta: np.ndarray | None,
    settings: ParameterSettings,
    train_grad: np.ndarray,
    batch_grad: np.ndarray | None = None,
    out: Terms | None = None,
) -> Terms:
    """The terms of SGD iteration t (Δθ_t = θ_{t+1} − θ_t) from the recorded steps alone.

    training.py: v_t = active·(μ v_{t−1} − lr g_B); θ_{t+1} = θ_t + v_t, so the recorded step
    is the velocity and the momentum term is μ Δθ_{t−1} (``previous_delta``; None at t = 0,
    where the slot starts at zero). The gradient part −lr g_B is then Δθ_t − μ Δθ_{t−1}, with
    no division by lr (a layer may have lr = 0), and the residual is rounding only. Given
    ``batch_grad`` (g_B replayed at θ_t) the gradient part is −lr g_B instead, and the
    residual measures how faithfully the replay reproduced the step. ``out``: (P,) float64
    arrays, by term name, to write the terms into (rows of one stacked array, say).

    The split is exact up to the rounding of θ_{t+1} = θ_t + v_t in float32: the recorded Δθ
    is v_t to within half an ulp of θ, which shifts that much between momentum and gradient.
    """
    f = settings.factors(t)
    delta = np.asarray(delta, np.float64)
    out = {} if out is None else out
    signal, deviation, momentum, residual = (
        out[name] if name in out else np.empty_like(delta)
        for name in ("signal", "deviation", "momentum", "residual")
    )
    if previous_delta is None:
        momentum.fill(0.0)
    else:  # active·μ·Δθ_{t−1}
        np.multiply(f.active_momentum, previous_delta, out=momentum)
    np.multiply(f.active_lr, train_grad, out=signal)  # −active·lr·∇L_train
    np.negative(signal, out=signal)
    if batch_grad is None:  # active·(Δθ − momentum)
        np.subtract(delta, momentum, out=deviation)
        if not f.all_active:
            deviation *= f.active
    else:  # −active·lr·g_B
        np.multiply(f.active_lr, batch_grad, out=deviation)
        np.negative(deviation, out=deviation)
    deviation -= signal  # the gradient part less the signal
    terms = {"signal": signal, "deviation": deviation, "momentum": momentum}
    return _with_residual(terms, delta, residual)


def sgd_block_terms(
    theta: np.ndarray,
    first: int,
    previous: np.ndarray | None,
    settings: ParameterSettings,
    train_grads,
    batch_grads=None,
) -> Iterator[tuple[int, Terms]]:
    """The terms of iterations first … first+n−1 from the recorded rows θ_first … θ_first+n.

    ``theta``: (n+1, P) float32 rows; ``previous``: θ_{first−1} (None when first = 0);
    ``train_grads[k]``: ∇L_train(θ_{first+k}); ``batch_grads[k]`` optional (see
    `sgd_step_terms`). Yields (t, terms) one iteration at a time, so a block holds
    one iteration's terms at once, not the block's.
    """
    theta = np.asarray(theta)
    if first > 0 and previous is None:
        raise ValueError("the momentum of iteration first > 0 needs θ_{first-1}")
    before = None if previous is None else theta[0].astype(np.float64) - previous
    for k in range(theta.shape[0] - 1):
        delta = theta[k + 1].astype(np.float64) - theta[k]
        g_b = None if batch_grads is None else batch_grads[k]
        yield first + k, sgd_step_terms(first + k, delta, before, settings, train_grads[k], g_b)
        before = delta


# --- Adam / AdamW: replayed from the mini-batch gradients -------------------------------------


class AdamReplay:
    """training.py's Adam/AdamW, replayed step by step to rebuild m, v and split each step.

    The slots are float32 and updated with training.py's very operations, in its order::

        θ ← θ − active·(θ·wd·lr)                                  (AdamW, before the step)
        scale = √(1 − β₂^(t+1)) / (1 − β₁^(t+1))
        m ← m + active·(g − m)·(1 − β₁);  v ← v + active·(g² − v)·(1 − β₂)
        θ ← θ − active·lr·scale·m / (√v + ε)

    so with P_t = active·lr·scale / (√v_t + ε) the step is −P_t m_t, and m_t = β₁ m_{t−1} +
    (1 − β₁) g_B splits it into history and gradient (signal + deviation). A replay that
    starts mid-run needs the slots m, v of that moment.
    """

    def __init__(
        self,
        settings: ParameterSettings,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        weight_decay: float = 0.0,
        m: np.ndarray | None = None,
        v: np.ndarray | None = None,
    ) -> None:
        self.settings = settings
        # Python floats become float32 constants in training.py's TensorFlow ops
        self.beta_1, self.beta_2 = np.float32(beta_1), np.float32(beta_2)
        self.c1, self.c2 = np.float32(1.0 - beta_1), np.float32(1.0 - beta_2)
        self.epsilon = np.float32(epsilon)
        self.weight_decay = np.float32(weight_decay)
        size = settings.lr.shape
        self.m = np.zeros(size, np.float32) if m is None else np.array(m, np.float32)
        self.v = np.zeros(size, np.float32) if v is None else np.array(v, np.float32)
        self.theta_next: np.ndarray | None = None  # θ_{t+1} as the last replayed step made it

    def scale(self, t: int) -> np.float32:
        """Adam's bias correction of iteration t (step t + 1), in float32 as training.py."""
        step = np.float32(t + 1)
        one = np.float32(1.0)
        return np.sqrt(one - self.beta_2**step) / (one - self.beta_1**step)

    def checkpoint(self) -> tuple[np.ndarray, np.ndarray]:
        """The slots to store at a block's start (``lca.zarr/replay_state``)."""
        return self.m, self.v

    def step(
        self,
        t: int,
        theta: np.ndarray,
        batch_grad: np.ndarray,
        train_grad: np.ndarray,
        theta_next: np.ndarray | None = None,
        out: Terms | None = None,
    ) -> Terms:
        """Advance the slots over iteration t and return its terms (into ``out``, as
        `sgd_step_terms` writes them).

        ``theta``: the recorded θ_t (float32); ``batch_grad``: g_B at θ_t on the recorded batch
        (before the decay, as training.py's tape computes it); ``train_grad``: ∇L_train(θ_t).
        The residual is taken against the recorded ``theta_next`` when given, else against
        this replay's own θ_{t+1} (`theta_next`), which leaves only the float32 rounding
        of m_t, of the step and of θ_{t+1} (half an ulp of θ: large against a small step).
        """
        s = self.settings
        factors = s.factors(t)
        active = factors.active32
        theta = np.asarray(theta, np.float32)
        g = np.asarray(batch_grad, np.float32)
        decay = active * (theta * self.weight_decay * s.lr)
        decayed = theta - decay
        m_before = self.m
        self.m = self.m + active * (g - self.m) * self.c1
        self.v = self.v + active * (np.square(g) - self.v) * self.c2
        coef = factors.active_lr32 * self.scale(t)  # training.py: active·lr·scale, ·m, then /
        denom = np.sqrt(self.v) + self.epsilon
        self.theta_next = decayed - coef * self.m / denom
        # m_t = m_{t−1} + (g − m_{t−1})·c1 = (1 − c1) m_{t−1} + c1 g, with c1 as rounded
        out = {} if out is None else out
        names = ("signal", "deviation", "history", "weight_decay", "residual")
        signal, deviation, history, weight_decay, residual = (
            out[name] if name in out else np.empty(theta.shape) for name in names
        )
        c1 = float(self.c1)
        precond = np.divide(coef, denom, dtype=np.float64)  # both cast to float64 first
        np.negative(precond, out=precond)
        np.multiply(precond, c1, out=signal)  # −P c1, then ·∇L_train
        np.subtract(g, train_grad, out=deviation, dtype=np.float64)  # g_B − ∇L_train
        deviation *= signal
        signal *= train_grad
        np.multiply(precond, 1.0 - c1, out=history)
        history *= m_before
        terms = {"signal": signal, "deviation": deviation, "history": history}
        if self.weight_decay:
            terms["weight_decay"] = np.negative(decay, out=weight_decay, dtype=np.float64)
        after = self.theta_next if theta_next is None else theta_next
        return _with_residual(terms, np.subtract(after, theta, dtype=np.float64), residual)


# --- shares ------------------------------------------------------------------------------------


def _with_residual(terms: Terms, delta: np.ndarray, out: np.ndarray | None = None) -> Terms:
    """Add the residual Δθ − Σ terms, so that the terms sum to Δθ exactly (float64)."""
    values = iter(terms.values())
    total = np.array(next(values), np.float64)
    for value in values:
        total += value
    terms["residual"] = np.subtract(delta, total, out=out, dtype=np.float64)
    return terms


def step_of(terms: Mapping[str, np.ndarray]) -> np.ndarray:
    """Δθ = Σ of all terms, the residual included (float64)."""
    total = np.zeros_like(next(iter(terms.values())), dtype=np.float64)
    for value in terms.values():
        total += value
    return total


def residual_ratio(terms: Mapping[str, np.ndarray]) -> float:
    """‖residual‖ / ‖Δθ‖ of one iteration: 0 for an exact replay, 0 for a step that did not
    move anything, inf for a residual on a step that did not move."""
    residual = _norm(terms["residual"])
    size = _norm(step_of(terms))
    if size == 0:
        return 0.0 if residual == 0 else float("inf")
    return residual / size


def _norm(x: np.ndarray) -> float:
    """‖x‖ without BLAS (whose threads wait on each other when the cores are busy)."""
    x = np.asarray(x, np.float64)
    return math.sqrt(float(np.einsum("i,i->", x, x)))


def cause_shares(
    terms: Mapping[str, np.ndarray], grad_at_start: np.ndarray, path_mean_grad: np.ndarray
) -> dict[tuple[str, str], np.ndarray]:
    """Each term's share of one split's LCA, first-order and curvature parts, per parameter.

    ``grad_at_start``: ∇L_split(θ_t); ``path_mean_grad``: ḡ of the same split (the
    quadrature's). Σ over every entry is Σ_i Δθ_i ḡ_i with Δθ = `step_of`, to float64
    rounding: u·g₀ + u·(ḡ − g₀) = u·ḡ for each term u.
    """
    g0 = np.asarray(grad_at_start, np.float64)
    bend = np.asarray(path_mean_grad, np.float64) - g0
    shares: dict[tuple[str, str], np.ndarray] = {}
    for name, value in terms.items():
        shares[(name, FIRST_ORDER)] = value * g0
        shares[(name, CURVATURE)] = value * bend
    return shares
