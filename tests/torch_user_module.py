"""A user's module for the torch recorder's tests: data, a model lca does not know, and the
loop's step. ``model_fn``/``data_fn`` name its functions as ``torch_user_module:…``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import lca


def blobs(n: int = 300):
    """8×8 one-channel images of 10 classes: a template per class plus noise."""
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(10, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    x = (templates[y] + 0.5 * rng.normal(size=(n, 8, 8, 1))).astype(np.float32)
    return x, y


X, Y = blobs()
X_TRAIN, Y_TRAIN, X_VAL, Y_VAL = X[:240], Y[:240], X[240:], Y[240:]


def load_data():
    return (X_TRAIN, Y_TRAIN), (X_VAL, Y_VAL)


class Net(nn.Module):
    """flatten → hidden → ReLU → out, plus a constant buffer the forward pass reads."""

    def __init__(self, hidden: int = 16, classes: int = 10):
        super().__init__()
        self.hidden = nn.Linear(64, hidden)
        self.out = nn.Linear(hidden, classes)
        self.register_buffer("offset", torch.full((64,), 0.1))

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.reshape(x.shape[0], -1) + self.offset)))


def build(hidden: int = 16, classes: int = 10) -> nn.Module:
    return Net(hidden, classes)


MODEL_FN = "torch_user_module:build"
DATA_FN = "torch_user_module:load_data"
ALLOCATE = {"eval_batch_size": 1000, "threshold": 1e-4, "precision": "float32"}


def step(model, optimizer, idx, *, backward_only: bool = False) -> None:
    x, y = torch.from_numpy(X_TRAIN[idx]), torch.from_numpy(Y_TRAIN[idx])
    nn.functional.cross_entropy(model(x), y).backward()
    if not backward_only:
        optimizer.step()
        optimizer.zero_grad()


def flat(model, names=None) -> np.ndarray:
    params = dict(model.named_parameters())
    names = names or list(params)
    return np.concatenate([params[n].detach().float().numpy().reshape(-1) for n in names])


def allocated_and_conserved(run_dir, splits=("train",)) -> None:
    """Allocated to the end, within the threshold, LCA summing to the loss change."""
    summary = lca.allocate(run_dir, splits=list(splits), progress=False)
    assert summary.complete and summary.iterations_done == summary.iterations_total
    assert lca.verify_error(run_dir).passed
    run = lca.open_run(run_dir)
    for split in splits:
        loss = run.loss(split)
        sums = run.lca(split)[:].sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(sums + run.error(split), np.diff(loss), rtol=0, atol=1e-9)
        assert loss[-1] < loss[0]  # it learned: there is a loss change to allocate
