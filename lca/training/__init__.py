"""Phase 1, training: the loop, the same for every framework (:mod:`.loop`), with θ stored
every k steps when asked (:mod:`.segments`), and ``lca import``, a run made from saved
checkpoints (:mod:`.checkpoints`). The frameworks' trainers are
:mod:`lca.tensorflow.training` and :mod:`lca.torch.training`; the recorders of loops lca does
not own, :mod:`lca.keras` (``model.fit``) and :mod:`lca.torch`.
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
