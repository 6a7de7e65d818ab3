"""What LCA on a subset of the training set buys and costs: speed-up against fidelity.

    python scripts/bench.py subset configs/mnist_fc_sgd.yaml \\
        --set data.path=../shared/data/mnist.npz --iterations 40
    python scripts/bench.py subset runs/mnist_fc_sgd --fractions 0.5,0.1

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
import shutil
import time
from dataclasses import replace
from pathlib import Path

from .common import Renamed, add_target_arguments, run_from_target, scratch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--fractions", default="0.5,0.2,0.1,0.02")
    parser.add_argument("--iterations", type=int, default=40, help="iterations to allocate")
    parser.add_argument("--check-every", type=int, default=4)
    parser.add_argument("--block-iterations", type=int, default=8, help="iterations per block")
    parser.add_argument(
        "--chunk-iterations",
        dest="block_iterations",
        type=int,
        action=Renamed,
        new="--block-iterations",
    )


def checks_timed(allocator) -> list[float]:
    """Time the allocator's full-set checks: the seconds of each are appended to the list
    returned, so that the subset's own time can be told apart."""
    spent: list[float] = []
    check = allocator._check

    def timed_check(*args, **kwargs):
        began = time.perf_counter()
        check(*args, **kwargs)
        spent.append(time.perf_counter() - began)

    allocator._check = timed_check
    return spent


def seconds_per_iteration(run_dir: Path, settings, iterations: int) -> float:
    """Allocate (and write) the first ``iterations`` iterations; time them without the checks."""
    from lca.allocation import BlockAllocator, open_lca_store
    from lca.storage import LCA_STORE, open_trajectory

    shutil.rmtree(run_dir / LCA_STORE, ignore_errors=True)
    trajectory = open_trajectory(run_dir)
    open_lca_store(run_dir, trajectory, settings)
    allocator = BlockAllocator(run_dir, settings)
    theta = trajectory.theta[:2]
    for objective in (allocator.objective, allocator.full_objective):
        if objective is not None:  # trace both compiled functions before timing
            objective(theta[0])
            objective.between(theta[0], theta[1], 0.5)
    checks = checks_timed(allocator)
    blocks = range(math.ceil(iterations / settings.block_iterations))
    elapsed, done = 0.0, 0
    for block in blocks:
        checked_before = sum(checks)
        t0 = time.perf_counter()
        result = allocator.compute(block)
        elapsed += time.perf_counter() - t0 - (sum(checks) - checked_before)
        done += result.stop - result.start
        allocator.write(result)
    return elapsed / done


def run(args: argparse.Namespace) -> None:
    from lca.allocation import read_run_config, resolve_settings
    from lca.analysis.diagnostics import verify_error
    from lca.storage import open_trajectory

    fractions = [float(f) for f in args.fractions.split(",")]

    def as_long_as_allocated(config) -> None:
        config.training.iterations = args.iterations

    with scratch() as tmp:
        run_dir = run_from_target(
            args.target,
            args.overrides,
            tmp,
            name="run",
            adjust=as_long_as_allocated,
            private=True,
        )
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
            return replace(settings, block_iterations=args.block_iterations)

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
