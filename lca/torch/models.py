"""PyTorch networks of ``lca train`` and what LCA needs to know about any ``nn.Module``.

The built-ins are the TensorFlow networks' twins: the same layers, names, initialisation
scheme and input layout (images NHWC, as the datasets give them; the convolutions permute to
NCHW inside), and the same flattening order, so that θ maps one to one between the two
frameworks (`keras_to_torch`: kernels transposed). Their θ is ``named_parameters()`` in
order, with torch's shapes (a linear layer's weight is (out, in)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..config import TORCH_MODEL_NAMES, ConfigError, ModelConfig, ModelError, import_function
from ..layout import ParameterEntry, ParameterLayout


class FC(nn.Module):
    """784-100-50-10 (by default): flatten, dense layers with ReLU, logits out."""

    def __init__(self, input_shape: Sequence[int], hidden_units: Sequence[int], classes: int):
        super().__init__()
        sizes = [int(np.prod(input_shape)), *hidden_units, classes]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            self.add_module(f"dense_{i}", nn.Linear(a, b))
        self.depth = len(sizes) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"dense_{i}")(x)
            if i < self.depth:
                x = torch.relu(x)
        return x


class LeNet(nn.Module):
    """conv 5×5 'same' → pool → conv → pool → dropout → dense → dropout → dense (logits)."""

    def __init__(self, input_shape: Sequence[int], cfg: ModelConfig, classes: int):
        super().__init__()
        if len(cfg.conv_filters) != 2:
            raise ConfigError(f"model.conv_filters: lenet needs 2, got {cfg.conv_filters}")
        h, w, c = input_shape
        f1, f2 = cfg.conv_filters
        self.conv_1 = nn.Conv2d(c, f1, 5, padding=2)
        self.conv_2 = nn.Conv2d(f1, f2, 5, padding=2)
        self.dropout_1 = nn.Dropout(0.25)
        self.dense_1 = nn.Linear((h // 4) * (w // 4) * f2, cfg.dense_units)
        self.dropout_2 = nn.Dropout(0.5)
        self.dense_2 = nn.Linear(cfg.dense_units, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC data, NCHW convolutions
        x = nn.functional.max_pool2d(torch.relu(self.conv_1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv_2(x)), 2)
        x = self.dropout_1(x)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flattened as Keras flattens
        x = self.dropout_2(torch.relu(self.dense_1(x)))
        return self.dense_2(x)


def _he_normal_(module: nn.Module) -> None:
    """He-normal weights (truncated at 2σ, as Keras draws them), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            std = (2.0 / fan_in) ** 0.5 / 0.87962566103423978  # Keras' truncation factor
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            nn.init.zeros_(m.bias)


def build_torch_model(
    cfg: ModelConfig, input_shape: Sequence[int], num_classes: int, seed: int
) -> nn.Module:
    """The network ``cfg`` names (or its ``builder``'s), float32, seeded with ``seed``."""
    torch.manual_seed(seed)
    if cfg.builder is not None:
        model = import_function(cfg.builder, "model.builder")(**cfg.kwargs)
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"model.builder: {cfg.builder} returned {type(model).__name__}, not a "
                "torch.nn.Module"
            )
        return model.float()
    if cfg.name == "fc":
        model: nn.Module = FC(input_shape, cfg.hidden_units, num_classes)
    elif cfg.name == "lenet":
        model = LeNet(input_shape, cfg, num_classes)
    else:
        raise ConfigError(
            f"model.name: {cfg.name} is built in TensorFlow only; with framework: torch use "
            f"{' or '.join(TORCH_MODEL_NAMES)}, or model.builder"
        )
    _he_normal_(model)
    return model


def _unit_kind(module: nn.Module | None) -> str:
    if isinstance(module, nn.Embedding):
        return "token"
    if isinstance(module, nn.LayerNorm):
        return "feature"
    return "unit"


def torch_layout(model: nn.Module, names: Sequence[str] | None = None) -> ParameterLayout:
    """The layout of θ: ``names`` (default: every parameter that requires a gradient) in
    ``named_parameters()`` order. A parameter's layer group is its top-level child module
    (``dense_1``, ``encoder``); its units lie along axis 0 (torch puts output units first).
    """
    modules = dict(model.named_modules())
    wanted = None if names is None else set(names)
    entries, offset = [], 0
    for name, p in model.named_parameters():
        if (wanted is None and not p.requires_grad) or (wanted is not None and name not in wanted):
            continue
        owner = modules.get(name.rpartition(".")[0])
        shape = tuple(int(s) for s in p.shape)
        size = int(np.prod(shape, dtype=np.int64))
        group = name.split(".")[0] if "." in name else name
        axis = 0 if shape else None
        entries.append(
            ParameterEntry(
                name.replace(".", "/"), shape, offset, size, group, axis, _unit_kind(owner)
            )
        )
        offset += size
    if wanted is not None and len(entries) != len(wanted):
        missing = sorted(wanted - {e.name.replace("/", ".") for e in entries})
        raise ModelError(f"model: no parameter named {missing[0]}")
    return ParameterLayout(tuple(entries))


def parameter_names(layout_json: list[dict]) -> list[str]:
    """The torch parameter names of a recorded layout, in θ order."""
    return [e["name"].replace("/", ".") for e in layout_json]


def keras_to_torch(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A Keras built-in's variables (kernel, bias, …) in its torch twin's shapes."""
    out = []
    for a in arrays:
        if a.ndim == 2:  # dense kernel (in, out) -> weight (out, in)
            a = a.T
        elif a.ndim == 4:  # conv kernel (kh, kw, in, out) -> (out, in, kh, kw)
            a = a.transpose(3, 2, 0, 1)
        out.append(np.ascontiguousarray(a))
    return out
