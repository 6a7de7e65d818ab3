"""Every rule × precision of `lca allocate` on the same runs, measured side by side in one run.

    python scripts/bench.py modes runs/mnist_fc_sgd runs/mnist_fc_adam runs/mnist_fc_sgd_nomom
    python scripts/bench.py modes runs/mnist_lenet_sgd --range 0:16,432:448,864:880
    python scripts/bench.py modes configs/tiny_resnet.yaml --set training.iterations=96

A config is trained first; a run directory is used as it is (its own lca.zarr is never
touched: each mode allocates into a scratch directory that links the run's trajectory).
For every run and mode it prints, per split: seconds and gradients per iteration (the
allocator's blocks, traced beforehand, writes included), float32 fall-backs, the speed-up
over simpson + float32, the total and mean per-iteration conservation error, verify-error's
verdict, and the agreement of the LCA array with simpson + float32's (sign agreement over
its non-zero entries, difference in mean % helped, largest per-layer total difference).
``--range`` allocates only the listed iteration ranges (rounded out to blocks) in every mode;
the verdict then covers those iterations ("PASS*"). tf32 is measured only where a GPU is
visible: a CPU has no TF32, so there it is float32.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from .common import Renamed, add_target_arguments, copy_run, run_from_target, scratch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, many=True)
    parser.add_argument("--range", help="iteration ranges A:B,C:D to allocate [all]")
    parser.add_argument("--iterations", dest="range", action=Renamed, new="--range")
    parser.add_argument("--json", type=Path, help="also write the results here")


class Rows:
    """Some rows of a (T, K) array, row-sliceable like the array itself."""

    def __init__(self, array, rows: np.ndarray) -> None:
        self.array, self.rows = array, rows
        self.shape = (len(rows), array.shape[1])

    def __getitem__(self, key: slice) -> np.ndarray:
        return self.array.get_orthogonal_selection((self.rows[key], slice(None)))


def modes(with_tf32: bool) -> list[tuple[str, str]]:
    precisions = ["float32", "bfloat16"] + ["tf32"] * with_tf32
    return [(rule, p) for rule in ("simpson", "adaptive") for p in precisions]


def run_mode(run_dir: Path, rule: str, precision: str, ranges) -> dict:
    from lca.allocation import BlockAllocator, blocks_for, open_lca_store, resolve_settings
    from lca.storage import open_trajectory, read_run_config

    config = read_run_config(run_dir)
    trajectory = open_trajectory(run_dir)
    T, K = trajectory.num_iterations, trajectory.theta.shape[1]
    settings = resolve_settings(config.allocate, K, rule=rule, precision=precision)
    open_lca_store(run_dir, trajectory, settings)
    allocator = BlockAllocator(run_dir, settings)
    theta = trajectory.theta[:2]
    allocator.objective(theta[0])  # trace both compiled functions before the clock starts
    allocator.objective.between(theta[0], theta[1], 0.5)
    blocks = sorted({k for r in ranges for k in blocks_for(T, settings.block_iterations, r)})
    iterations = evaluations = fallbacks = 0
    began = time.perf_counter()
    for k in blocks:
        result = allocator.compute(k)
        allocator.submit(result)
        iterations += result.stop - result.start
        evaluations += result.evaluations
        fallbacks += result.fallbacks
    allocator.wait()
    seconds = time.perf_counter() - began
    return {
        "seconds": seconds,
        "iterations": iterations,
        "s_per_iteration": seconds / iterations,
        "gradients_per_iteration": evaluations / iterations,
        "fallbacks": fallbacks,
    }


def compare(run_dir: Path, reference_dir: Path, layers: list[str], layer_index) -> dict:
    from lca.analysis import agreement
    from lca.analysis.diagnostics import verify_error
    from lca.storage import LCA_STORE, open_group

    report = verify_error(run_dir)
    store, reference = (open_group(d / LCA_STORE, "r") for d in (run_dir, reference_dir))
    c = int(store.attrs["settings"]["chunk_iterations"])  # block iterations, as stores record them
    T = int(store.attrs["num_iterations"])
    rows = np.concatenate(
        [np.arange(k * c, min(T, k * c + c)) for k in np.flatnonzero(store["done"][:])]
    )
    failures = [f for f in report.failures() if not f.startswith("allocation incomplete")]
    verdict = ("PASS" if report.complete else "PASS*") if not failures else "FAIL"
    out = {}
    for split, errors in report.splits.items():
        same = agreement(
            Rows(store[split]["lca"], rows),
            Rows(reference[split]["lca"], rows),
            layer_index,
            len(layers),
        )
        worst = int(np.nanargmax(same.layer_relative_difference))
        out[split] = {
            "total_error_pct": errors.total_error_pct,
            "mean_abs_error": errors.mean_abs_error,
            "verdict": verdict,
            "failures": failures,
            "sign_agreement_pct": 100 * same.sign_agreement,
            "helped_pct": same.helped,
            "helped_difference": same.helped_difference,
            "max_layer_difference_pct": 100 * same.max_layer_relative_difference,
            "worst_layer": layers[worst],
            "layer_difference_pct": dict(zip(layers, 100 * same.layer_relative_difference)),
        }
    return out


def parse_ranges(spec: str | None) -> list[tuple[int, int] | None]:
    if not spec:
        return [None]
    return [tuple(int(v) for v in part.split(":")) for part in spec.split(",")]


def run(args: argparse.Namespace) -> None:
    from lca.layout import ParameterLayout
    from lca.storage import open_trajectory
    from lca.tensorflow.runtime import visible_gpus

    ranges = parse_ranges(args.range)
    results = []
    header = (
        f"{'run':<20} {'rule':<9} {'precision':<9} {'split':<5} {'s/it':>7} {'grad/it':>7} "
        f"{'fall-b':>6} {'speed-up':>8} {'tot.err %':>9} {'mean|err|':>9} {'verify':>6} "
        f"{'sign %':>7} {'Δhelped':>8} {'max layer Δ':>18}"
    )
    with scratch() as tmp:
        for target in args.targets:
            run_dir = run_from_target(target, args.overrides, tmp)
            layout = ParameterLayout.from_json(open_trajectory(run_dir).layout_json)
            layer_index = layout.layer_index()
            reference = base = None
            for rule, precision in modes(bool(visible_gpus())):
                into = tmp / f"{run_dir.name}-{rule}-{precision}"
                mode_dir = copy_run(run_dir, into, link=True)
                timing = run_mode(mode_dir, rule, precision, ranges)
                reference = reference or mode_dir
                base = base or timing["s_per_iteration"]
                timing["speed_up"] = base / timing["s_per_iteration"]
                row = {"run": run_dir.name, "rule": rule, "precision": precision, **timing}
                row["splits"] = compare(mode_dir, reference, layout.layers, layer_index)
                results.append(row)
                if mode_dir != reference:
                    shutil.rmtree(mode_dir)  # an allocation of MNIST-FC's 880 steps is ~4 GB
                print(
                    f"{run_dir.name} {rule} {precision}: {timing['s_per_iteration']:.3f} "
                    f"s/iteration, {timing['gradients_per_iteration']:.2f} gradients/iteration",
                    flush=True,
                )
            shutil.rmtree(reference)
    print()
    print(header)
    for row in results:
        for split, m in row["splits"].items():
            print(
                f"{row['run']:<20} {row['rule']:<9} {row['precision']:<9} {split:<5} "
                f"{row['s_per_iteration']:7.3f} {row['gradients_per_iteration']:7.2f} "
                f"{row['fallbacks']:6d} {row['speed_up']:7.2f}x "
                f"{m['total_error_pct']:+9.4f} {m['mean_abs_error']:9.2e} {m['verdict']:>6} "
                f"{m['sign_agreement_pct']:7.3f} {m['helped_difference']:+8.4f} "
                f"{m['max_layer_difference_pct']:7.3f} % {m['worst_layer']:<8}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
