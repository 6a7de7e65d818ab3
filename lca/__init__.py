"""Loss Change Allocation (Lan, Liu, Zhou, Yosinski; NeurIPS 2019) on TensorFlow/Keras.

import lca
run = lca.open_run("runs/mnist_fc_sgd")
run.lca("train")[:100]        # A[t, i] for the first 100 iterations (a Zarr slice)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import lca` stays cheap (no TensorFlow) for notebooks and the analyses.
    if name == "open_run":
        from .storage import open_run

        return open_run
    raise AttributeError(name)


__all__ = ["open_run", "__version__"]
