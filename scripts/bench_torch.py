"""TensorFlow against PyTorch on the paper's networks, side by side in one run.

    python scripts/bench_torch.py --set data.path=../shared/data/mnist.npz
    python scripts/bench_torch.py --networks fc --iterations 4 --repeats 3

For MNIST-FC and MNIST-LeNet (``configs/mnist_fc_sgd.yaml``, ``configs/mnist_lenet_sgd.yaml``)
a short TensorFlow run is trained and its torch twin made from it
(:func:`lca.torch.twin.torch_twin`): the same θ_t in both frameworks, so both do exactly the
same allocation work. Measured, alternating which framework goes first in every repeat:

* one full-set gradient (train and validation splits, as ``lca allocate`` evaluates them);
* the allocation of the first work unit, per iteration (adaptive rule, float32), with the
  gradients per iteration each needed (equal when both agree on the sub-intervals);
* the torch recorder's cost on a training step: a plain torch loop of the MNIST-FC network
  (batch 250, SGD with momentum) with ``lca.torch.TrajectoryRecorder`` and without.

Ratios are medians over the repeats of the per-repeat ratios (torch / TensorFlow, recorded /
plain), the figure least moved by other load on the machine. Both frameworks run on their default thread
counts unless ``--threads`` is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from lca.allocation import ChunkAllocator, resolve_settings  # noqa: E402
from lca.allocation.backends import configure  # noqa: E402
from lca.config import load_config  # noqa: E402
from lca.storage import open_trajectory, read_run_config  # noqa: E402
from lca.training import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"fc": "configs/mnist_fc_sgd.yaml", "lenet": "configs/mnist_lenet_sgd.yaml"}
#: iterations allocated by default: a LeNet gradient on all 60,000 examples takes seconds
ITERATIONS = {"fc": 8, "lenet": 2}


def allocator(run: Path) -> ChunkAllocator:
    config = read_run_config(run)
    settings = resolve_settings(
        config.allocate,
        open_trajectory(run).theta.shape[1],
        precision="float32",
        framework=config.framework,
    )
    return ChunkAllocator(run, settings)


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def serve(run: str, threads: int | None, tasks, results) -> None:
    """A worker process holding one framework's allocator: times what it is asked to."""
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


def compare_allocation(name: str, args, tmp: Path) -> None:
    """Both frameworks in processes of their own (their thread pools would compete in one),
    asked in turn, alternating which goes first."""
    import multiprocessing as mp

    from lca.torch.twin import torch_twin

    iterations = args.iterations or ITERATIONS[name]
    overrides = [*args.set, f"training.iterations={iterations}"]
    config = load_config(ROOT / CONFIGS[name], overrides)
    config.allocate.chunk_iterations = iterations
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

    gradient = {fw: [] for fw in runs}
    per_iteration = {fw: [] for fw in runs}
    evaluations = {}
    for r in range(args.repeats):
        for fw in list(runs) if r % 2 == 0 else list(reversed(runs)):
            gradient[fw].append(ask(fw, "gradient")[0])
            seconds, evaluations[fw] = ask(fw, "allocate")
            per_iteration[fw].append(seconds / iterations)
    for process, tasks, _ in workers.values():
        tasks.put(None)
        process.join()
    ratio_g = statistics.median(t / f for t, f in zip(gradient["torch"], gradient["tensorflow"]))
    ratio_a = statistics.median(
        t / f for t, f in zip(per_iteration["torch"], per_iteration["tensorflow"])
    )
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


def recorder_overhead(args, tmp: Path) -> None:
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
    plain, recorded = [], []
    for r in range(args.repeats):
        for record in (True, False) if r % 2 == 0 else (False, True):
            (recorded if record else plain).append(loop(r, record))
    ratio = statistics.median(a / b for a, b in zip(recorded, plain))
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
    times = {False: [], True: []}
    for r in range(repeats):
        for bf16 in (False, True) if r % 2 == 0 else (True, False):
            times[bf16].append(timed(lambda bf16=bf16: gradient(bf16)))
    speed = statistics.median(a / b for a, b in zip(times[False], times[True]))
    errors = ", ".join(
        f"{e.name} {np.linalg.norm(reduced[s] - exact[s]) / np.linalg.norm(exact[s]):.1e}"
        for e in layout.entries
        for s in [slice(e.offset, e.offset + e.size)]
    )
    print(
        f"torch autocast bfloat16, MNIST-FC gradient on 11,000 examples: ×{speed:.2f} faster "
        f"than float32; relative L2 distance from float32: {errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="config override, key=value")
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
    args = parser.parse_args()
    if args.threads:
        configure("tensorflow", args.threads)
        configure("torch", args.threads)
    if args.autocast:
        autocast_check(max(args.repeats, 3))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks:
            compare_allocation(name, args, Path(tmp))
        recorder_overhead(args, Path(tmp))


if __name__ == "__main__":
    main()
