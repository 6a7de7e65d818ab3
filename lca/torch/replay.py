"""The mini-batch gradient of a recorded torch step, for ``lca allocate --causes``.

Adam's and AdamW's terms need g_B(θ_t), the gradient the optimiser was given at step t:
`BatchGradient` recomputes it at the recorded θ_t with the training model (train mode,
so dropout is on), on step t's recorded examples, with the loss of the run (the mean of
`per_example_loss` over the batch). Before the forward pass the
generators are seeded by `seed_step` with (seed, t), as ``lca train``
seeded step t, so the dropout masks are that step's. A run recorded from the user's own loop
(``lca.torch.TrajectoryRecorder``) drew its masks from its own random state: a model with
dropout is replayed with other masks there, which the replay's residual shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..storage import RecordedBatches, RunError, Trajectory
from .allocation import rebuild_model
from .runtime import as_tensor, device, per_example_loss, seed_step


class BatchGradient:
    """g_B(θ_t) as the torch training step computed it: ``gradient(t, theta)``.

    The same interface as the TensorFlow one (`lca.tensorflow.replay.BatchGradient`):
    ``__call__(t, theta)`` is the (K,) float32 gradient in θ's layout order, ``batch(t)`` the
    examples of iteration t (every training example, in stored order, for a full-batch run;
    a recorder's row without its padding, -1).
    """

    def __init__(self, run_dir: str | Path, config: Config, trajectory: Trajectory) -> None:
        from ..data import load_dataset

        dataset = load_dataset(config.data, run_dir)
        self.seed = int(config.training.seed)
        self.where = device()
        model, names = rebuild_model(run_dir, config, trajectory, dataset)
        self.model = model.to(self.where).train()
        named = dict(self.model.named_parameters())
        self.params = [named[n] for n in names]
        for p in self.model.parameters():  # only θ is differentiated
            p.requires_grad_(any(p is q for q in self.params))
        self.sizes = [p.numel() for p in self.params]
        self.loss_of = per_example_loss(config.model.loss, config.model.from_logits)
        self.x = as_tensor(dataset.x_train, self.where)
        self.y = as_tensor(dataset.y_train, self.where)
        self.batch = RecordedBatches(trajectory, len(dataset.y_train))

    def __call__(self, t: int, theta: np.ndarray) -> np.ndarray:
        """(K,) float32 g_B of iteration t at θ_t (the recorded row)."""
        batch = self.batch(t)
        if batch.size == 0:
            raise RunError(f"iteration {t}: no training examples were recorded for its batch")
        flat = torch.from_numpy(np.ascontiguousarray(theta, np.float32))
        with torch.no_grad():
            for p, part in zip(self.params, torch.split(flat, self.sizes), strict=True):
                p.copy_(part.reshape(p.shape))
        idx = torch.from_numpy(batch).to(self.where)
        seed_step(self.seed, t)  # step t's dropout masks
        loss = self.loss_of(self.model(self.x[idx]), self.y[idx]).mean()
        grads = torch.autograd.grad(loss, self.params)
        return torch.cat([g.reshape(-1) for g in grads]).cpu().numpy()
