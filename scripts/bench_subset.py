"""What LCA on a subset of the training set buys and costs: speed-up against fidelity.

    python scripts/bench_subset.py configs/mnist_fc_sgd.yaml \\
        --set data.path=../shared/data/mnist.npz --iterations 40
    python scripts/bench_subset.py runs/mnist_fc_sgd --fractions 0.5,0.1

Trains a run (or copies a run directory), then allocates the train split of its first
``--iterations`` iterations on the full set and, for each fraction, on a fixed random subset
with every ``--check-every``-th iteration also allocated exactly on the full set. Prints one
row per fraction: subset size, seconds per iteration (the full-set checks excluded, tracing
done beforehand), speed-up over the full set, and the comparison of ``lca verify-error``:
mean per-layer relative error of Σ LCA, mean per-parameter correlation, mean sign agreement
and mean |helped % error| over the checked iterations.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lca.allocation import (  # noqa: E402
    ChunkAllocator,
    open_lca_store,
    read_run_config,
    resolve_settings,
)
from lca.analysis.diagnostics import verify_error  # noqa: E402
from lca.config import load_config  # noqa: E402
from lca.storage import LCA_STORE, open_trajectory  # noqa: E402
from lca.training import train  # noqa: E402


def seconds_per_iteration(run_dir: Path, settings, iterations: int) -> float:
    """Allocate (and write) the first ``iterations`` iterations; time them without the checks."""
    shutil.rmtree(run_dir / LCA_STORE, ignore_errors=True)
    trajectory = open_trajectory(run_dir)
    open_lca_store(run_dir, trajectory, settings)
    allocator = ChunkAllocator(run_dir, settings)
    theta = trajectory.theta[:2]
    for objective in (allocator.objective, allocator.full_objective):
        if objective is not None:  # trace both compiled functions before timing
            objective(theta[0])
            objective.between(theta[0], theta[1], 0.5)
    chunks = range(math.ceil(iterations / settings.chunk_iterations))
    elapsed, done = 0.0, 0
    for chunk in chunks:
        t0 = time.perf_counter()
        result = allocator.compute(chunk)
        elapsed += time.perf_counter() - t0 - result.check_seconds
        done += result.stop - result.start
        allocator.write(result)
    return elapsed / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a config file (a run is trained first) or a run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--fractions", default="0.5,0.2,0.1,0.02")
    parser.add_argument("--iterations", type=int, default=40, help="iterations to allocate")
    parser.add_argument("--check-every", type=int, default=4)
    parser.add_argument("--chunk-iterations", type=int, default=8)
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        if Path(args.target).is_dir():
            shutil.copytree(args.target, run_dir, ignore=shutil.ignore_patterns(LCA_STORE))
        else:
            config = load_config(args.target, args.overrides)
            config.training.iterations = args.iterations
            train(config, run_dir, progress=False)
        config = read_run_config(run_dir)
        trajectory = open_trajectory(run_dir)
        K = trajectory.theta.shape[1]
        M = int(trajectory.attrs["num_train"])
        iterations = min(args.iterations, trajectory.num_iterations)

        def settings_for(subset: int | None):
            settings = resolve_settings(
                config.allocate,
                K,
                splits=["train"],
                subset_size=subset,
                check_every=args.check_every if subset else None,
                num_train=M,
                rule="simpson",  # the figures in docs/performance.md#subsets
                precision="float32",
            )
            return replace(settings, chunk_iterations=args.chunk_iterations)

        full = seconds_per_iteration(run_dir, settings_for(None), iterations)
        print(
            f"{config.name}: {K} parameters, {M} training examples, {iterations} iterations, "
            f"checked every {args.check_every} iterations; full set {full:.3f} s/iteration"
        )
        header = (
            "| fraction | N | s/iteration | speed-up | layer rel. error | correlation "
            "| sign agreement | abs. helped error (pts) |"
        )
        print(header)
        print("|---" * 8 + "|")
        print(f"| 1 | {M} | {full:.3f} | 1.0× | 0 | 1 | 1 | 0 |")
        for fraction in fractions:
            n = max(1, round(fraction * M))
            per_it = seconds_per_iteration(run_dir, settings_for(n), iterations)
            c = verify_error(run_dir).subset_check
            print(
                f"| {fraction:g} | {n} | {per_it:.3f} | {full / per_it:.1f}× "
                f"| {c.layer_rel_error_mean:.3f} | {c.correlation_mean:.3f} "
                f"| {c.sign_agreement_mean:.3f} | {c.helped_error_abs_mean:.2f} |"
            )


if __name__ == "__main__":
    main()
