"""Sums of LCA rows over groups of parameters (layers, units): written once for every reader
and writer.

`GroupSums` is the one per-group sum: the per-layer sums a store keeps
(``allocate.store: units`` or ``layers``), the sums a reader makes of a ``parameters`` store,
the streaming analyses' per-layer sums, the per-class sums and the layers of the LCA by
cause (sums of unit sums). It has two arithmetics, each bitwise stable:

* `GroupSums.in_order` adds each row's entries one by one in float64, in parameter
  order (``np.bincount``). Stored sums use it, so a layer's or unit's LCA is bitwise the same
  whichever level was stored and whoever sums it.
* calling it adds each contiguous run of a group's columns with ``np.add.reduceat``: many
  rows at once, for the analyses that stream a (T, K) array, and for sums of sums.

`LevelSums` holds the groups of a parameter layout: every layer's, every unit's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .parameters import ParameterLayout


class GroupSums:
    """Sums of the columns of rows over groups: ``group_of[i]`` is the group of column i.

    Layouts keep a group's columns in a few contiguous runs, so calling it is one
    ``np.add.reduceat`` over those runs (plus a tiny runs → groups product when a group has
    several runs); groups of many runs fall back to `in_order`.
    """

    MAX_RUNS = 4096

    def __init__(self, group_of: np.ndarray, num_groups: int) -> None:
        index = np.asarray(group_of).astype(np.int64, copy=False).reshape(-1)
        self.index = index
        self.num_groups = int(num_groups)
        self.sizes = np.bincount(index, minlength=self.num_groups).astype(np.int64)
        if index.size:
            self.starts = np.concatenate([[0], np.flatnonzero(np.diff(index)) + 1])
        else:
            self.starts = np.zeros(0, dtype=np.int64)
        self.run_group = index[self.starts]
        self.direct = len(np.unique(self.run_group)) == len(self.run_group)
        if not self.direct and len(self.starts) <= self.MAX_RUNS:
            self.onehot = np.zeros((len(self.starts), self.num_groups))
            self.onehot[np.arange(len(self.starts)), self.run_group] = 1.0

    def in_order(self, rows: np.ndarray) -> np.ndarray:
        """(n, G) float64: each row of a (n, K) block summed per group, entry by entry in
        column order (``np.bincount``): the sums stores keep."""
        out = np.empty((len(rows), self.num_groups))
        for k, row in enumerate(rows):
            out[k] = np.bincount(self.index, weights=row, minlength=self.num_groups)
        return out

    def __call__(self, block: np.ndarray, dtype: type | None = np.float64) -> np.ndarray:
        """(…, G) sums of ``block`` (…, K) (values or a boolean mask) over each group's
        columns, run by run; ``dtype`` None: in the block's own dtype."""
        out = np.zeros((*block.shape[:-1], self.num_groups), dtype=dtype or block.dtype)
        if block.size == 0:
            return out
        if len(self.starts) > self.MAX_RUNS:
            out[...] = self.in_order(block.reshape(-1, block.shape[-1])).reshape(out.shape)
            return out
        runs = np.add.reduceat(block, self.starts, axis=-1, dtype=dtype)
        if self.direct:
            out[..., self.run_group] = runs
        else:
            out[...] = (runs @ self.onehot).astype(out.dtype)  # integer counts stay exact
        return out


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

    @cached_property
    def layer_groups(self) -> GroupSums:
        """The parameters grouped by layer."""
        return GroupSums(self.layer_index, len(self.layers))

    @cached_property
    def unit_groups(self) -> dict[str, GroupSums]:
        """Per layer, its parameters (``units[layer][0]``) grouped by unit."""
        units = self.units.items()
        return {layer: GroupSums(unit_of, count) for layer, (_, unit_of, count) in units}

    def layer_rows(self, rows: np.ndarray) -> np.ndarray:
        """(n, L) float64: each row of a (n, K) LCA block summed per layer."""
        return self.layer_groups.in_order(rows)

    def unit_rows(self, rows: np.ndarray, layer: str) -> np.ndarray:
        """(n, U) float64: each row of a (n, K) LCA block summed per unit of ``layer``."""
        return self.unit_groups[layer].in_order(rows[:, self.units[layer][0]])

    def arrays(self, rows: np.ndarray, level: str) -> dict[str, np.ndarray]:
        """What store level ``level`` keeps of a (n, K) float32 LCA block, by array name."""
        if level == "parameters":
            return {"lca": rows}
        kept = {"layer_lca": self.layer_rows(rows)}
        if level == "units":
            kept.update({f"unit_lca/{layer}": self.unit_rows(rows, layer) for layer in self.units})
        return kept
