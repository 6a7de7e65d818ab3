"""What a torch run carries besides θ, and reading weights without unpickling code.

A run stores θ in ``trajectory.zarr`` and the model's other state (buffers, parameters
outside the optimizer) as plain arrays beside it (`lca.storage.write_fixed_weights`);
the architecture comes from the config (a built-in twin, or ``model.builder``). Nothing of a
run is a pickle. Weight files from elsewhere are read by `load_state_dict`: safetensors,
or ``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor
or a plain container.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..storage import RunError


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of a tensor; bfloat16 (which numpy lacks) as float32."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy().copy()


def fixed_state(model: nn.Module, theta_names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """``(name, value)`` of every buffer and every parameter outside θ, in module order."""
    inside = set(theta_names)
    out = [(n, to_numpy(p)) for n, p in model.named_parameters() if n not in inside]
    return out + [(n, to_numpy(b)) for n, b in model.named_buffers()]


def changed_state(model: nn.Module, theta_names: Sequence[str], before) -> list[str]:
    """Names of fixed state that changed since ``before`` (batch-norm running statistics
    aside: the allocation does not use them)."""
    moving = {
        f"{name}.{stat}" if name else stat
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for stat in ("running_mean", "running_var", "num_batches_tracked")
    }
    now = dict(fixed_state(model, theta_names))
    return [n for n, old in before if n not in moving and not np.array_equal(old, now.get(n))]


def load_fixed_state(model: nn.Module, stored: list[tuple[str, np.ndarray]] | None, where) -> None:
    """Put the stored buffers and parameters outside θ back into a rebuilt model."""
    if not stored:
        return
    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    for name, value in stored:
        target = targets.get(name)
        if target is None or tuple(target.shape) != value.shape:
            raise RunError(
                f"{where}: the rebuilt model has no {name} of shape {value.shape}; does "
                "model.builder still build the recorded model?"
            )
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.asarray(value)))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file, never unpickling
    code: a file that holds anything but tensors and plain containers is a one-line RunError."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise RunError(f"{path}: not a safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(
            f"{path}: refused to unpickle it: it holds objects other than tensors and plain "
            "containers, which could run code when loaded; save a state dict of tensors "
            "(or a .safetensors file)"
        ) from None
    except Exception as exc:
        raise RunError(f"{path}: not a torch checkpoint ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # Lightning-style checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state
