"""TensorFlow against PyTorch on the paper's networks, side by side in one run.

    python scripts/bench.py torch --set data.path=../shared/data/mnist.npz
    python scripts/bench.py torch --networks fc --iterations 4 --repeats 3

For MNIST-FC and MNIST-LeNet (``configs/mnist_fc_sgd.yaml``, ``configs/mnist_lenet_sgd.yaml``)
a short TensorFlow run is trained and its torch twin made from it
(:func:`lca.torch.twin.torch_twin`): the same θ_t in both frameworks, so both do exactly the
same allocation work. Measured, alternating which framework goes first in every repeat:

* one full-set gradient (train and validation splits, as ``lca allocate`` evaluates them);
* the allocation of the first block, per iteration (adaptive rule, float32), with the
  gradients per iteration each needed (equal when both agree on the sub-intervals);
* the torch recorder's cost on a training step: a plain torch loop of the MNIST-FC network
  (batch 250, SGD with momentum) with ``lca.torch.TrajectoryRecorder`` and without.

Ratios are medians over the repeats of the per-repeat ratios (torch / TensorFlow, recorded /
plain), the figure least moved by other load on the machine. Both frameworks run on their default thread
counts unless ``--threads`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from .common import ROOT, interleave, median_ratio, scratch, timed

CONFIGS = {"fc": "configs/mnist_fc_sgd.yaml", "lenet": "configs/mnist_lenet_sgd.yaml"}
#: iterations allocated by default: a LeNet gradient on all 60,000 examples takes seconds
ITERATIONS = {"fc": 8, "lenet": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override, key=value"
    )
    parser.add_argument("--networks", nargs="+", default=["fc", "lenet"], choices=list(CONFIGS))
    parser.add_argument(
        "--iterations",
        type=int,
        help=f"allocated per network [{', '.join(f'{k} {v}' for k, v in ITERATIONS.items())}]",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record-steps", type=int, default=440)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--autocast", action="store_true", help="only: would torch's bfloat16 autocast pay?"
    )


def allocator(run: Path):
    from lca.allocation import BlockAllocator, resolve_settings
    from lca.storage import open_trajectory, read_run_config

    config = read_run_config(run)
    settings = resolve_settings(
        config.allocate,
        open_trajectory(run).theta.shape[1],
        precision="float32",
        framework=config.framework,
    )
    return BlockAllocator(run, settings)


def serve(run: str, threads: int | None, tasks, results) -> None:
    """A worker process holding one framework's allocator: times what it is asked to."""
    from lca.allocation.backends import configure
    from lca.storage import open_trajectory, read_run_config

    configure(read_run_config(run).framework, threads)
    a = allocator(Path(run))
    theta = open_trajectory(run).theta[:2]
    a.objective(theta[0])  # warm-up: compiled functions, caches
    results.put(None)
    while (task := tasks.get()) is not None:
        if task == "gradient":
            results.put((timed(lambda: a.objective(theta[1])), 0))
        else:
            began = time.perf_counter()
            result = a.compute(0)
            results.put((time.perf_counter() - began, result.evaluations))


def compare_allocation(name: str, args: argparse.Namespace, tmp: Path) -> None:
    """Both frameworks in processes of their own (their thread pools would compete in one),
    asked in turn, alternating which goes first."""
    import multiprocessing as mp

    from lca.config import load_config
    from lca.storage import open_trajectory
    from lca.torch.twin import torch_twin
    from lca.training import train

    iterations = args.iterations or ITERATIONS[name]
    overrides = [*args.overrides, f"training.iterations={iterations}"]
    config = load_config(ROOT / CONFIGS[name], overrides)
    config.allocate.block_iterations = iterations
    keras_run = train(config, tmp / f"{name}_tf", progress=False).run_dir
    runs = {"tensorflow": keras_run, "torch": torch_twin(keras_run, tmp / f"{name}_torch")}
    ctx = mp.get_context("spawn")
    workers = {}
    for fw, run in runs.items():
        tasks, results = ctx.Queue(), ctx.Queue()
        process = ctx.Process(target=serve, args=(str(run), args.threads, tasks, results))
        process.start()
        results.get()  # ready
        workers[fw] = (process, tasks, results)

    def ask(fw: str, task: str) -> tuple[float, int]:
        workers[fw][1].put(task)
        return workers[fw][2].get()

    def both(fw: str):
        def gradient_and_allocation(_round: int) -> tuple[float, float, int]:
            gradient = ask(fw, "gradient")[0]
            seconds, evaluations = ask(fw, "allocate")
            return gradient, seconds / iterations, evaluations

        return gradient_and_allocation

    times = interleave({fw: both(fw) for fw in runs}, args.repeats)
    for process, tasks, _ in workers.values():
        tasks.put(None)
        process.join()
    gradient = {fw: [t[0] for t in times[fw]] for fw in runs}
    per_iteration = {fw: [t[1] for t in times[fw]] for fw in runs}
    evaluations = {fw: times[fw][-1][2] for fw in runs}
    ratio_g = median_ratio(gradient["torch"], gradient["tensorflow"])
    ratio_a = median_ratio(per_iteration["torch"], per_iteration["tensorflow"])
    label = {"fc": "MNIST-FC", "lenet": "MNIST-LeNet"}[name]
    size = open_trajectory(keras_run).theta.shape[1]
    print(f"{label} ({size:,} parameters, {iterations} iterations allocated)")
    for fw in runs:
        print(
            f"  {fw:10s}  full-set gradient {statistics.median(gradient[fw]):7.3f} s"
            f"   allocation {statistics.median(per_iteration[fw]):7.3f} s/iteration"
            f"   {evaluations[fw] / iterations:4.2f} gradients/iteration"
        )
    print(f"  torch / TensorFlow: gradient ×{ratio_g:.2f}, allocation ×{ratio_a:.2f}")


def recorder_overhead(args: argparse.Namespace, tmp: Path) -> None:
    import torch

    from lca.torch import TrajectoryRecorder
    from lca.torch.models import FC

    steps = args.record_steps
    rng = np.random.default_rng(0)  # MNIST-sized random data: a step's time does not depend on it
    x = torch.from_numpy(rng.random((11000, 28, 28, 1), np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 11000))
    per_pass = len(y) // 250

    def loop(i: int, record: bool) -> float:
        torch.manual_seed(0)
        model = FC((28, 28, 1), [100, 50], 10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        recorder = None
        if record:
            recorder = TrajectoryRecorder(
                model, optimizer, tmp / f"record_{i}", iterations=steps, train_data=(x, y)
            )
        began = time.perf_counter()
        for t in range(steps):
            batch = slice(t % per_pass * 250, (t % per_pass + 1) * 250)
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if recorder is not None:
            recorder.close()  # the rows still buffered are written: part of the cost
        return time.perf_counter() - began

    loop(-1, False), loop(-2, True)
    times = interleave(
        {True: lambda i: loop(i, True), False: lambda i: loop(i, False)}, args.repeats
    )
    plain, recorded = times[False], times[True]
    ratio = median_ratio(recorded, plain)
    print(
        f"torch recorder on a 784-100-50-10 training loop ({steps} steps of batch 250, SGD): "
        f"plain {statistics.median(plain) / steps * 1e3:.2f} ms/step, recorded "
        f"{statistics.median(recorded) / steps * 1e3:.2f} ms/step, overhead {100 * (ratio - 1):+.1f} %"
    )


def autocast_check(repeats: int) -> None:
    """Whether torch's bfloat16 autocast would pay and certify: a full-set gradient of the
    MNIST-FC twin on 11,000 MNIST-sized random examples in float32 and under
    ``torch.autocast("cpu", bfloat16)``, its time and its distance from float32 per layer."""
    import torch

    from lca.config import ModelConfig
    from lca.torch.models import build_torch_model, torch_layout
    from lca.torch.objective import TorchObjective

    rng = np.random.default_rng(0)
    x = rng.random((11000, 28, 28, 1), np.float32)
    y = rng.integers(0, 10, 11000)
    model = build_torch_model(ModelConfig(name="fc"), (28, 28, 1), 10, 0)
    layout = torch_layout(model)
    names = [e.name.replace("/", ".") for e in layout.entries]
    objective = TorchObjective(model, names, {"train": (x, y)}, 11000)
    theta = layout.flatten([p.detach().numpy() for p in model.parameters()])

    def gradient(bf16: bool) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return objective(theta)["train"][1]

    exact, reduced = gradient(False), gradient(True)
    times = interleave(
        {bf16: lambda _round, bf16=bf16: timed(lambda: gradient(bf16)) for bf16 in (False, True)},
        repeats,
    )
    speed = median_ratio(times[False], times[True])
    errors = ", ".join(
        f"{e.name} {np.linalg.norm(reduced[s] - exact[s]) / np.linalg.norm(exact[s]):.1e}"
        for e in layout.entries
        for s in [slice(e.offset, e.offset + e.size)]
    )
    print(
        f"torch autocast bfloat16, MNIST-FC gradient on 11,000 examples: ×{speed:.2f} faster "
        f"than float32; relative L2 distance from float32: {errors}"
    )


def run(args: argparse.Namespace) -> None:
    from lca.allocation.backends import configure

    if args.threads:
        configure("tensorflow", args.threads)
        configure("torch", args.threads)
    if args.autocast:
        autocast_check(max(args.repeats, 3))
        return
    with scratch() as tmp:
        for name in args.networks:
            compare_allocation(name, args, tmp)
        recorder_overhead(args, tmp)
