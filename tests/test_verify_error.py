"""`lca verify-error` signs every error one way, ΔL − Σ LCA, and its parts add up to the total.

A tiny allocated run's train split is given known per-iteration errors: +2e-3 on the ten
iterations marked as trapezoid (1 sub-interval), −5e-4 on the thirty marked as Simpson, and
losses that make each stored row still sum to ΔL_t − error_t. The total error is then
+0.005 and the per-rule totals +0.020 and −0.015, with opposite signs, so a part printed
with the other sign, or parts that do not add up to the total, cannot pass.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from lca.analysis.diagnostics import ERROR_SIGN, verify_error
from lca.cli import main
from lca.storage import LCA_STORE

TRAPEZOID, SIMPSON = 2e-3, -5e-4  # each iteration's error ΔL_t − Σ_i A_t,i, by rule


@pytest.fixture
def known_errors(allocated_copy):
    """A tiny_fc run whose train errors are TRAPEZOID on iterations 0–9, SIMPSON after."""
    run_dir = allocated_copy("tiny_fc")
    train = zarr.open_group(str(run_dir / LCA_STORE), mode="r+")["train"]
    sums = train["lca"][:].sum(axis=1, dtype=np.float64)  # Σ_i A_t,i
    T = sums.size
    trapezoid = np.arange(T) < 10
    error = np.where(trapezoid, TRAPEZOID, SIMPSON)
    loss = float(train["loss"][0]) + np.concatenate([[0.0], np.cumsum(sums + error)])
    intervals = "intervals" if "intervals" in train else "splits"  # stores before the rename
    train[intervals][:] = np.where(trapezoid, 1, 2).astype(np.int32)
    train["error"][:] = error.astype(np.float32)
    train["loss"][:] = loss.astype(np.float32)
    return run_dir, float(trapezoid.sum() * TRAPEZOID), float((~trapezoid).sum() * SIMPSON)


def _train_percent(line: str) -> float:
    """The train column's percentage in a table line ("+0.3145 %")."""
    return float(re.findall(r"([+-]\d+\.\d+) %", line)[0])


def test_verify_error_parts_add_up_to_the_total_with_one_sign(known_errors):
    run_dir, trapezoid_total, simpson_total = known_errors
    stats = verify_error(run_dir).splits["train"]
    total = trapezoid_total + simpson_total  # +0.005: ΔL − Σ LCA over the run
    assert stats.loss_change - stats.lca_total == pytest.approx(total, abs=1e-5)
    assert stats.total_error_pct == pytest.approx(100 * total / abs(stats.loss_change), rel=1e-3)
    assert stats.rule_total_error["trapezoid"] == pytest.approx(trapezoid_total, rel=1e-5)
    assert stats.rule_total_error["simpson"] == pytest.approx(simpson_total, rel=1e-5)
    parts = stats.rule_total_error["trapezoid"] + stats.rule_total_error["simpson"]
    assert 100 * parts / abs(stats.loss_change) == pytest.approx(stats.total_error_pct, rel=1e-3)

    output = CliRunner().invoke(main, ["verify-error", str(run_dir)]).output
    lines = output.splitlines()
    assert lines.count(ERROR_SIGN) == 1 and "ΔL − Σ LCA" in ERROR_SIGN  # said once
    shown = {
        name: _train_percent(next(line for line in lines if line.startswith(prefix)))
        for name, prefix in [
            ("total", "total error, adaptive"),
            ("trapezoid", "trapezoid: mean |error|, total error"),
            ("simpson", "simpson: mean |error|, total error"),
        ]
    }
    assert shown["total"] > 0 and shown["trapezoid"] > 0 and shown["simpson"] < 0, output
    assert shown["trapezoid"] + shown["simpson"] == pytest.approx(shown["total"], abs=2e-4)
