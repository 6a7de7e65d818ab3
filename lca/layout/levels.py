"""Per-unit and per-layer sums of the LCA: the one arithmetic of writers and readers.

``allocate.store: units`` or ``layers`` keeps only these sums of each iteration's float32
LCA row; a reader of a ``parameters`` store sums the stored (T, K) array with the same
functions. Every sum is ``np.bincount`` over one row, in float64, in parameter order, so a
layer's or unit's LCA is bitwise the same whichever level was stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .parameters import ParameterLayout


@dataclass(frozen=True)
class LevelSums:
    """Which parameters belong to which layer and unit, and the sums of rows over them."""

    layer_index: np.ndarray  # (K,) layer of every parameter
    layers: list[str]
    units: dict[str, tuple[np.ndarray, np.ndarray, int]]  # ParameterLayout.unit_index()

    @classmethod
    def from_layout(cls, layout_json: list[dict]) -> LevelSums:
        layout = ParameterLayout.from_json(layout_json)
        return cls(layout.layer_index(), layout.layers, layout.unit_index())

    def layer_rows(self, rows: np.ndarray) -> np.ndarray:
        """(n, L) float64: each row of a (n, K) LCA block summed per layer."""
        out = np.empty((len(rows), len(self.layers)))
        for k, row in enumerate(rows):
            out[k] = np.bincount(self.layer_index, weights=row, minlength=len(self.layers))
        return out

    def unit_rows(self, rows: np.ndarray, layer: str) -> np.ndarray:
        """(n, U) float64: each row of a (n, K) LCA block summed per unit of ``layer``."""
        indices, unit_of, count = self.units[layer]
        out = np.empty((len(rows), count))
        for k, row in enumerate(rows):
            out[k] = np.bincount(unit_of, weights=row[indices], minlength=count)
        return out

    def arrays(self, rows: np.ndarray, level: str) -> dict[str, np.ndarray]:
        """What store level ``level`` keeps of a (n, K) float32 LCA block, by array name."""
        if level == "parameters":
            return {"lca": rows}
        kept = {"layer_lca": self.layer_rows(rows)}
        if level == "units":
            kept.update({f"unit_lca/{layer}": self.unit_rows(rows, layer) for layer in self.units})
        return kept
