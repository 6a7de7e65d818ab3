"""Phase 1, training: the loop, the same for every framework (`loop`), with θ stored
every k steps when asked (`segments`), and ``lca import``, a run made from saved
checkpoints (`checkpoints`). The frameworks' trainers are
`lca.tensorflow.training` and `lca.torch.training`; the recorders of loops lca does
not own, `lca.keras` (``model.fit``) and `lca.torch`.
"""

from .loop import (
    LayerSettings,
    TrainingDiverged,
    TrainResult,
    batch_schedule,
    make_trainer,
    resolve_layer_settings,
    train,
)

__all__ = [
    "LayerSettings",
    "TrainResult",
    "TrainingDiverged",
    "batch_schedule",
    "make_trainer",
    "resolve_layer_settings",
    "train",
]
