"""One full-set gradient in float32 against `lca`'s bfloat16, side by side, at θ_0 of each run.

    python scripts/bench.py precision configs/mnist_fc_sgd.yaml configs/mnist_lenet_sgd.yaml \\
        --set data.path=/path/to/mnist.npz
    python scripts/bench.py precision configs/tiny_fc.yaml configs/tiny_lenet.yaml --rounds 2

A config is trained for 2 iterations (only θ_0 is evaluated); a run directory is used as it
is. The evaluation objective of the run is built twice, as `lca allocate` builds it (every
split it allocates, whole, in its evaluation batches): with ``precision: float32`` and with
``precision: bfloat16`` (float32 forward, bfloat16 inputs to the backward matrix products
of dense and convolution layers: `lca/tensorflow/precision.py`). Each is traced by one
untimed call, whose results give the bfloat16 gradient's relative L2 error against float32
(float64, per split and over all splits) and whether the losses are bitwise float32's.
Then one full-set gradient (all splits) of each is timed per round, alternating which goes
first, for ``--rounds`` rounds and more (in pairs) until ``--min-seconds`` of timings are
reached; reported: each precision's median seconds and the median of the rounds' ratios
float32 / bfloat16 (the speed-up). The first line says whether the CPU has bfloat16 units
and so what ``--precision auto`` picks here.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from .common import (
    add_target_arguments,
    interleave,
    median_ratio,
    run_from_target,
    scratch,
    timed,
)

PRECISIONS = ("float32", "bfloat16")
TRAIN_ITERATIONS = 2  # only θ_0 is evaluated


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, many=True)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, at least (default 5)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=10.0,
        help="add rounds (two at a time) until the timings sum to this (default 10)",
    )


def machine_line() -> str:
    """The CPU's bfloat16 units and what ``--precision auto`` resolves to on this machine."""
    from lca.allocation.settings import BF16_CPU_FLAGS, cpu_has_bf16_units, resolve_precision
    from lca.tensorflow.runtime import visible_gpus

    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    present = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in BF16_CPU_FLAGS)
    emulated = "" if cpu_has_bf16_units(cpuinfo) else " (bfloat16 products emulated)"
    gpus = visible_gpus()
    auto = resolve_precision("auto", on_gpu=bool(gpus))
    where = f"{len(gpus)} GPU(s) visible" if gpus else "no GPU visible"
    return f"bfloat16 units: {present}{emulated}; {where}; --precision auto picks {auto}"


def load_objectives(run_dir: Path) -> dict:
    """The run's evaluation objective in each precision, built as `lca allocate` builds it."""
    from lca.allocation import load_objective, resolve_settings
    from lca.storage import open_trajectory, read_run_config

    config = read_run_config(run_dir)
    K = open_trajectory(run_dir).theta.shape[1]
    objectives = {}
    for precision in PRECISIONS:
        settings = resolve_settings(config.allocate, K, rule="simpson", precision=precision)
        objectives[precision] = load_objective(
            run_dir,
            settings.splits,
            settings.eval_batch_size,
            jit_compile=settings.jit_compile,
            reuse_input_layer=settings.reuse_input_layer,
            precision=settings.precision,
        )
    return objectives


def measure(run_dir: Path, rounds: int = 5, min_seconds: float = 0.0) -> dict:
    """Errors, bitwise losses and timings of one full-set gradient at θ_0 in both precisions."""
    from lca.storage import open_trajectory

    theta = np.asarray(open_trajectory(run_dir).theta[0], np.float32)
    objectives = load_objectives(run_dir)
    first = {p: objectives[p](theta) for p in PRECISIONS}  # traces each, untimed
    exact, reduced = first["float32"], first["bfloat16"]
    splits = list(exact)

    def relative(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        a64 = np.concatenate([v.astype(np.float64) for v in a])
        b64 = np.concatenate([v.astype(np.float64) for v in b])
        return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))

    errors = {s: relative([reduced[s].gradient], [exact[s].gradient]) for s in splits}
    errors["all"] = relative(
        [reduced[s].gradient for s in splits], [exact[s].gradient for s in splits]
    )
    candidates = {p: (lambda _round, o=objectives[p]: timed(lambda: o(theta))) for p in PRECISIONS}
    times = {p: [] for p in PRECISIONS}
    chunk = max(1, rounds)
    while True:
        for p, values in interleave(candidates, chunk).items():
            times[p].extend(values)
        if sum(sum(v) for v in times.values()) >= min_seconds:
            break
        chunk = 2  # each precision first once more
    return {
        "run": run_dir.name,
        "num_params": objectives["float32"].num_params,
        "examples": {s: objectives["float32"].num_examples(s) for s in splits},
        "losses": {s: (exact[s].loss, reduced[s].loss) for s in splits},
        "loss_bitwise": all(exact[s].loss == reduced[s].loss for s in splits),
        "errors": errors,
        "rounds": len(times["float32"]),
        "seconds": {p: statistics.median(times[p]) for p in PRECISIONS},
        "speed_up": median_ratio(times["float32"], times["bfloat16"]),
    }


def lines(result: dict) -> list[str]:
    """A few fixed-width lines of one run's result."""
    examples = " + ".join(f"{s} {n:,}" for s, n in result["examples"].items())
    seconds, errors = result["seconds"], result["errors"]
    per_split = ", ".join(f"{s} {e:.1e}" for s, e in errors.items() if s != "all")
    return [
        f"{result['run']}: K = {result['num_params']:,} parameters, splits {examples} examples",
        f"  float32   {seconds['float32']:9.4f} s per full-set gradient "
        f"(median of {result['rounds']} rounds, alternating which goes first)",
        f"  bfloat16  {seconds['bfloat16']:9.4f} s per full-set gradient, "
        f"speed-up ×{result['speed_up']:.2f} (median of the rounds' float32/bfloat16 ratios)",
        f"  bfloat16 gradient relative L2 error: {errors['all']:.1e} over all ({per_split})",
        f"  loss bitwise float32: {'yes' if result['loss_bitwise'] else 'no'}",
    ]


def run(args: argparse.Namespace) -> None:
    def briefly(config) -> None:
        config.training.iterations = TRAIN_ITERATIONS

    print(machine_line(), flush=True)
    with scratch() as tmp:
        for target in args.targets:
            run_dir = run_from_target(target, args.overrides, tmp, adjust=briefly)
            result = measure(run_dir, args.rounds, args.min_seconds)
            print("\n".join(lines(result)), flush=True)
