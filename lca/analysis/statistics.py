"""Statistics across runs (mean ± std, a per-layer t-test and sign test) with numpy alone.

Several seeds of one configuration give a distribution of every number; the report shows
mean ± std and asks, per layer, whether the total LCA differs from zero. The t-test's p-value
needs the regularized incomplete beta function, computed here so that lca needs no scipy.
"""

from __future__ import annotations

import math

import numpy as np


def across_runs(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per key: mean, std (ddof=1; NaN for one run) and n over the runs that have the key."""
    keys = list(dict.fromkeys(k for v in values for k in v))
    out = {}
    for key in keys:
        x = np.array([v[key] for v in values if key in v], dtype=np.float64)
        out[key] = {
            "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if x.size > 1 else float("nan"),
            "n": int(x.size),
        }
    return out


def _betacf(a: float, b: float, x: float, max_iter: int = 300, eps: float = 3e-16) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; NR ``betacf``)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of Beta(a, b) at x (NR ``betai``)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_bt = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    bt = math.exp(log_bt)
    if x < (a + 1.0) / (a + b + 2.0):
        return bt * _betacf(a, b, x) / a
    return 1.0 - bt * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T_df| >= |t|) for Student's t: I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isnan(t) or df <= 0:
        return float("nan")
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def sign_test(totals: np.ndarray) -> dict[str, np.ndarray]:
    """Per layer, over runs: is the total LCA consistently non-zero? One-sample t-test vs 0.

    ``totals`` is (runs, L). Returns (L,) arrays: mean, std (ddof=1), t, p_value (two-sided),
    fraction_positive, and n (runs).
    """
    x = np.asarray(totals, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1) if n > 1 else np.full(x.shape[1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (std / math.sqrt(n))
    t = np.where((std == 0) & (mean == 0), 0.0, t)
    p = np.array([t_two_sided_p(float(v), n - 1) if n > 1 else math.nan for v in t])
    return {
        "mean": mean,
        "std": std,
        "t": t,
        "p_value": p,
        "fraction_positive": (x > 0).mean(axis=0),
        "n": np.array(n),
    }
