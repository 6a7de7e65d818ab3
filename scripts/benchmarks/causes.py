"""Cost of ``lca allocate --causes``: side by side with a plain allocation, or the cause work alone.

Whole allocations (default): two copies of the run directory are allocated alternately
(interleaved repeats, so a busy machine slows both alike), each call timed whole (data, model,
Adam's pre-pass, writing); prints the plain seconds per iteration, which ``--plain-ms`` takes.

    python scripts/bench.py causes RUN [RUN ...] --range 0:64 --repeats 2

In process (``--in-process``): the per-iteration cause work of a block (the step's terms,
every split's shares summed per layer, unit and over hurting entries) on random arrays shaped
as a network of dense layers (default MNIST-FC, 784-100-50-10), SGD with momentum 0.9 and
Adam, no TensorFlow. Prints the median wall and CPU milliseconds per iteration and, given
``--plain-ms`` (a plain allocation's measured ms per iteration), their ratio to it.

    python scripts/bench.py causes --in-process --iterations 200 --splits 2 --plain-ms 150
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .common import copy_run, interleave, median_ratio, scratch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", type=Path, help="run directories (whole allocations)")
    parser.add_argument("--range", default="0:64", help="iterations A:B, as lca allocate takes it")
    parser.add_argument("--iterations", help="iterations of cause work (--in-process) [200]")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--in-process", action="store_true", help="time the cause work alone")
    parser.add_argument("--widths", default="784-100-50-10", help="dense widths (--in-process)")
    parser.add_argument("--splits", type=int, default=2, help="splits allocated (--in-process)")
    parser.add_argument("--plain-ms", type=float, default=None, help="a plain ms/iteration")
    parser.add_argument(
        "--profile", choices=("sgd", "adam"), default=None, help="cProfile one kind (--in-process)"
    )


def dense_layout(widths: list[int]) -> list[dict]:
    """The layout JSON of Dense layers ``widths[0]``→…→``widths[-1]`` (kernel, bias each)."""
    rows, offset = [], 0
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layer = "dense" if i == 0 else f"dense_{i}"
        for name, shape in (("kernel", [fan_in, fan_out]), ("bias", [fan_out])):
            size = int(np.prod(shape))
            rows.append(
                {"name": f"{layer}/{name}", "shape": shape, "offset": offset, "size": size}
                | {"layer": layer}
            )
            offset += size
    return rows


def in_process(kind: str, widths: list[int], iterations: int, splits: int, seed: int = 0):
    """Seconds of every iteration's cause work (``BlockCauses.terms`` + ``add``): wall, CPU,
    and the wall time of ``terms`` alone."""
    from lca.allocation.cause_sums import BlockCauses, CauseModel, LevelReducer
    from lca.allocation.causes import ParameterSettings

    layout = dense_layout(widths)
    K = sum(row["size"] for row in layout)
    offsets = np.array([row["offset"] for row in layout])
    nv = len(layout)
    lr = 0.001 if kind == "adam" else 0.01
    settings = ParameterSettings.from_variables(
        np.full(nv, lr), np.full(nv, 0.9 if kind == "sgd" else 0.0), np.full(nv, 10**9), offsets, K
    )
    model = CauseModel(kind, settings)
    reducer = LevelReducer(layout)
    names = ("train", "test", "validation")[:splits]
    rng = np.random.default_rng(seed)
    theta = (rng.normal(size=(iterations + 1, K)) * 0.05).astype(np.float32)
    theta = np.cumsum(theta * 1e-3, axis=0, dtype=np.float32) + theta[0]
    grads = [{s: rng.normal(size=K).astype(np.float32) for s in names} for _ in range(2)]
    means = [{s: rng.normal(size=K) for s in names} for _ in range(2)]
    lcas = [{s: rng.normal(size=K).astype(np.float32) for s in names} for _ in range(2)]
    batch = rng.normal(size=K).astype(np.float32)
    replay = model.adam_replay() if kind == "adam" else None
    before = None if kind == "adam" else (theta[0] * 1e-4).astype(np.float64)
    causes = BlockCauses(model, reducer, names, "units", 0, iterations, before, replay)
    wall, cpu, wall_terms = [], [], []
    for k in range(iterations):
        g, m, a = grads[k % 2], means[k % 2], lcas[k % 2]
        w0, c0 = time.perf_counter(), time.process_time()
        terms = causes.terms(k, theta[k], theta[k + 1], g["train"], batch if replay else None)
        w1 = time.perf_counter()
        causes.add(k, terms, g, m, a)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        wall_terms.append(w1 - w0)
    return wall, cpu, wall_terms


def run_in_process(args: argparse.Namespace) -> None:
    widths = [int(w) for w in args.widths.split("-")]
    iterations = int(args.iterations or 200)
    for kind in ("sgd", "adam"):
        wall, cpu, wall_terms = in_process(kind, widths, iterations, args.splits)
        ms = [1e3 * statistics.median(seconds) for seconds in (wall, cpu, wall_terms)]
        line = (
            f"{kind:4s} {args.widths}, {args.splits} splits, {iterations} iterations: cause work "
            f"{ms[0]:.2f} ms/iteration wall (median; terms {ms[2]:.2f}), {ms[1]:.2f} ms CPU"
        )
        if args.plain_ms:
            line += f"; ratio to a {args.plain_ms:g} ms plain iteration {ms[0] / args.plain_ms:.3f}"
        print(line)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(in_process, args.profile, widths, iterations, args.splits)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def run_allocations(args: argparse.Namespace) -> None:
    a, b = (int(x) for x in args.range.split(":"))
    with scratch() as tmp:
        for run_dir in args.runs:
            times, allocated = with_and_without(run_dir, tmp, (a, b), args)
            ratio = median_ratio(times[True], times[False])
            per_iteration = 1e3 * statistics.median(times[False]) / max(1, allocated)
            seconds = {k: ", ".join(f"{t:.1f}" for t in v) for k, v in times.items()}
            print(
                f"{run_dir.name}: iterations {a}:{b} ({allocated} allocated), "
                f"{args.repeats} rounds after a warm-up round: without [{seconds[False]}] s, "
                f"with --causes [{seconds[True]}] s; median ratio {ratio:.3f}; plain "
                f"{per_iteration:.1f} ms/iteration (median whole call)"
            )


def with_and_without(run_dir: Path, tmp: Path, iterations: tuple[int, int], args):
    """Seconds of whole allocations of two copies of ``run_dir``, without and with
    ``--causes``, alternated; and the iterations each allocated."""
    from lca.allocation import allocate

    allocated = 0

    def allocation(causes: bool):
        copy = copy_run(run_dir, tmp / f"{run_dir.name}_{'causes' if causes else 'plain'}")

        def seconds(_round: int) -> float:
            nonlocal allocated
            began = time.perf_counter()
            summary = allocate(
                copy,
                iterations=iterations,
                causes=causes,
                threads=args.threads,
                overwrite=True,
                progress=False,
            )
            allocated = summary.iterations_this_run
            return time.perf_counter() - began

        return seconds

    # a warm-up round first: this process's first calls start TensorFlow and trace
    candidates = {False: allocation(False), True: allocation(True)}
    times = interleave(candidates, args.repeats, warmup=1)
    return times, allocated


def run(args: argparse.Namespace) -> None:
    if args.iterations and ":" in args.iterations:  # the range's old spelling
        print("note: --iterations A:B is now --range A:B", file=sys.stderr)
        args.range, args.iterations = args.iterations, None
    if args.in_process:
        run_in_process(args)
    elif args.runs:
        run_allocations(args)
    else:
        args.parser.error("give RUN directories, or --in-process")
