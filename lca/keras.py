"""The public path of the Keras recorder: ``lca.keras.TrajectoryRecorder``.

It records a user's own ``model.fit`` into a run directory; it lives with the training loop
in :mod:`lca.training.recorder`.
"""

from .training.recorder import TrajectoryRecorder, compiled_loss

__all__ = ["TrajectoryRecorder", "compiled_loss"]
