"""A whole run directory, opened for analyses and notebooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .base import CONFIG_FILE, LCA_STORE, RunError, location, open_group
from .trajectory import Trajectory, open_trajectory


@dataclass
class Run:
    """An opened run directory: its config, layout, trajectory and (once allocated) LCA.

    Arrays are returned as Zarr arrays, which slice like numpy arrays but read only the rows
    asked for, so analyses can stream a (T, K) array that does not fit in memory.
    """

    path: Path
    config: Any  # lca.config.Config
    layout: Any  # lca.layout.ParameterLayout
    trajectory: Trajectory
    lca_store: zarr.Group | None

    @property
    def num_iterations(self) -> int:
        return self.trajectory.num_iterations

    @property
    def theta(self) -> zarr.Array:
        return self.trajectory.theta

    @property
    def allocated_with(self) -> str:
        """How the LCA arrays were computed: the rule and the gradients' arithmetic."""
        if self.lca_store is None:
            return "not allocated"
        attrs = self.lca_store.attrs
        rule = attrs.get("rule", "simpson")
        rule = "simpson (the paper's RK4)" if rule == "simpson" else rule
        return f"rule {rule}, gradients in {attrs.get('precision', 'float32')}"

    @property
    def splits(self) -> list[str]:
        """The allocated splits (empty before ``lca allocate``)."""
        return list(self.lca_store.attrs["settings"]["splits"]) if self.lca_store else []

    def _group(self, split: str) -> zarr.Group:
        if self.lca_store is None:
            raise RunError(f"{self.path}: not allocated yet; run `lca allocate {self.path}`")
        if split not in self.splits:
            raise RunError(f"{self.path}: split {split!r} not allocated (have {self.splits})")
        return self.lca_store[split]

    def lca(self, split: str = "train") -> zarr.Array:
        """A[t, i], shape (T, K)."""
        return self._group(split)["lca"]

    def grad(self, split: str = "train") -> zarr.Array:
        """Full-set gradient at every θ_t, shape (T+1, K)."""
        return self._group(split)["grad"]

    def loss(self, split: str = "train") -> np.ndarray:
        """Full-set loss L(θ_t), shape (T+1,)."""
        return self._group(split)["loss"][:]

    def error(self, split: str = "train", first_order: bool = False) -> np.ndarray:
        return self._group(split)["error_fo" if first_order else "error"][:]

    def done(self) -> np.ndarray:
        """Per-iteration mask of what ``lca allocate`` has finished."""
        if self.lca_store is None:
            return np.zeros(self.num_iterations, dtype=bool)
        c = int(self.lca_store.attrs["settings"]["chunk_iterations"])
        mask = np.repeat(self.lca_store["done"][:], c)[: self.num_iterations]
        return mask.astype(bool)

    def require_allocated(self) -> None:
        done = self.done()
        if not done.all():
            raise RunError(
                f"{self.path}: allocation incomplete ({int(done.sum())} of {done.size} "
                f"iterations); finish it with `lca allocate {self.path}`"
            )

    def to_xarray(self, split: str | None = None):
        """The trajectory (``split=None``) or one split's LCA group as an ``xarray.Dataset``.

        Opened on the same checked store as everything else: a damaged chunk is a ChunkError
        when xarray reads it, not a silent fill value.
        """
        import xarray as xr

        if split is None:
            return xr.open_zarr(self.trajectory.group.store, consolidated=False)
        return xr.open_zarr(self._group(split).store, group=split, consolidated=False)


def open_run(run_dir: str | Path) -> Run:
    """Open a run directory written by ``lca train`` (and possibly ``lca allocate``)."""
    from ..config import load_config
    from ..layout import ParameterLayout

    run_dir = location(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: no {CONFIG_FILE}; is this a run directory of `lca train`?")
    trajectory = open_trajectory(run_dir)
    store = open_group(run_dir / LCA_STORE, "r") if (run_dir / LCA_STORE).exists() else None
    if store is not None and "settings" not in store.attrs:
        store = None  # its creation was cut short: nothing is allocated (allocate remakes it)
    return Run(
        path=run_dir,
        config=load_config(run_dir / CONFIG_FILE),
        layout=ParameterLayout.from_json(trajectory.layout_json),
        trajectory=trajectory,
        lca_store=store,
    )
