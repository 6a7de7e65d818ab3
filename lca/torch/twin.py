"""The torch twin of a TensorFlow run: the same trajectory, θ mapped onto the torch network.

``lca train`` builds ``fc`` and ``lenet`` in both frameworks with the same layers in the same
order; only the kernels' axes differ (`lca.torch.models.keras_to_torch`). A twin run
holds every θ_t of a TensorFlow run in the torch layout, with its metrics and batches, so
allocating both is the same computation by two independent gradient engines: the strongest
check of either (``scripts/bench.py torch`` times them on it; the tests compare their A).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..config import TORCH_MODEL_NAMES
from ..data import load_dataset
from ..layout import ParameterLayout
from ..storage import (
    CONFIG_FILE,
    RunError,
    TrajectoryWriter,
    location,
    open_trajectory,
    prepare_run_dir,
    read_run_config,
    trajectory_attrs,
)
from .models import build_torch_model, keras_to_torch, torch_layout
from .runtime import versions


def to_torch_rows(rows: np.ndarray, keras_layout: ParameterLayout) -> np.ndarray:
    """Flat rows (θ, A or gradients) of a TensorFlow built-in in its torch twin's order."""
    rows = np.atleast_2d(rows)
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        parts = [row[e.offset : e.offset + e.size].reshape(e.shape) for e in keras_layout.entries]
        out[r] = np.concatenate([p.reshape(-1) for p in keras_to_torch(parts)])
    return out


def torch_twin(keras_run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``out``: a torch run whose θ_t are ``keras_run``'s, mapped; returns its path."""
    keras_run, out = location(keras_run), location(out)
    config = read_run_config(keras_run)
    if config.framework != "tensorflow" or config.model.builder is not None:
        raise RunError(f"{keras_run}: a twin is made of a TensorFlow run of a built-in network")
    if config.model.name not in TORCH_MODEL_NAMES:
        raise RunError(f"{keras_run}: model {config.model.name} has no torch twin")
    source = open_trajectory(keras_run)
    source.require_complete()
    dataset = load_dataset(config.data, keras_run)
    seed = int(source.attrs.get("seed", 0))
    model = build_torch_model(config.model, dataset.input_shape, dataset.num_classes, seed)
    layout = torch_layout(model)
    keras_layout = ParameterLayout.from_json(source.layout_json)
    mapped = [
        tuple(a.shape) for a in keras_to_torch([np.empty(e.shape) for e in keras_layout.entries])
    ]
    if mapped != [e.shape for e in layout.entries]:
        raise RunError(f"{keras_run}: the torch twin's parameters do not match the recorded ones")
    twin = dataclasses.replace(config, framework="torch", name=f"{config.name}_torch")
    out = prepare_run_dir(out, overwrite)
    (out / CONFIG_FILE).write_text(twin.to_yaml())
    group = source.group
    batched = "batch_indices" in group
    writer = TrajectoryWriter(
        out,
        num_iterations=source.num_iterations,
        num_params=layout.total,
        batch_size=group["batch_indices"].shape[1] if batched else None,
        train_indices=group["train_indices"][:],
        val_indices=group["val_indices"][:],
        attrs={
            **trajectory_attrs(
                twin.name,
                layout,
                seed,
                dataset,
                recorded_by="lca.torch.torch_twin",
                versions=versions(),
            ),
            "twin_of": str(keras_run),
        },
    )
    metrics = {name: group[name][:] for name in ("loss", "accuracy", "val_accuracy")}
    if batched:
        metrics["batch_indices"] = group["batch_indices"][:]
    rows = source.theta.chunks[0]
    for start in range(0, source.num_iterations + 1, rows):
        block = to_torch_rows(source.theta[start : start + rows], keras_layout)
        for k, row in enumerate(block):
            t = start + k  # θ_t comes with the metrics of the update that made it
            writer.append(row, None if t == 0 else {n: v[t - 1] for n, v in metrics.items()})
    writer.close("complete")
    return out
