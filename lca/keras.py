"""The public path of the Keras recorder: ``lca.keras.TrajectoryRecorder``.

It records a user's own ``model.fit`` into a run directory; it lives with the rest of lca's
TensorFlow code in `lca.tensorflow.recorder`.
"""

from .tensorflow.recorder import TrajectoryRecorder, compiled_loss

__all__ = ["TrajectoryRecorder", "compiled_loss"]
