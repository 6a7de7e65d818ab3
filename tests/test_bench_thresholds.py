"""``scripts/bench.py thresholds``: the sweep over the simpson store is what `adaptive` allocates.

The sweep never runs an ``adaptive`` allocation; here its rows are held to real ones on
tiny_fc: the same iterations keep the trapezoid, the same errors, totals, sign agreement and
gradient count.
"""

import importlib
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from lca.allocation import allocate
from lca.analysis import agreement
from lca.analysis.diagnostics import verify_error
from lca.layout import ParameterLayout
from lca.storage import LCA_STORE, open_trajectory

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module("benchmarks.thresholds")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


@pytest.fixture(scope="module")
def paper(bench, trained_runs, tmp_path_factory):
    """tiny_fc allocated as the sweep allocates it (simpson, float32), and its gradient count."""
    run_dir = tmp_path_factory.mktemp("thresholds") / "tiny_fc"
    shutil.copytree(trained_runs("tiny_fc"), run_dir)
    return run_dir, bench.allocate_paper(run_dir)


def test_threshold_zero_is_the_papers_allocation(bench, paper):
    run_dir, evaluations = paper
    result = bench.sweep(run_dir, [0.0, math.inf], evaluations)
    simpson = result["rows"][-1]
    assert simpson["threshold"] == 0 and simpson["accepted_pct"] == 0
    report = verify_error(run_dir)
    for split, m in simpson["splits"].items():
        assert m["total_error_pct"] == report.splits[split].total_error_pct  # bit for bit
        assert m["sign_agreement_pct"] == 100
    assert simpson["gradients_per_iteration"] * result["iterations"] == evaluations
    assert result["check"]["passed"]
    # the config's default (threshold / 10) is swept and marked even when not asked for
    defaults = [r for r in result["rows"] if r["default"]]
    assert [r["threshold"] for r in defaults] == [pytest.approx(1e-5)]


def stored(run_dir, split):
    group = zarr.open_group(str(run_dir / LCA_STORE), mode="r")[split]
    return {name: group[name][:] for name in ("error", "intervals", "lca")}


@pytest.mark.parametrize("case", ["trapezoid alone", "at an iteration's own error"])
def test_a_swept_row_is_what_adaptive_allocates(bench, paper, trained_runs, tmp_path, case):
    run_dir, _ = paper
    p = bench.trapezoid_pass(run_dir)
    worst = np.max([np.abs(p.trapezoid_error[s]) for s in p.splits], axis=0)
    if case == "trapezoid alone":
        threshold, options = math.inf, dict(threshold=1e9, trapezoid_threshold=1e9)
    else:  # exactly one iteration's error: the test is ≤, as the allocator's
        threshold = float(np.sort(worst)[3])
        options = dict(trapezoid_threshold=threshold)
        assert threshold < p.threshold
    accepted = bench.accepted_at(p, threshold)
    assert accepted.sum() == (p.iterations if math.isinf(threshold) else 4)
    adaptive = tmp_path / "tiny_fc"
    shutil.copytree(trained_runs("tiny_fc"), adaptive)
    summary = allocate(adaptive, rule="adaptive", precision="float32", progress=False, **options)
    row = bench.row(p, threshold)
    assert row["gradients_per_iteration"] * p.iterations == summary.gradient_evaluations
    report = verify_error(adaptive)
    layout = ParameterLayout.from_json(open_trajectory(run_dir).layout_json)
    for split in p.splits:
        got, paper_rows = stored(adaptive, split), stored(run_dir, split)
        np.testing.assert_array_equal(got["intervals"] == 1, accepted)
        np.testing.assert_allclose(
            got["error"][accepted], p.trapezoid_error[split][accepted], rtol=0, atol=1e-12
        )
        np.testing.assert_array_equal(got["lca"][~accepted], paper_rows["lca"][~accepted])
        m = row["splits"][split]
        assert m["total_error_pct"] == pytest.approx(
            report.splits[split].total_error_pct, rel=1e-9, abs=1e-9
        )
        same = agreement(got["lca"], paper_rows["lca"], layout.layer_index(), len(layout.layers))
        assert m["sign_agreement_pct"] == pytest.approx(100 * same.sign_agreement, rel=1e-12)
