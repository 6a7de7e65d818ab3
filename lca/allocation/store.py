"""The layout of ``lca.zarr``: which arrays an allocation writes, their shapes and metadata."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import zarr

from .._version import __version__
from ..storage import LCA_STORE, RunError, Trajectory, checksummed, open_group
from ..storage.integrity import missing_chunks
from .settings import AllocationSettings, subset_indices


def open_lca_store(
    run_dir: Path, trajectory: Trajectory, settings: AllocationSettings
) -> zarr.Group:
    """Create ``lca.zarr`` or reopen it for resuming, refusing one made with other settings."""
    path = run_dir / LCA_STORE
    T = trajectory.num_iterations
    K = trajectory.theta.shape[1]
    c = settings.chunk_iterations
    if path.exists():
        group = open_group(path, "r+")
        made_with = group.attrs.get("settings")
        if made_with != settings.identity():
            raise RunError(
                f"{path} was made with other settings ({_differences(made_with or {}, settings)}"
                "); use the same options, or delete it (or pass --restart) to start over"
            )
        missing = missing_chunks(group)
        if missing:  # a done unit lost a chunk: resuming would skip it and leave a hole
            name, chunk = missing[0]
            raise RunError(
                f"{path}: {len(missing)} chunk(s) of finished work units are missing (first: "
                f"chunk {','.join(map(str, chunk))} of {name}); run `lca check "
                f"{run_dir} --repair`, then `lca allocate {run_dir}` recomputes them"
            )
        return group
    group = open_group(path, "w")
    n_chunks = math.ceil(T / c)
    group.create_array(
        "done",
        shape=(n_chunks,),
        chunks=(1,),
        dtype="bool",
        fill_value=False,
        dimension_names=("work_unit",),
        compressors=checksummed(),
    )
    arrays = {  # name: (shape, dimension names, dtype, fill value); chunks of c rows
        **_level_arrays(settings.store, T, K, trajectory.layout_json),
        "loss": ((T + 1,), ("step",), "float64", np.nan),
        "splits": ((T,), ("iteration",), "int32", 0),
        "error": ((T,), ("iteration",), "float64", np.nan),
        "error_fo": ((T,), ("iteration",), "float64", np.nan),
    }
    if settings.store_grad:  # only the oscillation measures read it back
        arrays["grad"] = ((T + 1, K), ("step", "parameter"), "float32", np.nan)
    if settings.reduced_precision:  # which iterations had to be recomputed in float32
        arrays["fallback"] = ((T,), ("iteration",), "bool", False)
    num_train = int(trajectory.attrs["num_train"])
    units = unit_index(trajectory.layout_json) if settings.store == "units" else {}
    for split in settings.splits:
        sub = group.create_group(split)
        for name, (shape, dims, dtype, fill) in arrays.items():
            chunks = (c, *shape[1:])
            sub.create_array(
                name,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                dimension_names=dims,
                fill_value=fill,
                compressors=checksummed(),
            )
        if settings.store == "units":
            sub.attrs["units"] = {layer: count for layer, (_, _, count) in units.items()}
        sub.attrs.update(
            {
                "split": split,
                "num_examples": int(
                    trajectory.attrs["num_train" if split == "train" else "num_val"]
                ),
            }
        )
        if split == "train" and settings.subset_size is not None:
            indices = subset_indices(num_train, settings.subset_size, settings.subset_seed)
            sub.create_array(
                "subset_indices",
                shape=indices.shape,
                dtype="int64",
                dimension_names=("subset_example",),
                compressors=checksummed(),
            )[:] = indices
            sub.attrs.update(
                {
                    "num_examples": settings.subset_size,
                    "num_examples_full": num_train,
                    "subset_size": settings.subset_size,
                    "subset_seed": settings.subset_seed,
                }
            )
    if settings.per_class:
        for split in settings.splits:
            _create_per_class_arrays(
                group[split],
                T,
                c,
                int(trajectory.attrs["num_classes"]),
                trajectory.layout_json,
                settings.per_class_full,
            )
    if settings.check_every is not None:
        _create_check_arrays(group, T, c, len(_layer_index(trajectory.layout_json)[1]))
    if settings.causes:
        from ..storage import read_run_config
        from .cause_sums import CauseModel, LevelReducer, create_cause_arrays

        model = CauseModel.of_run(
            read_run_config(run_dir), trajectory.layout_json, trajectory.attrs
        )
        reducer = LevelReducer(trajectory.layout_json)
        create_cause_arrays(group, settings.splits, settings.store, T, c, reducer, model, K)
    group.attrs.update(
        {
            "settings": settings.identity(),
            "rule": settings.rule,
            "precision": settings.precision,
            "store": settings.store,
            "layers": _layer_index(trajectory.layout_json)[1],
            "num_iterations": T,
            "num_params": K,
            "layout": trajectory.layout_json,
            "lca_version": __version__,
            "description": RULE_DESCRIPTIONS[settings.rule]
            + "; error = (L[t+1] − L[t]) − Σ_i A[t, i]; splits = the sub-intervals used; "
            + STORE_DESCRIPTIONS[settings.store]
            + "; negative LCA helps"
            + (f"; {CAUSES_NOTE}" if settings.causes else ""),
        }
    )
    return group


CAUSES_NOTE = (
    "<split>/causes/layer[t, term, part, layer], causes/unit/<layer>[t, term, part, unit] and "
    "causes/hurt_layer (entries with A > 0 only): A split by the optimiser's step terms "
    "(<split>/causes attrs terms) × first_order/curvature, float64 sums; replay_residual[t] = "
    "‖Δθ − Σ terms‖ / ‖Δθ‖; replay_state/m, v: Adam's moments at each work unit's start"
)

STORE_DESCRIPTIONS = {
    "parameters": "lca = A[t, i] per parameter",
    "units": "no per-parameter A: unit_lca/<layer>[t, u] = Σ A[t, i] over the parameters of "
    "unit u, layer_lca[t, l] = Σ A[t, i] over layer l (float64 np.bincount of the float32 "
    "row of A, as summing a per-parameter store gives)",
    "layers": "no per-parameter A: layer_lca[t, l] = Σ A[t, i] over layer l (float64 "
    "np.bincount of the float32 row of A, as summing a per-parameter store gives)",
}


def _level_arrays(level: str, T: int, K: int, layout_json) -> dict[str, tuple]:
    """The LCA arrays ``allocate.store`` keeps: (T, K) per parameter, or per unit and layer."""
    if level == "parameters":
        return {"lca": ((T, K), ("iteration", "parameter"), "float32", np.nan)}
    _, layers = _layer_index(layout_json)
    arrays = {"layer_lca": ((T, len(layers)), ("iteration", "layer"), "float64", np.nan)}
    if level == "units":
        for layer, (_, _, units) in unit_index(layout_json).items():
            arrays[f"unit_lca/{layer}"] = (
                (T, units),
                ("iteration", f"{layer}_unit"),
                "float64",
                np.nan,
            )
    return arrays


def _differences(made_with: dict, settings: AllocationSettings) -> str:
    """``made with store: units; asked for store: parameters`` (absent keys: their default)."""
    asked = settings.identity()
    keys = [k for k in {**made_with, **asked} if made_with.get(k) != asked.get(k)]
    defaults = {f.name: f.default for f in fields(AllocationSettings)}

    def values(identity: dict) -> str:
        return ", ".join(f"{k}: {identity.get(k, defaults.get(k))}" for k in keys)

    return f"made with {values(made_with)}; asked for {values(asked)}"


RULE_DESCRIPTIONS = {
    "simpson": "A[t, i] = Δθ_i · ∫ g_i along the step t (composite Simpson on 2, 4, … "
    "sub-intervals, halved while |error| > threshold)",
    "adaptive": "A[t, i] = Δθ_i · ∫ g_i along the step t (trapezoid on the endpoints, "
    "splits = 1, where its |error| ≤ trapezoid_threshold; else composite Simpson on 2, 4, … "
    "sub-intervals, halved while |error| > threshold)",
}


CHECK_DESCRIPTION = (
    "every check_every-th iteration of a subset allocation, also allocated on the full train "
    "split with composite Simpson on the same number of sub-intervals the subset used; rows "
    "of unchecked (or not yet allocated) iterations hold iteration = -1 and NaN"
)


def unit_index(layout_json: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per layer group: its parameters' flat indices, the unit of each, the unit count.

    See :meth:`lca.layout.ParameterLayout.unit_index`: heads, neurons, channels, tokens.
    """
    from ..layout import ParameterLayout

    return ParameterLayout.from_json(layout_json).unit_index()


def _create_per_class_arrays(sub: zarr.Group, T: int, c: int, C: int, layout_json, full: bool):
    """The per-class arrays of one split (``allocate.per_class``)."""
    _, layers = _layer_index(layout_json)
    K = sum(int(e["size"]) for e in layout_json)
    specs = {
        "class_loss": ((T + 1, C), ("step", "class"), "float64"),
        "class_error": ((T, C), ("iteration", "class"), "float64"),
        "class_layer_lca": ((T, C, len(layers)), ("iteration", "class", "layer"), "float32"),
    }
    for layer, (_, _, units) in unit_index(layout_json).items():
        specs[f"class_unit_lca/{layer}"] = (
            (T, C, units),
            ("iteration", "class", f"{layer}_unit"),
            "float32",
        )
    if full:
        specs["class_lca"] = ((T, C, K), ("iteration", "class", "parameter"), "float32")
    for name, (shape, dims, dtype) in specs.items():
        sub.create_array(
            name,
            shape=shape,
            chunks=(c, *shape[1:]),
            dtype=dtype,
            dimension_names=dims,
            fill_value=np.nan,
            compressors=checksummed(),
        )
    sub.attrs["layers"] = layers


def _create_check_arrays(group: zarr.Group, T: int, c: int, num_layers: int) -> None:
    """``subset_check/`` at full length T, chunked like the (T,) arrays: units write own rows."""
    check = group.create_group("subset_check")
    check.create_array(
        "iteration",
        shape=(T,),
        chunks=(c,),
        dtype="int64",
        fill_value=-1,
        dimension_names=("iteration",),
        compressors=checksummed(),
    )
    check.create_array(
        "layer_rel_error",
        shape=(T, num_layers),
        chunks=(c, num_layers),
        dtype="float64",
        fill_value=np.nan,
        dimension_names=("iteration", "layer"),
        compressors=checksummed(),
    )
    for name in CHECK_SCALARS:
        check.create_array(
            name,
            shape=(T,),
            chunks=(c,),
            dtype="float64",
            fill_value=np.nan,
            dimension_names=("iteration",),
            compressors=checksummed(),
        )
    check.attrs["description"] = CHECK_DESCRIPTION


CHECK_SCALARS = (
    "correlation",  # Pearson of per-parameter A_subset vs A_full
    "sign_agreement",  # share of parameters with A_full ≠ 0 whose signs agree
    "helped_error",  # % helped on the subset − % helped on the full set (percentage points)
    "full_loss_change",  # L_full(θ_t+1) − L_full(θ_t)
    "full_error",  # full_loss_change − Σ_i A_full
)


def _layer_index(layout_json) -> tuple[np.ndarray, list[str]]:
    from ..layout import ParameterLayout

    layout = ParameterLayout.from_json(layout_json)
    return layout.layer_index(), layout.layers
