"""A torch run's objective, rebuilt from its run directory and checked against the recording."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from torch import nn

from ..config import Config
from ..storage import RunError, Trajectory, read_fixed_weights
from .models import build_torch_model, parameter_names, torch_layout
from .objective import TorchObjective
from .runtime import as_tensor, check_deterministic, configure_torch, device, evaluation_mode
from .state import load_fixed_state


def rebuild_model(
    run_dir: str | Path, config: Config, trajectory: Trajectory, dataset
) -> tuple[nn.Module, list[str]]:
    """A run's model built again (built-in twin or ``model.builder``) with its recorded
    weights outside θ, and θ's parameter names; a different model is a one-line RunError."""
    seed = int(trajectory.attrs.get("seed", 0))
    model = build_torch_model(config.model, dataset.input_shape, dataset.num_classes, seed)
    names = parameter_names(trajectory.layout_json)
    try:
        layout = torch_layout(model, names)
    except Exception as exc:  # a name the rebuilt model lacks
        raise RunError(f"{run_dir}: model.builder builds a different model: {exc}") from None
    if [e["shape"] for e in layout.to_json()] != [e["shape"] for e in trajectory.layout_json]:
        raise RunError(
            f"{run_dir}: the rebuilt model's parameters differ in shape from the recorded ones"
        )
    load_fixed_state(model, read_fixed_weights(trajectory.group), run_dir)
    return model, names


def load_torch_objective(
    run_dir: str | Path,
    config: Config,
    trajectory: Trajectory,
    dataset,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    eval_batch_size: int,
    *,
    precision: str = "float32",
) -> TorchObjective:
    """The full-split objective of a torch run: its model rebuilt from the config (built-in
    twin or ``model.builder``), the weights outside θ restored, the layout checked;
    ``precision`` (float32 or tf32) is the arithmetic of its gradients."""
    configure_torch()
    model, names = rebuild_model(run_dir, config, trajectory, dataset)
    changed = trajectory.attrs.get("non_trainable_changed")
    if changed:
        raise RunError(
            f"{run_dir}: buffer or frozen parameter {changed[0]} changed during training, so the "
            "loss is not a function of the recorded θ alone"
        )
    switched = evaluation_mode(model)
    if switched:
        warnings.warn(
            f"module {switched[0]} is batch normalization: the allocated loss uses the batch "
            "statistics of the fixed evaluation batches (allocate.eval_batch_size), not its "
            "running averages",
            stacklevel=3,
        )
    where = device()
    check_deterministic(model.to(where), as_tensor(next(iter(data.values()))[0][:256], where))
    return TorchObjective(
        model,
        names,
        data,
        eval_batch_size,
        loss=config.model.loss,
        from_logits=config.model.from_logits,
        where=where,
        precision=precision,
    )
