"""A TensorFlow run's objective, rebuilt from its run directory and checked against it.

The built-ins are rebuilt in their evaluation variant (no dropout, batch norm on the batch
statistics: ``training=True``); a user's model (``model.builder``) is evaluated with
``training=False`` after `evaluation_mode`, its non-trainable
weights restored from the run and its determinism checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Config
from ..storage import RunError, Trajectory


def load_tensorflow_objective(
    run_dir: str | Path,
    config: Config,
    trajectory: Trajectory,
    dataset,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    *,
    jit_compile: bool = False,
    reuse_input_layer: bool = True,
    per_class: bool = False,
    precision: str = "float32",
):
    """The `FullBatchObjective` (or per-class one) of a TensorFlow run."""
    import keras

    from .models import build_model
    from .objective import FullBatchObjective
    from .parameters import parameter_layout
    from .per_class_objective import PerClassObjective
    from .runtime import configure_tensorflow

    configure_tensorflow()
    user_model = config.model.builder is not None
    if user_model:
        keras.utils.set_random_seed(int(trajectory.attrs.get("seed", 0)))
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, evaluation=True)
    if user_model:
        _prepare_user_model(run_dir, model, trajectory, data)
    elif parameter_layout(model).to_json() != trajectory.layout_json:
        raise RunError(f"{run_dir}: the model's parameter layout differs from the recorded one")
    options = {"from_logits": config.model.from_logits, "training": not user_model}
    if per_class:
        if not config.model.classification:
            raise RunError(f"--per-class: needs a classification loss, not {config.model.loss}")
        return PerClassObjective(
            model, data, batch_size, dataset.num_classes, jit_compile=jit_compile, **options
        )
    return FullBatchObjective(
        model,
        data,
        batch_size,
        jit_compile=jit_compile,
        reuse_input_layer=reuse_input_layer,
        loss=config.model.loss,
        precision=precision,
        **options,
    )


def _prepare_user_model(run_dir, model, trajectory: Trajectory, data) -> None:
    """Make a user's model evaluate the run's loss honestly, or say why it cannot.

    Restores the non-trainable weights the run stored, switches batch norm to batch
    statistics (a warning: the allocated loss is then the one of the fixed evaluation batches),
    and checks that the layout matches and that the model is deterministic at a fixed θ.
    """
    import warnings

    from ..storage import read_fixed_weights
    from .parameters import parameter_layout, restore_fixed_weights, same_structure
    from .runtime import check_deterministic, evaluation_mode

    if not same_structure(parameter_layout(model).to_json(), trajectory.layout_json):
        raise RunError(
            f"{run_dir}: model.builder builds a model whose trainable weights differ in number "
            "or shape from the recorded ones"
        )
    changed = trajectory.attrs.get("non_trainable_changed")
    if changed:
        raise RunError(
            f"{run_dir}: non-trainable weight {changed[0]} changed during training, so the "
            "loss is not a function of the recorded θ alone; make it trainable or keep it fixed"
        )
    stored = read_fixed_weights(trajectory.group)
    if stored is not None:
        restore_fixed_weights(model, stored)
    switched = evaluation_mode(model)
    if switched:
        warnings.warn(
            f"layer {switched[0]} is batch normalization: the allocated loss uses the batch "
            "statistics of the fixed evaluation batches (allocate.eval_batch_size), not its "
            "moving averages",
            stacklevel=3,
        )
    x = next(iter(data.values()))[0][:256]
    check_deterministic(model, x, training=False)
