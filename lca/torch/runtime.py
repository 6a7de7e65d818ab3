"""PyTorch run-time pieces that training and allocation share: the run's loss per example,
the evaluation mode that makes L a function of θ alone, the device, thread and TF32 settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..config import ModelError


def per_example_loss(name: str = "sparse_categorical_crossentropy", from_logits: bool = True):
    """``f(outputs, y) -> (N,)`` losses, the formulas of the TensorFlow path's
    `lca.tensorflow.runtime.per_example_loss` (Keras' clipping of probabilities included)."""
    if name == "sparse_categorical_crossentropy":
        if from_logits:
            return lambda out, y: nn.functional.cross_entropy(
                out.float(), y.reshape(-1).long(), reduction="none"
            )

        def from_probabilities(out, y):
            p = out.float() / out.float().sum(-1, keepdim=True)
            p = p.clamp(1e-7, 1 - 1e-7)
            return -torch.log(p).gather(-1, y.reshape(-1, 1).long()).squeeze(-1)

        return from_probabilities
    if name == "mean_squared_error":

        def mse(out, y):
            out, y = out.float(), y.float()
            if y.dim() == out.dim() - 1:
                y = y[..., None]
            return (out - y).square().reshape(out.shape[0], -1).mean(1)

        return mse
    raise ValueError(f"unknown loss {name!r}")


def evaluation_mode(model: nn.Module) -> list[str]:
    """Dropout off, batch norm on the statistics of each evaluation batch; returns the
    batch-norm modules switched. θ is then all the loss depends on (moving averages are not
    parameters), as the TensorFlow path's evaluation variants compute it."""
    model.eval()
    switched = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]
    if switched:
        torch.func.replace_all_batch_norm_modules_(model)
    return switched


def check_deterministic(model: nn.Module, x: torch.Tensor) -> None:
    """One line (ModelError) unless two forward passes on ``x`` agree bitwise."""
    with torch.no_grad():
        first, second = model(x), model(x)
    if not torch.equal(first, second):
        raise ModelError(
            "model: the loss is not a deterministic function of the trainable weights: the "
            "model gives different values on the same input in eval() mode (dropout, noise "
            "or random ops active at evaluation)"
        )


def configure_torch(threads: int | None = None) -> None:
    """Thread counts (``--threads``; default: torch's) and TF32 off on GPUs (matrix products
    and cuDNN convolutions): only the gradient passes of ``allocate.precision: tf32`` allow
    it (`tf32_allowed`)."""
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@contextlib.contextmanager
def tf32_allowed(enabled: bool = True) -> Iterator[None]:
    """Allow (or forbid) TF32 in CUDA matrix products and cuDNN convolutions for the calls
    inside; both flags are restored after. No effect on CPUs, which have no TF32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def device() -> torch.device:
    """CUDA when torch sees a GPU (``--gpus`` sets which one), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def visible_gpus() -> list[str]:
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def as_tensor(a: np.ndarray, where: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(where)


def seed_step(seed: int, iteration: int) -> None:
    """Seed torch's generators for training iteration ``iteration`` of a run seeded ``seed``.

    Each update draws its dropout masks from a generator seeded by (seed, iteration) alone,
    so a resumed run and the ``--causes`` replay of step t draw exactly the masks of step t.
    """
    torch.manual_seed((int(seed) * 1_000_003 + int(iteration)) % 2**63)


def versions() -> dict[str, str]:
    return {"torch": torch.__version__}
