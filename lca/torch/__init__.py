"""PyTorch for LCA: record any torch training loop, train the built-ins, allocate with torch.

    recorder = lca.torch.TrajectoryRecorder(model, optimizer, "runs/mine", iterations=1000,
                                            train_data=(x, y), model_fn="my_model:build")
    for x_batch, y_batch in loader:          # any loop: plain, Lightning, HF Trainer
        loss = loss_fn(model(x_batch), y_batch); loss.backward()
        optimizer.step(); optimizer.zero_grad()   # θ is recorded after every step
    recorder.close()

Then ``lca allocate/verify-error/report runs/mine`` as for any run. All PyTorch code of lca
lives in this package, the same modules as `lca.tensorflow`: `models` (the
built-in networks' twins and θ's layout), `runtime` (loss, evaluation mode, devices),
`objective` (full-split gradients with ``torch.func``), `allocation` (the
objective of a run directory), `training` (``lca train`` with ``framework: torch``),
`recorder` (the step-hook recorder) with `recorder_setup` (what it checks and
describes first), `replay` (mini-batch gradients of recorded steps, for ``--causes``),
`state` (weights outside θ; reading weight files without unpickling), `twin`
(a TensorFlow run's trajectory on the torch twin network) and `checkpoints` (state
dicts read as θ, for ``lca import``).
"""

from .models import build_torch_model, keras_to_torch, torch_layout
from .recorder import TrajectoryRecorder
from .state import load_state_dict

__all__ = [
    "TrajectoryRecorder",
    "build_torch_model",
    "keras_to_torch",
    "load_state_dict",
    "torch_layout",
]
