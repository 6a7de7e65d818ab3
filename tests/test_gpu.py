"""On a machine with a GPU: the GPU path allocates what the CPU does, TF32 stays off there, and
the reduced precisions keep the loss bitwise float32's.

    python -m pytest -m gpu tests/test_gpu.py -n0 -s       # on a GPU machine (about 5 minutes)

1. A small CIFAR-shaped run of ResNet20 (synthetic 32×32×3 images, the paper's widths, a few
   iterations) is allocated twice with the real command line: on GPU 0 (``lca allocate RUN
   --gpus 0``, the multi-GPU worker path) and on the CPU alone (``CUDA_VISIBLE_DEVICES=-1``);
   full-set losses, per-iteration conservation errors and the LCA arrays must agree within
   float32 reduction tolerance.
2. TF32 is off where the allocation runs: TensorFlow's flag, and a float32 matrix product on
   the GPU compared with float64 (TF32 would be ~1e-3 off, float32 ~1e-6).
3. One full-set gradient of ResNet20 on 45,000 CIFAR-sized examples (the paper's training
   split), the unit of LCA's cost, in each ``allocate.precision`` (float32, tf32, bfloat16):
   the loss must be bitwise float32's and the gradient within 1 % of it. Times are printed.
4. The same for PyTorch (``framework: torch``): a small LeNet run on MNIST-shaped synthetic
   data allocated on GPU 0 and on the CPU must agree within the same tolerances, torch's TF32
   must be off where it allocates, and one full-set gradient is timed on the GPU.

Skipped where no GPU is visible. ``LCA_GPU_TEST_ON_CPU=1`` stands a single-threaded CPU worker
in for the GPU, to check these tests themselves (their figures then say nothing about GPUs);
``LCA_GPU_TEST_EXAMPLES`` (5000), ``LCA_GPU_TEST_ITERATIONS`` (8),
``LCA_GPU_TEST_TIMING_EXAMPLES`` (45000) and ``LCA_GPU_TEST_REPEATS`` (5) size the runs, e.g.
``LCA_GPU_TEST_ON_CPU=1 LCA_GPU_TEST_EXAMPLES=600 LCA_GPU_TEST_TIMING_EXAMPLES=2000``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, cli_env

ROOT = Path(__file__).parents[1]
ON_CPU = os.environ.get("LCA_GPU_TEST_ON_CPU") == "1"
EXAMPLES = int(os.environ.get("LCA_GPU_TEST_EXAMPLES", 5000))
ITERATIONS = int(os.environ.get("LCA_GPU_TEST_ITERATIONS", 8))
TIMING_EXAMPLES = int(os.environ.get("LCA_GPU_TEST_TIMING_EXAMPLES", 45000))
REPEATS = int(os.environ.get("LCA_GPU_TEST_REPEATS", 5))

# float32 sums over thousands of examples in another order (another device, other kernels):
LOSS_RTOL = 1e-5  # relative difference of full-set losses
ERROR_ATOL = 1e-4  # absolute difference of per-iteration conservation errors (loss units)
LCA_RTOL = 1e-3  # largest |ΔA| relative to the largest |A| of the run
TF32_FREE = 1e-4  # relative error of a float32 matmul above this means reduced precision
# relative L2 distance of a reduced-precision full-set gradient from the float32 one
GRADIENT_RTOL = {"float32": 0.0, "tf32": 1e-2, "bfloat16": 1e-2}


def _nvidia_device() -> bool:
    """Whether this machine has an NVIDIA GPU at all (cheap: no TensorFlow at collection)."""
    return shutil.which("nvidia-smi") is not None or any(Path("/dev").glob("nvidia[0-9]*"))


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (_nvidia_device() or ON_CPU),
        reason="no GPU on this machine (LCA_GPU_TEST_ON_CPU=1 checks these tests on the CPU)",
    ),
]


@pytest.fixture(scope="module")
def tf_device() -> str:
    """The device the GPU checks run on: GPU 0 as TensorFlow sees it, or the CPU standing in.

    GPU memory grows as needed, leaving room to the allocation's worker processes.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # RuntimeError: another test of this process has started TensorFlow on it already
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus and not ON_CPU:
        pytest.skip("TensorFlow sees no GPU on this machine (a CPU-only build?)")
    from lca.tensorflow.runtime import configure_tensorflow

    configure_tensorflow()  # what lca allocate does: TF32 off
    device = gpus[0].name if gpus else "CPU (LCA_GPU_TEST_ON_CPU: standing in for the GPU)"
    print(f"\ndevice: {device}; TensorFlow {tf.__version__}")
    return device


def _config(base: str, examples: int, iterations: int, shape: str, *extra: str):
    from lca.config import load_config

    return load_config(
        ROOT / "configs" / base,
        [
            "data.name=synthetic",
            f"data.synthetic.image_shape={shape}",
            f"data.synthetic.num_examples={examples}",
            f"training.iterations={iterations}",
            "training.log_every=0",
            *extra,
        ],
    )


def _small_run_config(base: str, shape: str, *extra: str):
    """A run allocated in seconds per iteration: ``EXAMPLES`` images, ``ITERATIONS`` steps."""
    return _config(
        base,
        EXAMPLES,
        ITERATIONS,
        shape,
        f"data.val_size={max(EXAMPLES // 10, 10)}",
        "training.batch_size=50",
        f"allocate.eval_batch_size={min(1000, EXAMPLES)}",
        "allocate.block_iterations=4",
        *extra,
    )


def _allocate(run_dir: Path, where: list[str], **env: str) -> float:
    """``lca allocate RUN WHERE…`` in a fresh process (its own device view); its wall time."""
    began = time.perf_counter()
    # no time limit: the CPU's allocation of a ResNet20 run takes what the CPU takes
    done = cli("allocate", str(run_dir), *where, timeout=None, env=cli_env(**env), cwd=ROOT)
    assert done.returncode == 0, f"lca allocate {run_dir.name} {where} failed:\n{done.stderr}"
    return time.perf_counter() - began


def _on_device_and_on_cpu(run_dir: Path, tmp_path: Path, gpu: bool, hide: str) -> dict:
    """Copies of ``run_dir`` allocated on GPU 0 (or a 1-thread CPU worker standing in) and
    on the CPU with the GPU hidden (``CUDA_VISIBLE_DEVICES=hide``): their largest differences."""
    from lca.storage import open_run

    on_gpu, on_cpu = tmp_path / "on_gpu", tmp_path / "on_cpu"
    shutil.copytree(run_dir, on_gpu)
    shutil.copytree(run_dir, on_cpu)
    first = _allocate(on_gpu, ["--gpus", "0"] if gpu else ["--threads", "1"])
    second = _allocate(on_cpu, [], CUDA_VISIBLE_DEVICES=hide)
    print(
        f"{run_dir.name}: allocate {first:.1f} s on {'GPU 0' if gpu else 'CPU, 1 thread'}, "
        f"{second:.1f} s on the CPU"
    )
    a, b = open_run(on_gpu), open_run(on_cpu)
    out = {"loss": 0.0, "error": 0.0, "lca": 0.0, "max_error": 0.0}
    for split in a.splits:
        la, lb = a.loss(split), b.loss(split)
        out["loss"] = max(out["loss"], float(np.max(np.abs(la - lb) / np.abs(lb))))
        ea, eb = a.error(split), b.error(split)
        out["error"] = max(out["error"], float(np.max(np.abs(ea - eb))))
        out["max_error"] = max(out["max_error"], float(np.abs(ea).max()), float(np.abs(eb).max()))
        xa, xb = np.asarray(a.lca(split)[:]), np.asarray(b.lca(split)[:])
        out["lca"] = max(out["lca"], float(np.abs(xa - xb).max() / np.abs(xb).max()))
    print(f"  largest |conservation error| of either: {out['max_error']:.2e}")
    return out


def _assert_agree(diff: dict[str, float]) -> None:
    limits = {
        "loss": ("full-set losses, largest relative difference", LOSS_RTOL),
        "error": ("per-iteration errors, largest difference", ERROR_ATOL),
        "lca": ("LCA, largest difference / largest |A|", LCA_RTOL),
    }
    for key, (label, limit) in limits.items():
        print(f"  {label}: {diff[key]:.2e} (limit {limit:.0e})")
    assert all(diff[key] <= limit for key, (_, limit) in limits.items()), diff


def _float32_matmul_error(multiply) -> float:
    """Largest error of a 1024² float32 product on the device, relative to float64's."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    return float(np.abs(multiply(a, b) - exact).max() / np.abs(exact).max())


def _median_seconds(fn) -> float:
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return float(np.median(times))


# --- TensorFlow ------------------------------------------------------------------------------


def test_tensorflow_allocation_on_the_gpu_is_the_cpus(tf_device, tmp_path):
    from lca.training import train

    config = _small_run_config("cifar_resnet_sgd.yaml", "[32, 32, 3]")
    run_dir = train(config, tmp_path / "resnet20", progress=False).run_dir
    _assert_agree(_on_device_and_on_cpu(run_dir, tmp_path, not ON_CPU, hide="-1"))


def test_tensorflow_tf32_is_off(tf_device):
    import tensorflow as tf

    flag = tf.config.experimental.tensor_float_32_execution_enabled()
    relative = _float32_matmul_error(
        lambda a, b: tf.linalg.matmul(tf.constant(a), tf.constant(b)).numpy()
    )
    print(f"TF32: flag {'on' if flag else 'off'}; float32 matmul relative error {relative:.1e}")
    assert not flag
    assert relative <= TF32_FREE, "float32 products are computed in reduced precision"


def test_reduced_precisions_keep_the_loss_and_the_gradient(tf_device, tmp_path):
    """One full-set gradient of ResNet20 per ``allocate.precision``: the loss bitwise float32's
    (it defines ΔL), the gradient within GRADIENT_RTOL of float32's; the times printed."""
    from lca.allocation import load_objective
    from lca.storage import open_run
    from lca.training import train

    config = _config(
        "cifar_resnet_sgd.yaml",
        TIMING_EXAMPLES + 5000,
        1,
        "[32, 32, 3]",
        "data.val_size=5000",
    )
    train(config, tmp_path / "timing", progress=False)
    exact = load_objective(tmp_path / "timing", ["train"], config.allocate.eval_batch_size)
    theta = np.asarray(open_run(tmp_path / "timing").theta[1])
    print(
        f"one full-set gradient of ResNet20 ({TIMING_EXAMPLES} examples, eval batches of "
        f"{config.allocate.eval_batch_size}), median of {REPEATS}:"
    )
    reference = base = None
    failures = []
    for precision in GRADIENT_RTOL:
        objective = exact if precision == "float32" else exact.with_precision(precision)
        loss, grad = objective(theta)["train"]  # trace and warm up
        reference = reference or (loss, grad)
        seconds = _median_seconds(lambda objective=objective: objective(theta))
        base = base or seconds
        error = float(np.linalg.norm(grad - reference[1]) / np.linalg.norm(reference[1]))
        print(
            f"  {precision:<9} {seconds:8.3f} s ({base / seconds:.2f}x float32), loss "
            f"{'bitwise float32' if loss == reference[0] else 'NOT float32'}, gradient off by "
            f"{error:.1e} (limit {GRADIENT_RTOL[precision]:.0e})"
        )
        if loss != reference[0] or error > GRADIENT_RTOL[precision]:
            failures.append(precision)
    assert not failures, f"precisions off float32: {failures}"


# --- PyTorch ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_gpu(tf_device) -> bool:
    """Whether torch sees a GPU (else the CPU stands in, as for TensorFlow)."""
    torch = pytest.importorskip("torch")
    gpu = torch.cuda.is_available()
    if not gpu and not ON_CPU:
        pytest.skip("torch sees no GPU on this machine (a CPU-only build?)")
    return gpu


@pytest.fixture(scope="module")
def torch_run(torch_gpu, tmp_path_factory) -> Path:
    """A small torch LeNet run on MNIST-shaped synthetic data, not allocated."""
    from lca.training import train

    config = _small_run_config("mnist_lenet_sgd.yaml", "[28, 28, 1]", "framework=torch")
    return train(config, tmp_path_factory.mktemp("torch") / "run", progress=False).run_dir


def test_torch_allocation_on_the_gpu_is_the_cpus(torch_gpu, torch_run, tmp_path):
    _assert_agree(_on_device_and_on_cpu(torch_run, tmp_path, torch_gpu, hide=""))


def test_torch_tf32_is_off(torch_gpu):
    import torch

    from lca.torch.runtime import configure_torch

    configure_torch()  # what lca allocate does: TF32 off
    if not torch_gpu:
        pytest.skip("torch's TF32 exists only on a GPU")
    relative = _float32_matmul_error(
        lambda a, b: (torch.from_numpy(a).cuda() @ torch.from_numpy(b).cuda()).cpu().numpy()
    )
    print(f"torch TF32: float32 matmul relative error {relative:.1e}")
    assert not torch.backends.cuda.matmul.allow_tf32
    assert relative <= TF32_FREE, "float32 products are computed in reduced precision"


def test_torch_full_set_gradient(torch_gpu, torch_run):
    """One full-set gradient of the torch LeNet on its device: finite, and timed."""
    from lca.allocation import load_objective
    from lca.storage import open_run, read_run_config

    batch = read_run_config(torch_run).allocate.eval_batch_size
    objective = load_objective(torch_run, ["train"], batch)
    theta = np.asarray(open_run(torch_run).theta[1])
    loss, grad = objective(theta)["train"]
    seconds = _median_seconds(lambda: objective(theta))
    where = "GPU 0" if torch_gpu else "the CPU"
    print(f"torch one full-set gradient (train split) on {where}: {seconds:.3f} s")
    assert np.isfinite(loss) and np.isfinite(grad).all()
