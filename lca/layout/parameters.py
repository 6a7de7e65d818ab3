"""The flat parameter vector θ: where each variable lives and which layer it belongs to.

Pure numpy (no TensorFlow), so the analyses and notebooks can read a run's layout cheaply.
The layout is stored with each run (trajectory attributes) and compared on reload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ParameterEntry:
    """One trainable variable's place in the flat θ vector."""

    name: str  # Keras variable path, e.g. "conv_1/kernel", "conv_1_bn/gamma"
    shape: tuple[int, ...]
    offset: int
    size: int
    layer: str  # layer group: a conv's BN and a kernel's bias share the kernel's layer
    # the axis that indexes the group's units (a dense kernel's output neuron, an attention
    # kernel's head, an embedding's token); None: shared by all units (an MLP's output bias)
    unit_axis: int | None = -1
    unit_kind: str = "unit"  # what one unit is: "head", "neuron", "token", "channel", ...

    def unit_of(self) -> np.ndarray:
        """Each of this variable's parameters' unit, in flat (C) order; -1 when shared."""
        if self.unit_axis is None:
            return np.full(self.size, -1, dtype=np.int64)
        if not self.shape:
            return np.zeros(self.size, dtype=np.int64)
        axis = self.unit_axis % len(self.shape)
        along = np.arange(self.shape[axis], dtype=np.int64).reshape(
            [-1 if i == axis else 1 for i in range(len(self.shape))]
        )
        return np.broadcast_to(along, self.shape).reshape(-1)

    def num_units(self) -> int:
        if self.unit_axis is None:
            return 0
        return int(self.shape[self.unit_axis]) if self.shape else 1


@dataclass(frozen=True)
class ParameterLayout:
    """Where each variable lives in θ, and which layer group it belongs to."""

    entries: tuple[ParameterEntry, ...]

    @property
    def total(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def layers(self) -> list[str]:
        """Layer groups in order of first appearance (the names the config's overrides use)."""
        return list(dict.fromkeys(e.layer for e in self.entries))

    def layer_slices(self) -> dict[str, list[slice]]:
        slices: dict[str, list[slice]] = {layer: [] for layer in self.layers}
        for e in self.entries:
            slices[e.layer].append(slice(e.offset, e.offset + e.size))
        return slices

    def layer_index(self) -> np.ndarray:
        """Per-parameter index into `layers`, for per-layer sums with ``np.bincount``."""
        position = {layer: i for i, layer in enumerate(self.layers)}
        index = np.empty(self.total, dtype=np.int32)
        for e in self.entries:
            index[e.offset : e.offset + e.size] = position[e.layer]
        return index

    def layer_sizes(self) -> dict[str, int]:
        sizes = dict.fromkeys(self.layers, 0)
        for e in self.entries:
            sizes[e.layer] += e.size
        return sizes

    def unit_index(self) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        """Per layer group: its parameters' flat indices, the unit of each, the unit count.

        Units are what a researcher names in a layer: attention heads, MLP neurons, a conv's
        output channels, embedding rows. Parameters shared by all of a group's units (an MLP's
        output bias) form one extra last unit, so the units of a group sum to the group.
        """
        groups: dict[str, list[ParameterEntry]] = {}
        for e in self.entries:
            groups.setdefault(e.layer, []).append(e)
        index = {}
        for layer, entries in groups.items():
            count = max((e.num_units() for e in entries), default=0)
            shared = any(e.unit_axis is None for e in entries)
            flat = np.concatenate([np.arange(e.offset, e.offset + e.size) for e in entries])
            unit = np.concatenate([e.unit_of() for e in entries])
            unit[unit < 0] = count  # the shared unit comes last
            index[layer] = (flat, unit, count + int(shared) if count or shared else 1)
        return index

    def unit_labels(self, layer: str) -> list[str]:
        """Names of a group's units as ``unit_index`` numbers them: "head 0", …, "shared"."""
        entries = [e for e in self.entries if e.layer == layer]
        count = max((e.num_units() for e in entries), default=0)
        shared = any(e.unit_axis is None for e in entries)
        kind = self.kind_of_units(layer)
        labels = [f"{kind} {i}" for i in range(count)]
        return labels + ["shared"] if shared else labels or [f"{kind} 0"]

    def kind_of_units(self, layer: str) -> str:
        """What one unit of a layer group is ("head", "neuron", "token"; else "unit")."""
        return next(
            (e.unit_kind for e in self.entries if e.layer == layer and e.unit_axis is not None),
            "unit",
        )

    def flatten(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Concatenate per-variable arrays into one float32 θ, checking every shape."""
        if len(arrays) != len(self.entries):
            raise ValueError(f"expected {len(self.entries)} arrays, got {len(arrays)}")
        parts = []
        for e, a in zip(self.entries, arrays, strict=True):
            a = np.asarray(a)
            if tuple(a.shape) != e.shape:
                raise ValueError(f"{e.name}: expected shape {e.shape}, got {tuple(a.shape)}")
            parts.append(a.reshape(-1))
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def unflatten(self, flat: np.ndarray) -> list[np.ndarray]:
        """Split θ back into per-variable arrays (views of ``flat`` when it is float32)."""
        flat = np.asarray(flat, dtype=np.float32)
        if flat.shape != (self.total,):
            raise ValueError(f"expected a flat vector of shape ({self.total},), got {flat.shape}")
        return [flat[e.offset : e.offset + e.size].reshape(e.shape) for e in self.entries]

    def to_json(self) -> list[dict[str, Any]]:
        """Plain JSON types only, so it equals what a store's attributes read back."""
        rows = []
        for e in self.entries:
            row: dict[str, Any] = {
                "name": e.name,
                "shape": [int(s) for s in e.shape],
                "offset": int(e.offset),
                "size": int(e.size),
                "layer": e.layer,
            }
            # only where not the default, so layouts recorded before units existed compare equal
            if e.unit_axis != -1:
                row["unit_axis"] = e.unit_axis
            if e.unit_kind != "unit":
                row["unit_kind"] = e.unit_kind
            rows.append(row)
        return rows

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> ParameterLayout:
        return cls(
            tuple(
                ParameterEntry(
                    name=str(d["name"]),
                    shape=tuple(int(s) for s in d["shape"]),
                    offset=int(d["offset"]),
                    size=int(d["size"]),
                    layer=str(d["layer"]),
                    unit_axis=d.get("unit_axis", -1),
                    unit_kind=str(d.get("unit_kind", "unit")),
                )
                for d in data
            )
        )
