"""The cause terms of ``torch.optim`` steps (SGD, Adam, AdamW) in runs recorded from a user's loop.

``lca.torch.TrajectoryRecorder`` stores the optimiser's class and param groups in the
trajectory's ``torch_optimizer`` attribute; `TorchOptimizer` expands them onto θ. The
update rules are torch's own (``torch.optim.sgd/adam``, single-tensor), with G = g_B + wd·θ_t
(L2 coupled to the gradient) for SGD and Adam:

``SGD``   b_t = μ b_{t−1} + (1−d) G (b_0 = G); θ ← θ − lr·b_t, or with nesterov
          θ ← θ − lr·(G + μ b_t); momentum 0: θ ← θ − lr·G.
``Adam``  m ← m + (1−β₁)(G − m); v ← β₂ v + (1−β₂) G²;
          θ ← θ − lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)  (t counted from 1).
``AdamW`` θ ← θ·(1 − lr·wd) first (decoupled), then Adam's step with G = g_B.

The terms keep `causes`' meanings: ``signal`` and ``deviation`` are the gradient's part
of the step with ∇L_train(θ_t) and g_B − ∇L_train(θ_t), ``momentum`` (SGD) and ``history``
(Adam) what the optimiser carried over, ``weight_decay`` the part wd·θ_t made (SGD and Adam:
through the gradient, with its coefficient; AdamW: θ_t·(fl32(1 − lr·wd) − 1), the decay as
float32 applied it), ``residual`` the rest.

SGD's terms come from the recorded steps alone, so no mini-batch is needed: without nesterov
b_{t−1} = −Δθ_{t−1}/lr, so the momentum term is μ Δθ_{t−1} and the gradient's part
Δθ_t − momentum − weight decay (coefficient c = lr(1−d), lr at the first step or without
momentum); with nesterov (d = 0) Δθ_t = −lr(1+μ) G − lr μ² b_{t−1} and
b_t = (μ b_{t−1} − Δθ_t/lr)/(1+μ), a recursion that a replay carries from iteration 0 (its
state is stored at every block's start, as Adam's moments are). Adam and AdamW need g_B
on the recorded batch (float32 slots, torch's operations in its order), so their replay
reproduces the recorded step to float32 rounding. The hyperparameters are the groups' as
recorded; a learning-rate schedule is not replayed (the SGD terms would then misattribute,
and Adam's residual shows it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..storage import RunError
from .causes import ParameterSettings, Terms, _with_residual

#: torch.optim class → the key of :data:`lca.allocation.causes.TERM_NAMES`
TORCH_KINDS = {"SGD": "torch_sgd", "Adam": "torch_adam", "AdamW": "torch_adamw"}
NEVER = np.iinfo(np.int64).max

# torch's defaults, for a hyperparameter a group description leaves out
_DEFAULTS = {
    "SGD": {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    "Adam": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "AdamW": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2},
}


@dataclass(frozen=True)
class TorchOptimizer:
    """A ``torch_optimizer`` description expanded onto θ: every setting per parameter."""

    kind: str  # torch_sgd, torch_adam or torch_adamw
    lr: np.ndarray  # (P,) float64, as each group's Python float
    momentum: np.ndarray
    dampening: np.ndarray
    nesterov: np.ndarray  # (P,) bool
    weight_decay: np.ndarray
    beta_1: np.ndarray
    beta_2: np.ndarray
    eps: np.ndarray

    @classmethod
    def from_description(cls, described: Mapping, layout_json: list[dict]) -> TorchOptimizer:
        """From ``{"class": …, "groups": [{hyperparameters, "parameters": [names]}]}``; a
        one-line RunError for an optimiser or option lca does not replay."""
        name = described.get("class")
        if name not in TORCH_KINDS:
            raise RunError(
                f"--causes replays torch.optim SGD, Adam and AdamW; this run was trained with "
                f"{name}"
            )
        offsets = {e["name"].replace("/", "."): (e["offset"], e["size"]) for e in layout_json}
        total = sum(size for _, size in offsets.values())
        values = {k: np.full(total, np.nan) for k in ("lr", "momentum", "dampening", "wd")}
        values.update({k: np.full(total, np.nan) for k in ("beta_1", "beta_2", "eps")})
        nesterov = np.zeros(total, bool)
        seen: set[str] = set()
        decoupled = name == "AdamW"
        for group in described.get("groups", []):
            g = {**_DEFAULTS[name], **group}
            for flag in ("maximize", "amsgrad"):
                if g.get(flag):
                    raise RunError(f"--causes does not replay torch.optim.{name}({flag}=True)")
            if name == "Adam" and g.get("decoupled_weight_decay"):
                decoupled = True
            if g.get("lr") is None:
                raise RunError(f"torch_optimizer: a group of {name} has no lr")
            betas = g.get("betas") or [0.0, 0.0]
            for parameter in g.get("parameters", g.get("params", [])):
                if parameter not in offsets:
                    continue  # not in θ (no gradient ever)
                start, size = offsets[parameter]
                block = slice(start, start + size)
                values["lr"][block] = float(g["lr"])
                values["momentum"][block] = float(g.get("momentum", 0.0))
                values["dampening"][block] = float(g.get("dampening", 0.0))
                values["wd"][block] = float(g.get("weight_decay") or 0.0)
                values["beta_1"][block], values["beta_2"][block] = map(float, betas)
                values["eps"][block] = float(g.get("eps", 0.0))
                nesterov[block] = bool(g.get("nesterov", False))
                seen.add(parameter)
        missing = [p for p in offsets if p not in seen]
        if missing:
            raise RunError(f"torch_optimizer: parameter {missing[0]} is in no param group")
        kind = "torch_adamw" if name != "SGD" and decoupled else TORCH_KINDS[name]
        return cls(
            kind,
            values["lr"],
            values["momentum"],
            values["dampening"],
            nesterov,
            values["wd"],
            values["beta_1"],
            values["beta_2"],
            values["eps"],
        )

    @property
    def carries_state(self) -> bool:
        """The terms need a state carried from iteration 0: Adam's moments, nesterov's b."""
        return self.kind != "torch_sgd" or bool(self.nesterov.any())

    def parameter_settings(self) -> ParameterSettings:
        """lr and momentum per parameter, nothing frozen (what `cause_sums.BlockCauses`
        reads of the settings)."""
        return ParameterSettings(
            self.lr.astype(np.float32),
            self.momentum.astype(np.float32),
            np.full(self.lr.shape, NEVER, np.int64),
        )

    def replay(self, m=None, v=None, previous_delta=None):
        """The replay of this optimiser: from a stored state (m, v), or for SGD without
        nesterov from Δθ_{t−1} (``previous_delta``; None at iteration 0)."""
        if self.kind == "torch_sgd":
            return TorchSGDReplay(self, m, previous_delta)
        return TorchAdamReplay(self, m, v)


def _terms_out(out: Terms | None, names: tuple[str, ...], shape) -> list[np.ndarray]:
    out = {} if out is None else out
    return [out[name] if name in out else np.empty(shape) for name in names]


class TorchSGDReplay:
    """torch.optim.SGD's terms from the recorded steps, carrying b (float64) for nesterov."""

    def __init__(
        self,
        optimizer: TorchOptimizer,
        b: np.ndarray | None = None,
        previous_delta: np.ndarray | None = None,
    ) -> None:
        o = self.optimizer = optimizer
        self.lr, self.mu = o.lr, o.momentum
        self.decay = o.lr * o.weight_decay  # lr·wd: c·wd = coefficient·lr·wd/lr
        self._inverse_lr = np.divide(1.0, o.lr, out=np.zeros_like(o.lr), where=o.lr != 0)
        self.b = np.zeros(o.lr.shape) if b is None else np.asarray(b, np.float64).copy()
        if previous_delta is not None:  # b_{t−1} = −Δθ_{t−1}/lr (without nesterov)
            self.b = -np.asarray(previous_delta, np.float64) * self._inverse_lr
        # per parameter, the factor c/lr of G in the step: first step, later steps
        with_momentum = self.mu > 0
        self.first_factor = np.where(o.nesterov, 1.0 + self.mu, 1.0)
        self.factor = np.where(
            o.nesterov, 1.0 + self.mu, np.where(with_momentum, 1.0 - o.dampening, 1.0)
        )
        self.carry = np.where(o.nesterov, self.mu * self.mu, self.mu)  # momentum = −lr·carry·b

    def step(
        self,
        t: int,
        theta: np.ndarray,
        batch_grad: np.ndarray | None,
        train_grad: np.ndarray,
        theta_next: np.ndarray | None = None,
        out: Terms | None = None,
    ) -> Terms:
        """The terms of iteration t (Δθ_t = ``theta_next`` − ``theta``, both recorded).

        Without ``batch_grad`` the gradient's part is what the step leaves after momentum and
        weight decay (the residual is rounding); with it, −c·g_B, so that the residual shows
        how well g_B and the settings reproduce the recorded step.
        """
        if theta_next is None:
            raise ValueError("torch.optim.SGD's terms need the recorded θ_{t+1}")
        names = ("signal", "deviation", "momentum", "weight_decay", "residual")
        signal, deviation, momentum, weight_decay, residual = _terms_out(out, names, theta.shape)
        delta = np.subtract(theta_next, theta, dtype=np.float64)
        factor = self.first_factor if t == 0 else self.factor
        coefficient = self.lr * factor  # c: the step is −c·G − lr·carry·b_{t−1}
        np.multiply(self.carry * self.lr, self.b, out=momentum)
        np.negative(momentum, out=momentum)
        np.multiply(self.decay * factor, theta, out=weight_decay)  # −c·wd·θ_t
        np.negative(weight_decay, out=weight_decay)
        np.multiply(coefficient, train_grad, out=signal)
        np.negative(signal, out=signal)
        if batch_grad is None:  # the gradient's part: Δθ − momentum − weight decay
            np.subtract(delta, momentum, out=deviation)
            deviation -= weight_decay
        else:
            np.multiply(coefficient, batch_grad, out=deviation)
            np.negative(deviation, out=deviation)
        deviation -= signal
        self._advance(delta)
        terms = {
            "signal": signal,
            "deviation": deviation,
            "momentum": momentum,
            "weight_decay": weight_decay,
        }
        return _with_residual(terms, delta, residual)

    def advance(self, t: int, theta: np.ndarray, theta_next: np.ndarray) -> None:
        """Carry b over iteration t without making its terms (the pre-pass)."""
        self._advance(np.subtract(theta_next, theta, dtype=np.float64))

    def _advance(self, delta: np.ndarray) -> None:
        u = -delta * self._inverse_lr  # G + μ b_t (nesterov), b_t (without)
        o = self.optimizer
        self.b = np.where(o.nesterov, (self.mu * self.b + u) / (1.0 + self.mu), u)
        self.b[self.mu == 0] = 0.0

    def checkpoint(self) -> tuple[np.ndarray, np.ndarray]:
        """The state to store (b as float32, and zeros for the unused v); b goes on from
        the stored value, so a replay resumed from it continues bitwise alike."""
        b = self.b.astype(np.float32)
        self.b = b.astype(np.float64)
        return b, np.zeros_like(b)


class TorchAdamReplay:
    """torch.optim.Adam/AdamW replayed in float32 from the mini-batch gradients.

    The operations are torch's single-tensor ones in its order, each scalar cast to float32
    as torch casts it; torch's CPU square root is not always correctly rounded, so an entry
    of θ_{t+1} may differ from the recorded one by an ulp.
    """

    def __init__(self, optimizer: TorchOptimizer, m=None, v=None) -> None:
        o = self.optimizer = optimizer
        f = np.float32
        self.decoupled = o.kind == "torch_adamw"
        self.c1 = (1.0 - o.beta_1).astype(f)  # exp_avg.lerp_(G, 1 − β₁)
        self.beta_2, self.c2 = o.beta_2.astype(f), (1.0 - o.beta_2).astype(f)
        self.eps = o.eps.astype(f)
        self.wd = o.weight_decay.astype(f)
        self.shrink = (1.0 - o.lr * o.weight_decay).astype(f)  # param.mul_(1 − lr·wd)
        size = o.lr.shape
        self.m = np.zeros(size, f) if m is None else np.array(m, f)
        self.v = np.zeros(size, f) if v is None else np.array(v, f)
        self.theta_next: np.ndarray | None = None

    def step(
        self,
        t: int,
        theta: np.ndarray,
        batch_grad: np.ndarray,
        train_grad: np.ndarray,
        theta_next: np.ndarray | None = None,
        out: Terms | None = None,
    ) -> Terms:
        """Advance m, v over iteration t and return its terms (as `causes.AdamReplay`:
        the residual against the recorded ``theta_next`` when given, else this replay's own)."""
        o, f = self.optimizer, np.float32
        theta = np.asarray(theta, f)
        g = np.asarray(batch_grad, f)
        if self.decoupled:
            decayed, gradient = theta * self.shrink, g
        else:
            decayed, gradient = theta, g + self.wd * theta  # grad.add(param, alpha=wd)
        m_before = self.m
        self.m = self.m + self.c1 * (gradient - self.m)
        self.v = self.v * self.beta_2 + self.c2 * gradient * gradient
        step = t + 1
        step_size = (o.lr / (1.0 - o.beta_1**step)).astype(f)
        root = np.sqrt(1.0 - o.beta_2**step).astype(f)
        denom = np.sqrt(self.v) / root + self.eps
        self.theta_next = decayed - step_size * (self.m / denom)  # addcdiv_(m, denom, −size)
        names = ("signal", "deviation", "history", "weight_decay", "residual")
        signal, deviation, history, weight_decay, residual = _terms_out(out, names, theta.shape)
        precond = np.divide(step_size, denom, dtype=np.float64)  # the step is −P m_t
        np.negative(precond, out=precond)
        c1 = self.c1.astype(np.float64)
        np.multiply(precond, c1, out=signal)  # −P c1, then ·∇L_train
        np.subtract(g, train_grad, out=deviation, dtype=np.float64)
        deviation *= signal
        if self.decoupled:  # θ_t·(fl32(1 − lr·wd) − 1)
            np.multiply(theta, self.shrink.astype(np.float64) - 1.0, out=weight_decay)
        else:  # −P c1 wd θ_t
            np.multiply(signal, self.wd, out=weight_decay)
            weight_decay *= theta
        signal *= train_grad
        np.multiply(precond, 1.0 - c1, out=history)
        history *= m_before
        terms = {
            "signal": signal,
            "deviation": deviation,
            "history": history,
            "weight_decay": weight_decay,
        }
        after = self.theta_next if theta_next is None else theta_next
        return _with_residual(terms, np.subtract(after, theta, dtype=np.float64), residual)

    def checkpoint(self) -> tuple[np.ndarray, np.ndarray]:
        return self.m, self.v
