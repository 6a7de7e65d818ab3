"""A whole run directory, opened for analyses and notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..config import Config, load_config
from ..layout import LevelSums, ParameterLayout
from .base import CONFIG_FILE, LCA_STORE, RunError, location
from .groups import open_group
from .lca_arrays import read_array
from .trajectory_read import Trajectory, open_trajectory


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

    @property
    def store_level(self) -> str:
        """What the allocation kept per iteration: ``parameters``, ``units`` or ``layers``.

        Stores made before the levels existed kept parameters; before ``lca allocate``, the
        level it would keep (the run's ``allocate.store``).
        """
        if self.lca_store is None:
            return self.config.allocate.store
        return self.lca_store.attrs.get("store", "parameters")

    @property
    def layer_names(self) -> list[str]:
        """The layer groups, in the order of every per-layer array's last axis."""
        return list(self.layout.layers)

    def has_grad(self, split: str = "train") -> bool:
        """Whether the full-set gradients were kept (``allocate.store_grad``)."""
        return "grad" in self._group(split)

    def lca(self, split: str = "train") -> zarr.Array:
        """A[t, i], shape (T, K); a RunError for a store that kept only unit or layer sums."""
        group = self._group(split)
        if "lca" not in group:
            raise RunError(
                f"{self.path}: allocated with store: {self.store_level}, which keeps no "
                "per-parameter LCA; for per-parameter measures reallocate with `lca allocate "
                f"{self.path} --store parameters --restart`"
            )
        return group["lca"]

    def grad(self, split: str = "train") -> zarr.Array:
        """Full-set gradient at every θ_t, shape (T+1, K); a RunError when it was not kept."""
        group = self._group(split)
        if "grad" not in group:
            raise RunError(
                f"{self.path}: allocated with store_grad: false, which keeps no gradients; "
                f"for measures of them reallocate with `lca allocate {self.path} --store-grad "
                "--restart`"
            )
        return group["grad"]

    def layer_lca(self, split: str = "train", chunk_rows: int = 64) -> np.ndarray:
        """(T, L) float64 LCA per iteration and layer, bitwise the same on every store level.

        The stored ``layer_lca``, or the stored (T, K) LCA summed per layer ``chunk_rows``
        rows at a time, with the arithmetic ``allocate`` uses to store the sums.
        """
        group = self._group(split)
        if "layer_lca" in group:
            return group["layer_lca"][:]
        sums = self._sums()
        lca = self.lca(split)
        out = np.empty((lca.shape[0], len(sums.layers)))
        for start, block in _row_blocks(lca, chunk_rows):
            out[start : start + len(block)] = sums.layer_rows(block)
        return out

    def unit_lca(self, split: str, layer: str, chunk_rows: int = 64) -> np.ndarray:
        """(T, U) float64 LCA per iteration and unit of ``layer``: see
        [`unit_lcas`][lca.storage.run.Run.unit_lcas]."""
        return self.unit_lcas(split, [layer], chunk_rows)[layer]

    def unit_lcas(
        self, split: str, layers: Sequence[str] | None = None, chunk_rows: int = 64
    ) -> dict[str, np.ndarray]:
        """Per layer of ``layers`` (default: all), (T, U) float64 LCA per iteration and unit,
        the same on every level that keeps it: the stored ``unit_lca/<layer>``, or the (T, K)
        LCA summed per unit in one pass over its rows, whatever the number of layers.
        """
        group = self._group(split)
        layers = self.layer_names if layers is None else list(layers)
        unknown = [layer for layer in layers if layer not in self.layer_names]
        if unknown:
            raise RunError(
                f"{self.path}: no layer {unknown[0]!r} (layers: {', '.join(self.layer_names)})"
            )
        if self.store_level == "layers":
            raise RunError(
                f"{self.path}: allocated with store: layers, which keeps no per-unit LCA; for "
                f"per-unit measures reallocate with `lca allocate {self.path} --store units "
                "--restart`"
            )
        if "unit_lca" in group:
            return {layer: group["unit_lca"][layer][:] for layer in layers}
        sums = self._sums()
        lca = self.lca(split)
        out = {layer: np.empty((lca.shape[0], sums.units[layer][2])) for layer in layers}
        for start, block in _row_blocks(lca, chunk_rows):
            for layer in layers:
                out[layer][start : start + len(block)] = sums.unit_rows(block, layer)
        return out

    def _sums(self):
        return LevelSums.from_layout(self.trajectory.layout_json)

    # --- the LCA split by cause (``lca allocate --causes``) -------------------------------

    @property
    def has_causes(self) -> bool:
        """Whether the allocation split every LCA by the terms of the optimiser's step."""
        return self.lca_store is not None and bool(
            self.lca_store.attrs["settings"].get("causes", False)
        )

    def _causes(self, split: str) -> zarr.Group:
        group = self._group(split)
        if not self.has_causes or "causes" not in group:
            raise RunError(
                f"{self.path}: no LCA by cause; allocate with --causes (`lca allocate "
                f"{self.path} --causes --restart`)"
            )
        return group["causes"]

    @property
    def cause_terms(self) -> list[str]:
        """The step's terms, in the order of the ``term`` axis of every cause array."""
        return list(self._causes(self.splits[0] if self.splits else "train").attrs["terms"])

    @property
    def cause_parts(self) -> list[str]:
        """The ``part`` axis: ``first_order`` (u·∇L(θ_t)) and ``curvature`` (u·(ḡ − ∇L(θ_t)))."""
        return list(self._causes(self.splits[0] if self.splits else "train").attrs["parts"])

    def cause_layer_lca(self, split: str = "train") -> np.ndarray:
        """(T, terms, 2, L) float64: each term's LCA per layer, first order and curvature;
        summed over terms and parts it is [`layer_lca`][lca.storage.run.Run.layer_lca] (to float
        rounding)."""
        return self._causes(split)["layer"][:]

    def cause_unit_lca(self, split: str, layer: str) -> np.ndarray:
        """(T, terms, 2, U) float64: as [`cause_layer_lca`][lca.storage.run.Run.cause_layer_lca],
        per unit of ``layer``."""
        causes = self._causes(split)
        if layer not in self.layer_names:
            raise RunError(
                f"{self.path}: no layer {layer!r} (layers: {', '.join(self.layer_names)})"
            )
        if "unit" not in causes:
            raise RunError(
                f"{self.path}: allocated with store: layers, which keeps no per-unit LCA by "
                f"cause; reallocate with `lca allocate {self.path} --causes --store units "
                "--restart`"
            )
        return causes["unit"][layer][:]

    def cause_hurt_layer_lca(self, split: str = "train") -> np.ndarray:
        """(T, terms, 2, L) float64: as [`cause_layer_lca`][lca.storage.run.Run.cause_layer_lca]
        over the (parameter,
        iteration) entries that hurt (A[t, i] > 0) only: what caused the hurting."""
        return self._causes(split)["hurt_layer"][:]

    def replay_residual(self) -> np.ndarray:
        """(T,) ‖Δθ_recorded − Σ terms‖ / ‖Δθ‖: how exactly the optimiser was replayed."""
        if not self.has_causes:
            self._causes(self.splits[0] if self.splits else "train")  # the RunError
        return self.lca_store["replay_residual"][:]

    def loss(self, split: str = "train") -> np.ndarray:
        """Full-set loss L(θ_t), shape (T+1,)."""
        return self._group(split)["loss"][:]

    def intervals(self, split: str = "train") -> zarr.Array:
        """(T,) int32: the sub-intervals the accepted rule used at every iteration (also in
        stores that name the array ``splits``)."""
        return read_array(self._group(split), "intervals")

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


def _row_blocks(array: zarr.Array, chunk_rows: int):
    """(first row, rows) of ``array``, ``chunk_rows`` rows at a time: never the whole array."""
    for start in range(0, array.shape[0], chunk_rows):
        yield start, array[start : start + chunk_rows]


def open_run(run_dir: str | Path) -> Run:
    """Open a run directory written by ``lca train`` (and possibly ``lca allocate``)."""
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


def read_run_config(run_dir: str | Path) -> Config:
    """The ``config.yaml`` of a run directory, validated; a RunError when there is none."""
    path = location(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: no {CONFIG_FILE}; is this a run directory of `lca train`?")
    return load_config(path)
