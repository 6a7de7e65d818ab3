"""The one interface between the allocation and a deep-learning framework.

Everything downstream of a recorded trajectory (quadrature, work units, schedulers, stores,
``verify-error``, the report) sees a model only through an :class:`Objective`: the loss and
gradient of each data split at a flat θ. A framework provides three things, each in its own
package (TensorFlow: :mod:`lca.allocation.objective` with :mod:`lca.models`; PyTorch:
:mod:`lca.torch`): an objective built from a run directory, its thread and TF32 settings,
and the GPUs it sees (and, for ``--causes``, the mini-batch gradient of a recorded step). A
third framework is one more branch in each function below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import ConfigError
from ..storage import RunError, read_run_config

#: each framework's name in messages
FRAMEWORKS = {"tensorflow": "TensorFlow", "torch": "PyTorch"}


class Objective(Protocol):
    """Full-split loss and gradient at any flat θ (float32 in, float64 sums inside).

    ``objective(theta)`` returns ``{split: (loss, grad)}``: the loss the float64 mean of the
    per-example losses over the whole split, the gradient a float32 vector in θ's order,
    summed over fixed evaluation batches in float64. The loss must be a function of θ alone:
    dropout off, batch norm on the statistics of the fixed evaluation batches.
    """

    num_params: int
    evaluations: int  # gradient evaluations so far (the cost the summaries report)
    precision: str  # the arithmetic of the gradients: float32, bfloat16 or tf32

    def __call__(self, theta: np.ndarray) -> dict[str, tuple[float, np.ndarray]]: ...

    def between(
        self, start: np.ndarray, end: np.ndarray, fraction: float
    ) -> dict[str, tuple[float, np.ndarray]]:
        """As ``__call__`` at start + fraction (end − start); may reuse work of both ends."""
        ...

    def scores(self, theta: np.ndarray) -> dict[str, tuple[float, int]]:
        """Each split's loss and number of right predictions, forward only (pruning)."""
        ...

    def num_examples(self, split: str) -> int: ...

    def with_precision(self, precision: str) -> Objective:
        """The same model and data with gradients in ``precision`` (fall-backs)."""
        ...


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
        from .replay import BatchGradient
    return BatchGradient(run_dir, config, trajectory)


def configure(framework: str, threads: int | None = None, allow_tf32: bool = False) -> None:
    """Thread counts (``--threads``) and TF32 for the framework about to compute."""
    if framework == "torch":
        from ..torch.runtime import configure_torch

        configure_torch(threads, allow_tf32)
    else:
        from ..models.runtime import configure_tensorflow

        configure_tensorflow(threads, allow_tf32=allow_tf32)


def visible_gpus(framework: str) -> list[str]:
    """The GPUs the framework sees in this process."""
    if framework == "torch":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    from ..models.runtime import visible_gpus as tensorflow_gpus

    return tensorflow_gpus()
