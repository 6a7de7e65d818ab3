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
        """Per-parameter index into :attr:`layers`, for per-layer sums with ``np.bincount``."""
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
        return [
            {
                "name": e.name,
                "shape": [int(s) for s in e.shape],
                "offset": int(e.offset),
                "size": int(e.size),
                "layer": e.layer,
            }
            for e in self.entries
        ]

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
                )
                for d in data
            )
        )
