"""PyTorch state dicts (``.safetensors``, ``torch.save`` files) read as θ, for ``lca import``.

The model is built from the config as ``lca train`` builds it (a built-in twin or
``model.builder``); each file is read by `lca.torch.state.load_state_dict`, which
unpickles nothing, and checked against the model: every parameter and buffer present with
the model's shape, nothing else. The prefixes DistributedDataParallel (``module.``) and
``torch.compile`` (``_orig_mod.``) add to every name are taken off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Config
from ..storage import RunError
from .models import build_torch_model, torch_layout
from .runtime import versions
from .state import load_state_dict, to_numpy

#: prefixes a wrapped model's state dict puts before every name
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class TorchCheckpoints:
    """θ (and the state outside it) of each state-dict file, checked against the model."""

    framework = "torch"

    def __init__(self, config: Config, dataset) -> None:
        self.model = build_torch_model(
            config.model, dataset.input_shape, dataset.num_classes, config.training.seed
        )
        self.layout = torch_layout(self.model)
        self.names = [e.name.replace("/", ".") for e in self.layout.entries]
        inside = set(self.names)
        self.shapes = {n: tuple(p.shape) for n, p in self.model.named_parameters()}
        self.shapes.update({n: tuple(b.shape) for n, b in self.model.named_buffers()})
        self.fixed_names = [n for n in self.shapes if n not in inside]
        self.versions = versions()

    def read(self, path: Path) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        """θ of the file (flat float32, layout order) and the state outside θ."""
        try:
            state = load_state_dict(path)
        except RunError as exc:
            raise RunError(f"not a checkpoint: {exc}") from None
        state = _unwrapped(state)
        for name, shape in self.shapes.items():
            if name not in state:
                raise RunError(f"{path}: has no {name} (shape {shape}); another model?")
            found = tuple(state[name].shape)
            if found != shape:
                raise RunError(f"{path}: {name} has shape {found}, the model's is {shape}")
        extra = [n for n in state if n not in self.shapes]
        if extra:
            shape = tuple(state[extra[0]].shape)
            raise RunError(
                f"{path}: holds {extra[0]} (shape {shape}), which the model does not have"
            )
        theta = np.concatenate(
            [np.asarray(to_numpy(state[n]), np.float32).reshape(-1) for n in self.names]
        )
        return theta, [(n, to_numpy(state[n])) for n in self.fixed_names]

    def changed(self, before: list, now: list) -> list[str]:
        """Names of state outside θ, batch-norm statistics aside, that differ between two
        files' `read` (the loss would not be a function of θ alone)."""
        from torch import nn

        moving = {
            f"{name}.{stat}" if name else stat
            for name, m in self.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for stat in ("running_mean", "running_var", "num_batches_tracked")
        }
        return [
            n
            for (n, old), (_, new) in zip(before, now, strict=True)
            if n not in moving and not np.array_equal(old, new)
        ]


def _unwrapped(state: dict) -> dict:
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state
