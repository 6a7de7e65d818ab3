"""A built model's flat parameter layout θ and its non-trainable (fixed) weights."""

from __future__ import annotations

import keras
import numpy as np

from ..config import ModelError
from ..layout import ParameterEntry, ParameterLayout
from .models import BN_SUFFIX, PositionEmbedding
from .runtime import all_layers

#: layer-name suffixes that join another layer's group: a conv's batch norm joins the conv,
#: a transformer block's two MLP layers form ``<block>_mlp``
GROUP_SUFFIXES = {BN_SUFFIX: "", "_mlp_in": "_mlp", "_mlp_out": "_mlp"}


def _layer_group(layer_name: str) -> str:
    for suffix, group in GROUP_SUFFIXES.items():
        if layer_name.endswith(suffix) and len(layer_name) > len(suffix):
            return layer_name[: -len(suffix)] + group
    return layer_name


def _units(layer, variable, shape: tuple[int, ...]) -> tuple[int | None, str]:
    """Which axis of ``variable`` indexes its layer group's units, and what a unit is.

    Attention kernels split by head (query/key/value (d_model, heads, head_dim), output
    (heads, head_dim, d_model)); an MLP's output weights by the hidden neuron they read, its
    output bias shared by all; embeddings by token or position; anything else along its last
    axis (a dense or conv layer's output unit, a norm's feature).
    """
    path = variable.path
    if isinstance(layer, keras.layers.MultiHeadAttention):
        if "/attention_output/" in path:
            return (0, "head") if len(shape) == 3 else (None, "head")
        return (1, "head") if len(shape) == 3 else (0, "head")
    if isinstance(layer, (keras.layers.Embedding, PositionEmbedding)):
        return 0, "token" if isinstance(layer, keras.layers.Embedding) else "position"
    if layer.name.endswith("_mlp_out"):
        return (0, "neuron") if len(shape) == 2 else (None, "neuron")
    if layer.name.endswith("_mlp_in"):
        return -1, "neuron"
    if isinstance(layer, keras.layers.LayerNormalization):
        return -1, "feature"
    return -1, "unit"


def parameter_layout(model: keras.Model) -> ParameterLayout:
    """The layout of ``model.trainable_variables``, in that order (the order of θ).

    A variable's layer group is the top-level layer that owns it (a Sequential model's paths
    start with the model's name, so the path alone would put every variable in one group).
    """
    owner, owner_layer = {}, {}
    for layer in model.layers:
        for v in layer.trainable_weights:
            owner.setdefault(id(v), layer.name)
            owner_layer.setdefault(id(v), layer)
    entries = []
    offset = 0
    for v in model.trainable_variables:
        shape = tuple(int(s) for s in v.shape)
        size = int(np.prod(shape, dtype=np.int64))
        layer = owner.get(id(v), v.path.split("/")[0])
        name = v.path if v.path.startswith(layer + "/") else f"{layer}/{v.name}"
        axis, kind = _units(owner_layer[id(v)], v, shape) if id(v) in owner_layer else (-1, "unit")
        entries.append(ParameterEntry(name, shape, offset, size, _layer_group(layer), axis, kind))
        offset += size
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ModelError(f"model {model.name} has duplicate variable names: {names}")
    return ParameterLayout(tuple(entries))


def same_structure(a: list[dict], b: list[dict]) -> bool:
    """Layouts with the same variables' shapes in the same order (names aside).

    Keras numbers auto-named layers per process (dense, dense_1, ...), so a user's model
    rebuilt elsewhere may be named differently; the recorded names stay authoritative.
    """
    return [(e["shape"], e["offset"]) for e in a] == [(e["shape"], e["offset"]) for e in b]


def _is_moving_statistic(layer, variable) -> bool:
    """A batch-norm moving mean/variance: the objective uses batch statistics instead."""
    return isinstance(layer, keras.layers.BatchNormalization) and variable.name in (
        "moving_mean",
        "moving_variance",
    )


def fixed_weights(model: keras.Model) -> list[tuple[str, np.ndarray, bool]]:
    """``(name, value, is_moving_statistic)`` of every non-trainable weight, in model order.

    These are part of the loss but not of θ (a frozen layer's kernel, a constant), so a run
    stores them and the allocation restores them. Seed-generator states are not weights.
    """

    owner = {}
    for layer in all_layers(model):
        for v in layer.non_trainable_weights:
            owner.setdefault(id(v), layer)
    out = []
    for v in model.non_trainable_weights:
        layer = owner.get(id(v))
        out.append(
            (v.path, np.array(v.numpy()), layer is not None and _is_moving_statistic(layer, v))
        )
    return out


def changed_fixed_weights(model: keras.Model, before) -> list[str]:
    """Names of non-trainable weights (moving statistics aside) that differ from ``before``."""
    now = fixed_weights(model)
    return [
        name
        for (name, old, moving), (_, new, _) in zip(before, now)
        if not moving and not np.array_equal(old, new)
    ]


def restore_fixed_weights(model: keras.Model, stored: list[tuple[str, np.ndarray]]) -> None:
    """Load stored non-trainable weights back, matched by order and shape (names may differ)."""
    variables = model.non_trainable_weights
    if len(variables) != len(stored) or any(
        tuple(v.shape) != a.shape for v, (_, a) in zip(variables, stored)
    ):
        raise ModelError(
            f"model: the rebuilt model has {len(variables)} non-trainable weights, the run "
            f"recorded {len(stored)} (or their shapes differ); does model.builder still build "
            "the same model?"
        )
    for v, (_, a) in zip(variables, stored):
        v.assign(a)
