"""Loss Change Allocation (Lan, Liu, Zhou, Yosinski; NeurIPS 2019) on TensorFlow/Keras.

import lca
summary = lca.allocate("runs/mnist_fc_sgd")   # AllocationSummary (what `lca allocate` does)
report = lca.verify_error("runs/mnist_fc_sgd")  # ErrorReport: .passed, .splits, .to_dict()
run = lca.open_run("runs/mnist_fc_sgd")
run.lca("train")[:100]        # A[t, i] for the first 100 iterations (a Zarr slice)
run.to_xarray("train")        # the same as an xarray.Dataset with named dimensions

Record your own model's ``model.fit`` with ``lca.keras.TrajectoryRecorder``.
"""

from ._version import __version__

_LAZY = {
    "open_run": ("storage", "open_run"),
    "allocate": ("allocation", "allocate"),
    "verify_error": ("diagnostics", "verify_error"),
    "prune": ("pruning", "prune"),
}


def __getattr__(name: str):
    # Lazy: `import lca` stays cheap (no TensorFlow) for notebooks and the analyses.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(name)


__all__ = ["allocate", "open_run", "prune", "verify_error", "__version__"]
