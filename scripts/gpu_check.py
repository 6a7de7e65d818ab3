"""Check the GPU path on a machine with a GPU: same LCA as the CPU, TF32 off, gradient speed.

    python scripts/gpu_check.py                      # on a GPU machine (about 5 minutes)
    python scripts/gpu_check.py --allow-cpu --examples 600 --timing-examples 2000   # no GPU

1. Trains a small CIFAR-shaped run of ResNet20 (synthetic 32×32×3 images, the paper's
   widths, a few iterations), then allocates it twice with the real command line: on GPU 0
   (``lca allocate RUN --gpus 0``, the multi-GPU worker path) and on the CPU alone
   (``CUDA_VISIBLE_DEVICES=-1``), and compares the two: full-set losses, per-iteration
   conservation errors and the LCA arrays must agree within float32 reduction tolerance.
2. Confirms TF32 is off where the allocation runs: TensorFlow's flag, and a float32 matrix
   product on the GPU compared with float64 (TF32 would be ~1e-3 off, float32 ~1e-6).
3. Times one full-set gradient of ResNet20 on 45000 CIFAR-sized examples (the paper's
   training split), the unit of LCA's cost, in each ``allocate.precision``: float32, tf32
   (TF32 tensor cores) and bfloat16 (bf16 backward products). Their losses must be bitwise
   float32's and their gradients within 1 % of it.

4. The same for PyTorch (``framework: torch``): a small LeNet run on MNIST-shaped synthetic
   data allocated on GPU 0 and on the CPU must agree within the same tolerances, torch's
   TF32 must be off where it allocates, and one full-set gradient is timed on the GPU.

Prints each figure and PASS/FAIL; exits 1 on a failed check. Without a GPU it refuses
unless ``--allow-cpu``, which stands a single-threaded CPU worker in for the GPU (to check
the script itself; the figures then say nothing about GPUs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from lca.config import load_config  # noqa: E402
from lca.storage import open_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# float32 sums over thousands of examples in another order (another device, other kernels):
LOSS_RTOL = 1e-5  # relative difference of full-set losses
ERROR_ATOL = 1e-4  # absolute difference of per-iteration conservation errors (loss units)
LCA_RTOL = 1e-3  # largest |ΔA| relative to the largest |A| of the run
TF32_FREE = 1e-4  # relative error of a float32 matmul above this means reduced precision
PRECISIONS = ("float32", "tf32", "bfloat16")  # allocate.precision, compared with float32
# relative L2 distance of a reduced-precision full-set gradient from the float32 one
GRADIENT_RTOL = {"float32": 0.0, "tf32": 1e-2, "bfloat16": 1e-2}


def small_config(examples: int, iterations: int):
    """ResNet20 at the paper's widths on CIFAR-shaped synthetic data: seconds per iteration."""
    return load_config(
        ROOT / "configs" / "cifar_resnet_sgd.yaml",
        [
            "data.name=synthetic",
            "data.synthetic.image_shape=[32, 32, 3]",
            f"data.synthetic.num_examples={examples}",
            f"data.val_size={max(examples // 10, 10)}",
            f"training.iterations={iterations}",
            "training.batch_size=50",
            "training.log_every=0",
            f"allocate.eval_batch_size={min(1000, examples)}",
            "allocate.chunk_iterations=4",
        ],
    )


def run_cli(args: list[str], env: dict[str, str]) -> float:
    """Run ``lca …`` in a fresh process (its own device view); return its wall time."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lca.cli", *args], env={**os.environ, **env}, cwd=ROOT
    )
    if done.returncode != 0:
        sys.exit(f"error: `lca {' '.join(args)}` failed (exit {done.returncode})")
    return time.perf_counter() - start


def compare(a_dir: Path, b_dir: Path) -> dict[str, float]:
    """Largest differences between two allocations of the same run."""
    a, b = open_run(a_dir), open_run(b_dir)
    out = {"loss": 0.0, "error": 0.0, "lca": 0.0, "max_error": 0.0}
    for split in a.splits:
        la, lb = a.loss(split), b.loss(split)
        out["loss"] = max(out["loss"], float(np.max(np.abs(la - lb) / np.abs(lb))))
        ea, eb = a.error(split), b.error(split)
        out["error"] = max(out["error"], float(np.max(np.abs(ea - eb))))
        out["max_error"] = max(out["max_error"], float(np.abs(ea).max()), float(np.abs(eb).max()))
        xa, xb = np.asarray(a.lca(split)[:]), np.asarray(b.lca(split)[:])
        out["lca"] = max(out["lca"], float(np.abs(xa - xb).max() / np.abs(xb).max()))
    return out


def tf32_check(tf) -> tuple[bool, float]:
    """TensorFlow's TF32 flag and the measured precision of a float32 product on the device."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    product = tf.linalg.matmul(tf.constant(a), tf.constant(b)).numpy()
    relative = float(np.abs(product - exact).max() / np.abs(exact).max())
    return bool(tf.config.experimental.tensor_float_32_execution_enabled()), relative


def gradient_timings(examples: int, repeats: int) -> tuple[dict[str, dict], str]:
    """One full-set gradient of ResNet20 on ``examples`` CIFAR-sized images, per precision.

    For each ``allocate.precision``: the median time, whether the loss is bitwise the float32
    one (it must be: the loss defines ΔL), and the gradient's relative L2 distance from the
    float32 gradient.
    """
    from lca.allocation import load_objective
    from lca.training import train

    config = load_config(
        ROOT / "configs" / "cifar_resnet_sgd.yaml",
        [
            "data.name=synthetic",
            "data.synthetic.image_shape=[32, 32, 3]",
            f"data.synthetic.num_examples={examples + 5000}",
            "data.val_size=5000",
            "training.iterations=1",
            "training.log_every=0",
        ],
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "timing"
        train(config, run_dir, progress=False)
        exact = load_objective(run_dir, ["train"], config.allocate.eval_batch_size)
        theta = np.asarray(open_run(run_dir).theta[1])
        reference = None
        for precision in PRECISIONS:
            objective = exact if precision == "float32" else exact.with_precision(precision)
            loss, grad = objective(theta)["train"]  # trace and warm up
            reference = reference or (loss, grad)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                objective(theta)
                times.append(time.perf_counter() - start)
            results[precision] = {
                "seconds": float(np.median(times)),
                "loss_bitwise": loss == reference[0],
                "gradient_error": float(
                    np.linalg.norm(grad - reference[1]) / np.linalg.norm(reference[1])
                ),
            }
    return results, f"{examples} examples, eval batches of {config.allocate.eval_batch_size}"


def torch_checks(args, failures: list[str]) -> None:
    """Check 4: the torch allocation on GPU 0 against the CPU, TF32 off, gradient times."""
    import torch

    from lca.allocation import load_objective
    from lca.torch.runtime import configure_torch

    gpu = torch.cuda.is_available()
    config = load_config(
        ROOT / "configs" / "mnist_lenet_sgd.yaml",
        [
            "framework=torch",
            "data.name=synthetic",
            "data.synthetic.image_shape=[28, 28, 1]",
            f"data.synthetic.num_examples={args.examples}",
            f"data.val_size={max(args.examples // 10, 10)}",
            f"training.iterations={args.iterations}",
            "training.batch_size=50",
            "training.log_every=0",
            f"allocate.eval_batch_size={min(1000, args.examples)}",
            "allocate.chunk_iterations=4",
        ],
    )
    from lca.training import train

    with tempfile.TemporaryDirectory() as tmp:
        on_gpu, on_cpu = Path(tmp) / "torch_gpu", Path(tmp) / "torch_cpu"
        train(config, on_gpu, progress=False)
        subprocess.run(["cp", "-r", str(on_gpu), str(on_cpu)], check=True)
        where = ["--gpus", "0"] if gpu else ["--threads", "1"]
        first = run_cli(["allocate", str(on_gpu), *where], {})
        second = run_cli(["allocate", str(on_cpu)], {"CUDA_VISIBLE_DEVICES": ""})
        diff = compare(on_gpu, on_cpu)
        objective = load_objective(on_gpu, ["train"], config.allocate.eval_batch_size)
        theta = np.asarray(open_run(on_gpu).theta[1])
        objective(theta)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            objective(theta)
            times.append(time.perf_counter() - start)
    print(
        f"torch LeNet run ({args.examples} examples, {args.iterations} iterations): allocate "
        f"{first:.1f} s on {'GPU 0' if gpu else 'CPU, 1 thread'}, {second:.1f} s on the CPU"
    )
    for label, value, limit in (
        ("full-set losses, largest relative difference", diff["loss"], LOSS_RTOL),
        ("per-iteration errors, largest difference", diff["error"], ERROR_ATOL),
        ("LCA, largest difference / largest |A|", diff["lca"], LCA_RTOL),
    ):
        ok = value <= limit
        print(f"  {label}: {value:.2e} (limit {limit:.0e}) {'PASS' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"torch {label}")
    configure_torch()  # what lca allocate does: TF32 off
    if gpu:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((1024, 1024)).astype(np.float32)
        b = rng.standard_normal((1024, 1024)).astype(np.float32)
        exact = a.astype(np.float64) @ b.astype(np.float64)
        product = (torch.from_numpy(a).cuda() @ torch.from_numpy(b).cuda()).cpu().numpy()
        relative = float(np.abs(product - exact).max() / np.abs(exact).max())
        ok = not torch.backends.cuda.matmul.allow_tf32 and relative <= TF32_FREE
        print(
            f"torch TF32: float32 matmul relative error {relative:.1e} {'PASS' if ok else 'FAIL'}"
        )
        if not ok:
            failures.append("torch TF32")
    print(
        f"torch one full-set gradient (train split) on {'GPU 0' if gpu else 'the CPU'}: "
        f"{np.median(times):.3f} s (median of {args.repeats})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="size of the small run")
    parser.add_argument("--iterations", type=int, default=8, help="iterations of the small run")
    parser.add_argument("--timing-examples", type=int, default=45000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--allow-cpu", action="store_true", help="no GPU: check the script")
    args = parser.parse_args()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # leave memory to the allocation worker processes started below
        tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus and not args.allow_cpu:
        print("error: no GPU visible to TensorFlow; run this on a GPU machine (or --allow-cpu)")
        return 2
    from lca.tensorflow.runtime import configure_tensorflow
    from lca.training import train

    configure_tensorflow()  # what lca allocate does: TF32 off
    device = gpus[0].name if gpus else "CPU (--allow-cpu: standing in for the GPU)"
    print(f"device: {device}; TensorFlow {tf.__version__}")
    failures = []

    with tempfile.TemporaryDirectory() as tmp:
        on_gpu, on_cpu = Path(tmp) / "on_gpu", Path(tmp) / "on_cpu"
        config = small_config(args.examples, args.iterations)
        train(config, on_gpu, progress=False)
        subprocess.run(["cp", "-r", str(on_gpu), str(on_cpu)], check=True)
        if gpus:
            first = run_cli(["allocate", str(on_gpu), "--gpus", "0"], {})
        else:
            first = run_cli(["allocate", str(on_gpu), "--threads", "1"], {})
        second = run_cli(["allocate", str(on_cpu)], {"CUDA_VISIBLE_DEVICES": "-1"})
        diff = compare(on_gpu, on_cpu)
    print(
        f"small ResNet20 run ({args.examples} examples, {args.iterations} iterations): "
        f"allocate {first:.1f} s on {'GPU 0' if gpus else 'CPU, 1 thread'}, "
        f"{second:.1f} s on the CPU"
    )
    checks = [
        ("full-set losses, largest relative difference", diff["loss"], LOSS_RTOL),
        ("per-iteration errors, largest difference", diff["error"], ERROR_ATOL),
        ("LCA, largest difference / largest |A|", diff["lca"], LCA_RTOL),
    ]
    for label, value, limit in checks:
        ok = value <= limit
        print(f"  {label}: {value:.2e} (limit {limit:.0e}) {'PASS' if ok else 'FAIL'}")
        if not ok:
            failures.append(label)
    print(f"  largest |conservation error| of either: {diff['max_error']:.2e}")

    flag, relative = tf32_check(tf)
    ok = not flag and relative <= TF32_FREE
    print(
        f"TF32: flag {'on' if flag else 'off'}; float32 matmul relative error {relative:.1e} "
        f"on {device} (TF32 would be ~1e-3) {'PASS' if ok else 'FAIL'}"
    )
    if not ok:
        failures.append("TF32")

    timings, what = gradient_timings(args.timing_examples, args.repeats)
    print(f"one full-set gradient of ResNet20 ({what}), median of {args.repeats}:")
    base = timings["float32"]["seconds"]
    for precision, t in timings.items():
        ok = t["loss_bitwise"] and t["gradient_error"] <= GRADIENT_RTOL[precision]
        print(
            f"  {precision:<9} {t['seconds']:8.3f} s ({base / t['seconds']:.2f}x float32), loss "
            f"{'bitwise float32' if t['loss_bitwise'] else 'NOT float32'}, gradient off by "
            f"{t['gradient_error']:.1e} (limit {GRADIENT_RTOL[precision]:.0e}) "
            f"{'PASS' if ok else 'FAIL'}"
        )
        if not ok:
            failures.append(f"precision {precision}")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch: not installed (pip install -e '.[torch]'); its checks are skipped")
    else:
        torch_checks(args, failures)
    print("PASS" if not failures else f"FAIL: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
