"""The one interface between the allocation and a deep-learning framework.

Everything downstream of a recorded trajectory (quadrature, blocks, schedulers, stores,
``verify-error``, the report) sees a model only through an `Objective`: the loss and
gradient of each data split at a flat θ. A framework provides, in a package of its own
(TensorFlow: `lca.tensorflow`; PyTorch: `lca.torch`), the objective of a run
directory, its thread settings, the GPUs it sees and, for ``--causes``, the
mini-batch gradient of a recorded step. A third framework is one more package of the same
modules and one more branch in each function below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import Config, ConfigError
from ..quadrature import LossAndGradient
from ..storage import RunError, open_trajectory, read_run_config

#: each framework's name in messages
FRAMEWORKS = {"tensorflow": "TensorFlow", "torch": "PyTorch"}


class Objective(Protocol):
    """Full-split loss and gradient at any flat θ (float32 in, float64 sums inside).

    ``objective(theta)`` returns ``{split: LossAndGradient(loss, gradient)}``
    ([`lca.quadrature.LossAndGradient`][lca.quadrature.LossAndGradient]): the loss the float64 mean
    of the
    per-example losses over the whole split, the gradient a float32 vector in θ's order,
    summed over fixed evaluation batches in float64. The loss must be a function of θ alone:
    dropout off, batch norm on the statistics of the fixed evaluation batches.
    """

    num_params: int
    evaluations: int  # gradient evaluations so far (the cost the summaries report)
    precision: str  # the arithmetic of the gradients: float32, bfloat16 or tf32

    def __call__(self, theta: np.ndarray) -> dict[str, LossAndGradient]: ...

    def between(
        self, start: np.ndarray, end: np.ndarray, fraction: float
    ) -> dict[str, LossAndGradient]:
        """As ``__call__`` at start + fraction (end − start); may reuse work of both ends."""
        ...

    def scores(self, theta: np.ndarray) -> dict[str, tuple[float, int]]:
        """Each split's loss and number of right predictions, forward only (pruning)."""
        ...

    def num_examples(self, split: str) -> int: ...

    def with_precision(self, precision: str) -> Objective:
        """The same model and data with gradients in ``precision`` (fall-backs)."""
        ...


def load_objective(
    run_dir: str | Path,
    splits: Sequence[str] = ("train", "val"),
    eval_batch_size: int | None = None,
    *,
    jit_compile: bool = False,
    reuse_input_layer: bool = True,
    train_subset: np.ndarray | None = None,
    per_class: bool = False,
    precision: str = "float32",
) -> Objective:
    """The full-set loss/gradient function of a run's model and data, checked against the run.

    The dataset is reloaded from the run's config and must hold exactly the examples the run
    was trained on; the framework's package rebuilds the model and checks it against the
    recorded layout. ``train_subset`` (indices into the train split) restricts the train split
    to those examples. ``precision`` is the arithmetic of the gradients; losses are float32.
    ``jit_compile``, ``reuse_input_layer``, ``per_class`` and ``bfloat16`` exist for
    TensorFlow runs only.
    """
    from ..data import load_dataset

    config = read_run_config(run_dir)
    trajectory = open_trajectory(run_dir)
    dataset = load_dataset(config.data, run_dir)
    for name in ("train_indices", "val_indices"):  # the examples L is defined on
        if not np.array_equal(trajectory.group[name][:], getattr(dataset, name)):
            raise RunError(f"{run_dir}: the dataset differs from the one the run was trained on")
    data = {split: dataset.split(split) for split in splits}
    for split, (_, y) in data.items():
        if len(y) == 0:
            raise RunError(
                f"allocate.splits: the run has no {split} examples (data.builder returned "
                f"none); allocate with --splits train"
            )
    if train_subset is not None and "train" in data:
        x, y = data["train"]
        data["train"] = (x[train_subset], y[train_subset])
    batch_size = eval_batch_size or config.allocate.eval_batch_size
    if config.framework == "torch":
        from ..torch.allocation import load_torch_objective

        if per_class or precision not in ("float32", "tf32"):
            raise RunError(
                f"{run_dir}: torch runs are allocated in float32 or tf32, without per_class"
            )
        return load_torch_objective(
            run_dir, config, trajectory, dataset, data, batch_size, precision=precision
        )
    from ..tensorflow.allocation import load_tensorflow_objective

    return load_tensorflow_objective(
        run_dir,
        config,
        trajectory,
        dataset,
        data,
        batch_size,
        jit_compile=jit_compile,
        reuse_input_layer=reuse_input_layer,
        per_class=per_class,
        precision=precision,
    )


def model_layout(config: Config, input_shape: Sequence[int], num_classes: int):
    """The `ParameterLayout` of the network a config builds."""
    if config.framework == "torch":
        from ..torch.models import build_torch_model, torch_layout

        return torch_layout(build_torch_model(config.model, input_shape, num_classes, 0))
    from ..tensorflow.models import build_model
    from ..tensorflow.parameters import parameter_layout

    return parameter_layout(build_model(config.model, input_shape, num_classes))


def framework_of(run_dir: str | Path) -> str:
    """The framework a run was recorded with (its config's ``framework``).

    A directory whose config cannot be read says TensorFlow here: what is wrong with it is
    reported by the allocation itself, which reads the whole run.
    """
    try:
        return read_run_config(run_dir).framework
    except (RunError, ConfigError):
        return "tensorflow"


def batch_gradient(run_dir: str | Path, config, trajectory):
    """g_B(θ_t) of the run's recorded steps in its framework (``--causes`` of Adam/AdamW):
    ``gradient(t, theta)`` → (K,) float32, ``gradient.batch(t)`` → the examples of step t."""
    if config.framework == "torch":
        from ..torch.replay import BatchGradient
    else:
        from ..tensorflow.replay import BatchGradient
    return BatchGradient(run_dir, config, trajectory)


def configure(framework: str, threads: int | None = None) -> None:
    """Thread counts (``--threads``) for the framework about to compute, TF32 off (only the
    gradient passes of ``precision: tf32`` allow it)."""
    if framework == "torch":
        from ..torch.runtime import configure_torch

        configure_torch(threads)
    else:
        from ..tensorflow.runtime import configure_tensorflow

        configure_tensorflow(threads)


def visible_gpus(framework: str) -> list[str]:
    """The GPUs the framework sees in this process."""
    if framework == "torch":
        from ..torch.runtime import visible_gpus as torch_gpus

        return torch_gpus()
    from ..tensorflow.runtime import visible_gpus as tensorflow_gpus

    return tensorflow_gpus()
