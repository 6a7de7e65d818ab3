"""Creating ``lca.zarr`` (from the table of `lca.storage.lca_arrays`) or reopening it to
resume, and the descriptions its attributes carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .._version import __version__
from ..storage import LCA_STORE, RunError, Trajectory, open_group
from ..storage.integrity import missing_chunks
from ..storage.lca_arrays import CHECK_SCALARS, StoreSizes, create_arrays
from .settings import AllocationSettings, subset_indices

__all__ = ["CHECK_SCALARS", "open_lca_store", "store_sizes", "unit_index"]


def open_lca_store(
    run_dir: Path, trajectory: Trajectory, settings: AllocationSettings
) -> zarr.Group:
    """Create ``lca.zarr`` or reopen it for resuming, refusing one made with other settings."""
    path = run_dir / LCA_STORE
    T = trajectory.num_iterations
    K = trajectory.theta.shape[1]
    if path.exists():
        group = open_group(path, "r+")
        made_with = group.attrs.get("settings")
        if not settings.made(made_with):
            raise RunError(
                f"{path} was made with other settings ({settings.differences(made_with or {})}"
                "); use the same options, or delete it (or pass --overwrite) to start over"
            )
        missing = missing_chunks(group)
        if missing:  # a done block lost a chunk: resuming would skip it and leave a hole
            name, chunk = missing[0]
            raise RunError(
                f"{path}: {len(missing)} chunk(s) of finished blocks are missing (first: "
                f"chunk {','.join(map(str, chunk))} of {name}); run `lca check "
                f"{run_dir} --repair`, then `lca allocate {run_dir}` recomputes them"
            )
        return group
    group = open_group(path, "w")
    model = None
    if settings.causes:
        from ..storage import read_run_config
        from .cause_sums import CauseModel

        model = CauseModel.of_run(
            read_run_config(run_dir), trajectory.layout_json, trajectory.attrs
        )
    sizes = store_sizes(settings, trajectory, model)
    layers = list(sizes.layers)
    num_train = int(trajectory.attrs["num_train"])
    for split in settings.splits:
        sub = group.create_group(split)
        if model is not None:
            from .cause_sums import describe_causes

            describe_causes(sub.create_group("causes"), model, layers)
        create_arrays(sub, sizes, "split")
        if settings.store == "units":
            sub.attrs["units"] = dict(sizes.units)
        sub.attrs.update(
            {
                "split": split,
                "num_examples": int(
                    trajectory.attrs["num_train" if split == "train" else "num_val"]
                ),
            }
        )
        if split == "train" and settings.subset_size is not None:
            create_arrays(sub, sizes, "train")
            indices = subset_indices(num_train, settings.subset_size, settings.subset_seed)
            sub["subset_indices"][:] = indices
            sub.attrs.update(
                {
                    "num_examples": settings.subset_size,
                    "num_examples_full": num_train,
                    "subset_size": settings.subset_size,
                    "subset_seed": settings.subset_seed,
                }
            )
        if settings.per_class:
            sub.attrs["layers"] = layers
    if settings.check_every is not None:
        group.create_group("subset_check").attrs["description"] = CHECK_DESCRIPTION
    if sizes.carries_state:  # states of blocks 0 … through−1 are stored
        group.create_group("replay_state").attrs["through"] = 0
    create_arrays(group, sizes, "root")
    group.attrs.update(
        {
            "settings": settings.identity(),
            "rule": settings.rule,
            "precision": settings.precision,
            "store": settings.store,
            "layers": layers,
            "num_iterations": T,
            "num_params": K,
            "layout": trajectory.layout_json,
            "lca_version": __version__,
            "description": RULE_DESCRIPTIONS[settings.rule]
            + "; error = (L[t+1] − L[t]) − Σ_i A[t, i]; intervals = the sub-intervals used; "
            + STORE_DESCRIPTIONS[settings.store]
            + "; negative LCA helps"
            + (f"; {CAUSES_NOTE}" if settings.causes else ""),
        }
    )
    return group


def store_sizes(settings: AllocationSettings, trajectory: Trajectory, model=None) -> StoreSizes:
    """What the shapes of a run's ``lca.zarr`` stand for (``model``: the ``causes`` model)."""
    return StoreSizes.of_run(
        settings,
        trajectory.layout_json,
        trajectory.num_iterations,
        int(trajectory.attrs["num_classes"]),
        settings.block_iterations,
        terms=len(model.terms) if model is not None else 0,
        carries_state=model is not None and model.carries_state,
    )


CAUSES_NOTE = (
    "<split>/causes/layer[t, term, part, layer], causes/unit/<layer>[t, term, part, unit] and "
    "causes/hurt_layer (entries with A > 0 only): A split by the optimiser's step terms "
    "(<split>/causes attrs terms) × first_order/curvature, float64 sums; replay_residual[t] = "
    "‖Δθ − Σ terms‖ / ‖Δθ‖; replay_state/m, v: Adam's moments at each block's start"
)

STORE_DESCRIPTIONS = {
    "parameters": "lca = A[t, i] per parameter",
    "units": "no per-parameter A: unit_lca/<layer>[t, u] = Σ A[t, i] over the parameters of "
    "unit u, layer_lca[t, l] = Σ A[t, i] over layer l (float64 np.bincount of the float32 "
    "row of A, as summing a per-parameter store gives)",
    "layers": "no per-parameter A: layer_lca[t, l] = Σ A[t, i] over layer l (float64 "
    "np.bincount of the float32 row of A, as summing a per-parameter store gives)",
}


RULE_DESCRIPTIONS = {
    "simpson": "A[t, i] = Δθ_i · ∫ g_i along the step t (composite Simpson on 2, 4, … "
    "sub-intervals, halved while |error| > threshold)",
    "adaptive": "A[t, i] = Δθ_i · ∫ g_i along the step t (trapezoid on the endpoints, "
    "intervals = 1, where its |error| ≤ trapezoid_threshold; else composite Simpson on 2, 4, … "
    "sub-intervals, halved while |error| > threshold)",
}


CHECK_DESCRIPTION = (
    "every check_every-th iteration of a subset allocation, also allocated on the full train "
    "split with composite Simpson on the same number of sub-intervals the subset used; rows "
    "of unchecked (or not yet allocated) iterations hold iteration = -1 and NaN"
)


def unit_index(layout_json: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per layer group: its parameters' flat indices, the unit of each, the unit count.

    See `lca.layout.ParameterLayout.unit_index`: heads, neurons, channels, tokens.
    """
    from ..layout import ParameterLayout

    return ParameterLayout.from_json(layout_json).unit_index()


def _layer_index(layout_json) -> tuple[np.ndarray, list[str]]:
    from ..layout import ParameterLayout

    layout = ParameterLayout.from_json(layout_json)
    return layout.layer_index(), layout.layers
