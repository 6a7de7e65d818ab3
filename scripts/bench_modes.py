"""Every rule × precision of `lca allocate` on the same runs, measured side by side in one run.

    python scripts/bench_modes.py runs/mnist_fc_sgd runs/mnist_fc_adam runs/mnist_fc_sgd_nomom
    python scripts/bench_modes.py runs/mnist_lenet_sgd --iterations 0:16,432:448,864:880
    python scripts/bench_modes.py configs/tiny_resnet.yaml --set training.iterations=96

A config is trained first; a run directory is used as it is (its own lca.zarr is never
touched: each mode allocates into a scratch directory that links the run's trajectory).
For every run and mode it prints, per split: seconds and gradients per iteration (the
allocator's work units, traced beforehand, writes included), float32 fall-backs, the speed-up
over simpson + float32, the total and mean per-iteration conservation error, verify-error's
verdict, and the agreement of the LCA array with simpson + float32's (sign agreement over
its non-zero entries, difference in mean % helped, largest per-layer total difference).
``--iterations`` allocates only the listed ranges (rounded out to work units) in every mode;
the verdict then covers those iterations ("PASS*"). tf32 is measured only where a GPU is
visible: a CPU has no TF32, so there it is float32.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from lca.allocation import ChunkAllocator, chunks_for, open_lca_store, resolve_settings  # noqa: E402
from lca.analysis import agreement  # noqa: E402
from lca.analysis.diagnostics import verify_error  # noqa: E402
from lca.config import load_config  # noqa: E402
from lca.layout import ParameterLayout  # noqa: E402
from lca.storage import LCA_STORE, open_group, open_trajectory, read_run_config  # noqa: E402
from lca.training import train  # noqa: E402


class Rows:
    """Some rows of a (T, K) array, row-sliceable like the array itself."""

    def __init__(self, array, rows: np.ndarray) -> None:
        self.array, self.rows = array, rows
        self.shape = (len(rows), array.shape[1])

    def __getitem__(self, key: slice) -> np.ndarray:
        return self.array.get_orthogonal_selection((self.rows[key], slice(None)))


def scratch_copy(run_dir: Path, into: Path) -> Path:
    """A run directory that shares everything of ``run_dir`` but its allocation."""
    into.mkdir(parents=True)
    for item in run_dir.iterdir():
        if item.name not in (LCA_STORE, "report"):
            (into / item.name).symlink_to(item.resolve())
    return into


def modes(with_tf32: bool) -> list[tuple[str, str]]:
    precisions = ["float32", "bfloat16"] + ["tf32"] * with_tf32
    return [(rule, p) for rule in ("simpson", "adaptive") for p in precisions]


def run_mode(run_dir: Path, rule: str, precision: str, ranges) -> dict:
    config = read_run_config(run_dir)
    trajectory = open_trajectory(run_dir)
    T, K = trajectory.num_iterations, trajectory.theta.shape[1]
    settings = resolve_settings(config.allocate, K, rule=rule, precision=precision)
    open_lca_store(run_dir, trajectory, settings)
    allocator = ChunkAllocator(run_dir, settings)
    theta = trajectory.theta[:2]
    allocator.objective(theta[0])  # trace both compiled functions before the clock starts
    allocator.objective.between(theta[0], theta[1], 0.5)
    units = sorted({k for r in ranges for k in chunks_for(T, settings.chunk_iterations, r)})
    iterations = evaluations = fallbacks = 0
    began = time.perf_counter()
    for k in units:
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
    report = verify_error(run_dir)
    store, reference = (open_group(d / LCA_STORE, "r") for d in (run_dir, reference_dir))
    c = int(store.attrs["settings"]["chunk_iterations"])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="run directories or config files")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--iterations", help="ranges A:B,C:D to allocate [all]")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from lca.tensorflow.runtime import visible_gpus

    ranges = parse_ranges(args.iterations)
    results = []
    header = (
        f"{'run':<20} {'rule':<9} {'precision':<9} {'split':<5} {'s/it':>7} {'grad/it':>7} "
        f"{'fall-b':>6} {'speed-up':>8} {'tot.err %':>9} {'mean|err|':>9} {'verify':>6} "
        f"{'sign %':>7} {'Δhelped':>8} {'max layer Δ':>18}"
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("LCA_BENCH_TMP")) as tmp:
        for target in map(Path, args.targets):
            if target.is_dir():
                run_dir = target
            else:
                config = load_config(target, args.overrides)
                run_dir = Path(tmp) / config.name
                train(config, run_dir, progress=False)
            layout = ParameterLayout.from_json(open_trajectory(run_dir).layout_json)
            layer_index = layout.layer_index()
            reference = base = None
            for rule, precision in modes(bool(visible_gpus())):
                scratch = scratch_copy(run_dir, Path(tmp) / f"{run_dir.name}-{rule}-{precision}")
                timing = run_mode(scratch, rule, precision, ranges)
                reference = reference or scratch
                base = base or timing["s_per_iteration"]
                timing["speed_up"] = base / timing["s_per_iteration"]
                row = {"run": run_dir.name, "rule": rule, "precision": precision, **timing}
                row["splits"] = compare(scratch, reference, layout.layers, layer_index)
                results.append(row)
                if scratch != reference:
                    shutil.rmtree(scratch)  # an allocation of MNIST-FC's 880 steps is ~4 GB
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


if __name__ == "__main__":
    main()
