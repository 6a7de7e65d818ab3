"""Phase 1, training: the loop and its optimisers (:mod:`.loop`); the Keras ``model.fit``
recorder lives in :mod:`.recorder` (public path: :mod:`lca.keras`).
"""

from .loop import (
    LayerSettings,
    Trainer,
    TrainingDiverged,
    TrainResult,
    batch_schedule,
    resolve_layer_settings,
    train,
    trajectory_attrs,
)

__all__ = [
    "LayerSettings",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "batch_schedule",
    "resolve_layer_settings",
    "train",
    "trajectory_attrs",
]
