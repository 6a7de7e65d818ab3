"""Speed of `lca allocate` against its floor and against the straightforward way, in one run.

    python scripts/bench.py allocate configs/mnist_fc_sgd.yaml --set data.path=../shared/data/mnist.npz
    python scripts/bench.py allocate runs/mnist_fc_sgd
    python scripts/bench.py allocate configs/tiny_resnet.yaml --iterations 16

Prints, measured side by side: the time of one full-set gradient (every allocated split, as
allocate evaluates them), allocate's time per iteration and its ratio to the floor of two
gradients per iteration (halvings add gradients and are reported), and the
same allocation done the straightforward way (eager Keras model, numpy batches fed per
call, variables assigned per point) as a baseline ratio. Last, the cost of the per-chunk
checksums: whole `lca allocate` runs (writing lca.zarr) on two copies of the run trained
with and without crc32c, alternated.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import numpy as np

from .common import add_target_arguments, interleave, run_from_target, scratch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--iterations", type=int, default=64, help="iterations to allocate")
    parser.add_argument("--repeats", type=int, default=5, help="gradient timings")
    parser.add_argument("--baseline-iterations", type=int, default=3)
    parser.add_argument(
        "--checksum-repeats", type=int, default=3, help="allocations with and without crc32c"
    )


def straightforward_iteration(model, layout, theta0, theta1, splits, batch_size, start):
    """One Simpson step the obvious way: eager model, numpy batches, assign per point."""
    import keras
    import tensorflow as tf

    from lca.quadrature import simpson_weights

    def gradient(theta):
        for var, value in zip(model.trainable_variables, layout.unflatten(theta)):
            var.assign(value)
        out = {}
        for name, (x, y) in splits.items():
            n, loss, grad = len(y), 0.0, np.zeros(layout.total)
            for i in range(0, n, batch_size):
                with tf.GradientTape() as tape:
                    logits = model(x[i : i + batch_size], training=True)
                    losses = keras.losses.sparse_categorical_crossentropy(
                        y[i : i + batch_size], logits, from_logits=True
                    )
                    scaled = tf.reduce_sum(losses) / n
                grads = tape.gradient(scaled, model.trainable_variables)
                loss += float(np.sum(losses.numpy(), dtype=np.float64)) / n
                grad += layout.flatten([g.numpy() for g in grads])
            out[name] = (loss, grad)
        return out

    delta = theta1.astype(np.float64) - theta0
    mid = gradient((theta0 + 0.5 * delta).astype(np.float32))
    end = gradient(theta1)
    w = simpson_weights(2)
    lca = {s: delta * (w[0] * start[s][1] + w[1] * mid[s][1] + w[2] * end[s][1]) for s in splits}
    return end, lca


def checksum_cost(config, tmp: Path, iterations: int, repeats: int) -> dict[str, float]:
    """Seconds per iteration of whole allocations with and without crc32c, alternated.

    Both runs are trained from the same config (so θ is the same), one of them with every
    array created without the checksum codec; each allocation starts over (``overwrite``) and
    writes its lca.zarr, where the checksums are computed, and reads θ, where they are checked.
    The first round warms up (tracing) and is not counted.
    """
    from lca.allocation import allocate
    from lca.storage import without_checksums
    from lca.training import train

    def checksums(name: str):
        return without_checksums() if name == "without" else contextlib.nullcontext()

    runs = {}
    for name in ("with", "without"):
        with checksums(name):
            runs[name] = tmp / f"checksums_{name}"
            train(config, runs[name], progress=False)

    def allocation(name: str):
        def seconds_per_iteration(_round: int) -> float:
            with checksums(name):
                began = time.perf_counter()
                summary = allocate(
                    runs[name],
                    iterations=(0, iterations),
                    rule="simpson",
                    precision="float32",
                    threads=None,
                    overwrite=True,
                    progress=False,
                )
                return (time.perf_counter() - began) / summary.iterations_this_run

        return seconds_per_iteration

    times = interleave({name: allocation(name) for name in ("without", "with")}, repeats, warmup=1)
    return {name: statistics.median(values) for name, values in times.items()}


def run(args: argparse.Namespace) -> None:
    from lca.allocation import BlockAllocator, load_objective, read_run_config, resolve_settings
    from lca.data import load_dataset
    from lca.layout import ParameterLayout
    from lca.storage import open_trajectory

    def long_enough(config) -> None:
        config.training.iterations = max(config.training.iterations, args.iterations)

    with scratch() as tmp:
        run_dir = run_from_target(args.target, args.overrides, tmp, adjust=long_enough)
        config = read_run_config(run_dir)
        trajectory = open_trajectory(run_dir)
        K = trajectory.theta.shape[1]
        # the paper's rule in float32: the floor below is two gradients per iteration
        settings = resolve_settings(config.allocate, K, rule="simpson", precision="float32")
        theta = trajectory.theta[:2]

        allocator = BlockAllocator(run_dir, settings)
        objective = allocator.objective
        objective(theta[0])  # trace and warm up
        gradient_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            objective(theta[1])
            gradient_times.append(time.perf_counter() - t0)
        t_grad = statistics.median(gradient_times)

        c = settings.block_iterations
        blocks = range(max(1, min(args.iterations, trajectory.num_iterations) // c))
        t0 = time.perf_counter()
        iterations = evaluations = halvings = 0
        for k in blocks:
            result = allocator.compute(k)
            iterations += result.stop - result.start
            evaluations += result.evaluations
            halvings += result.halvings
        t_iter = (time.perf_counter() - t0) / iterations

        eval_model = load_objective(run_dir, settings.splits, settings.eval_batch_size).model
        data = load_dataset(config.data)
        layout = ParameterLayout.from_json(trajectory.layout_json)
        splits = {s: data.split(s) for s in settings.splits}
        start = objective(theta[0])
        straightforward_iteration(
            eval_model,
            layout,
            trajectory.theta[0],
            trajectory.theta[1],
            splits,
            settings.eval_batch_size,
            start,
        )  # warm-up
        t0 = time.perf_counter()
        for t in range(args.baseline_iterations):
            start, _ = straightforward_iteration(
                eval_model,
                layout,
                trajectory.theta[t],
                trajectory.theta[t + 1],
                splits,
                settings.eval_batch_size,
                start,
            )
        t_naive = (time.perf_counter() - t0) / args.baseline_iterations
        train_config = config
        train_config.training.iterations = iterations
        costs = checksum_cost(train_config, tmp, iterations, args.checksum_repeats)

    n = {s: len(data.split(s)[1]) for s in settings.splits}
    print(f"{config.name}: K = {K:,} parameters, splits {n}, eval batch {settings.eval_batch_size}")
    print(
        f"  one full-set gradient (all splits)       {t_grad:8.4f} s   (median of {args.repeats})"
    )
    print(
        f"  allocate, per iteration                  {t_iter:8.4f} s   ({iterations} iterations, "
        f"{evaluations / iterations:.2f} gradients/iteration, {halvings} halvings)"
    )
    print(f"  ratio to the floor of 2 gradients/iter   {t_iter / (2 * t_grad):8.3f}")
    print(f"  straightforward way, per iteration       {t_naive:8.4f} s   (eager, numpy batches)")
    print(f"  baseline ratio to the floor              {t_naive / (2 * t_grad):8.3f}")
    print(f"  speed-up over the straightforward way    {t_naive / t_iter:8.2f} x")
    print(
        f"  allocate with crc32c, per iteration      {costs['with']:8.4f} s   (whole runs of "
        f"{iterations} iterations, lca.zarr written; median of {args.checksum_repeats})"
    )
    print(f"  allocate without checksums               {costs['without']:8.4f} s")
    print(
        f"  checksum cost                            {100 * (costs['with'] / costs['without'] - 1):+7.1f} %"
    )
    print(
        f"  projected allocate of all {trajectory.num_iterations} iterations: "
        f"{t_iter * trajectory.num_iterations:.0f} s on this machine"
    )
