"""Loss Change Allocation (Lan, Liu, Zhou, Yosinski; NeurIPS 2019) for TensorFlow and PyTorch.

import lca
summary = lca.allocate("runs/mnist_fc_sgd")   # AllocationSummary (what `lca allocate` does)
report = lca.verify_error("runs/mnist_fc_sgd")  # ErrorReport: .passed, .splits, .to_dict()
run = lca.open_run("runs/mnist_fc_sgd")
run.lca("train")[:100]        # A[t, i] for the first 100 iterations (a Zarr slice)
run.to_xarray("train")        # the same as an xarray.Dataset with named dimensions

Record your own model's ``model.fit`` with ``lca.keras.TrajectoryRecorder``, any torch loop
with ``lca.torch.TrajectoryRecorder``.

The package is one subpackage per phase, imported one way (``tests/test_architecture.py``
holds the picture): ``cli`` | ``keras`` → ``pruning`` → ``report`` → ``training`` |
``allocation`` | ``analysis`` → ``tensorflow`` | ``torch`` (each framework's code, behind
``allocation.backends``) → ``data`` → ``storage`` → ``config`` → ``layout``, ``quadrature``,
``locations``, ``_version``.
"""

import importlib.abc
import sys

from ._version import __version__

_LAZY = {
    "open_run": ("storage", "open_run"),
    "allocate": ("allocation", "allocate"),
    "verify_error": ("analysis.diagnostics", "verify_error"),
    "prune": ("pruning", "prune"),
}

# Modules that moved (into the phase subpackages; TensorFlow's code into lca.tensorflow):
# importing an old path fails with one line
# naming the new one.
MOVED = {
    "lca.allocation.levels": "lca.layout.levels",
    "lca.cluster": "lca.allocation.cluster",
    "lca.describe": "lca.report.describe (describe_layout: lca.layout.describe)",
    "lca.diagnostics": "lca.analysis.diagnostics",
    "lca.generalization": "lca.analysis.generalization",
    "lca.gradients": (
        "lca.tensorflow.objective (FullBatchObjective), lca.tensorflow.per_class_objective "
        "and lca.tensorflow.runtime (configure_tensorflow, per_example_loss, visible_gpus, …)"
    ),
    # TensorFlow's code, gathered in one package beside lca.torch
    "lca.models": (
        "lca.tensorflow (models: build_model; parameters: parameter_layout, fixed_weights; "
        "runtime) and lca.layout (ParameterLayout)"
    ),
    "lca.models.builders": "lca.tensorflow.models",
    "lca.models.parameters": "lca.tensorflow.parameters",
    "lca.models.runtime": "lca.tensorflow.runtime",
    "lca.allocation.objective": "lca.tensorflow.objective",
    "lca.allocation.per_class_objective": "lca.tensorflow.per_class_objective",
    "lca.allocation.precision": (
        "lca.tensorflow.precision (resolve_precision, cpu_has_bf16_units: lca.allocation.settings)"
    ),
    "lca.training.recorder": "lca.tensorflow.recorder (public path: lca.keras)",
    "lca.markdown": "lca.report.markdown",
    "lca.per_class": "lca.analysis.per_class",
    "lca.plots": "lca.report.plots",
    "lca.plots_pruning": "lca.pruning.figure",
    "lca.plots_splits": "lca.report.plots_splits",
    "lca.precision": "lca.tensorflow.precision",
    "lca.pruning_eval": "lca.pruning.evaluation",
    "lca.report_figures": "lca.report.figures",
    "lca.report_splits": "lca.report.splits",
    "lca.statistics": "lca.analysis.statistics",
}


class _MovedModules(importlib.abc.MetaPathFinder):
    """Refuses the old module paths in `MOVED`, naming where each module went."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            raise ModuleNotFoundError(f"{fullname} moved to {MOVED[fullname]}")
        return None


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())


def __getattr__(name: str):
    # Lazy: `import lca` stays cheap (no TensorFlow) for notebooks and the analyses.
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(name)


__all__ = ["allocate", "open_run", "prune", "verify_error", "__version__"]
