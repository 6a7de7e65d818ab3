"""Full-split loss and gradient of a torch model at any flat θ (``torch.func``).

The same contract as the TensorFlow objective (`lca.allocation.backends.Objective`):
``objective(theta) -> {split: LossAndGradient(loss, gradient)}``, the loss the float64 mean of
the per-example losses over the whole split, the gradient summed over fixed, unshuffled
evaluation batches in float64 and returned as float32. The model is in
`evaluation_mode` (dropout off, batch norm on batch statistics) and its
buffers and the parameters outside θ are held fixed, so L is a function of θ alone. θ goes in
through ``torch.func.functional_call``: the module itself is never modified.

``precision`` is ``float32`` or ``tf32``, as for TensorFlow: ``tf32`` runs the gradient passes
with TF32 allowed on GPUs (matrix products and cuDNN convolutions) and takes the losses from a
separate forward pass with TF32 off, so the losses are float32's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..quadrature import LossAndGradient
from .runtime import as_tensor, device, per_example_loss, tf32_allowed

#: The gradient arithmetic a torch objective computes (``allocate.precision``).
TORCH_PRECISIONS = ("float32", "tf32")


class TorchObjective:
    """L and ∇L of every split of a torch model at a flat θ: ``objective(theta)``."""

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
        eval_batch_size: int,
        *,
        loss: str = "sparse_categorical_crossentropy",
        from_logits: bool = True,
        where: torch.device | None = None,
        precision: str = "float32",
    ) -> None:
        self.precision = _torch_precision(precision)
        self.device = where or device()
        self.model = model.to(self.device)
        self.names = list(names)
        params = dict(model.named_parameters())
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.num_params = sum(self.sizes)
        # everything else the forward pass reads stays as it is: buffers, parameters not in θ
        self.fixed = {n: p.detach() for n, p in params.items() if n not in set(self.names)}
        self.fixed.update({n: b for n, b in model.named_buffers()})
        self.split_names = list(splits)
        self._per_example = per_example_loss(loss, from_logits)
        self._data = {}
        for name, (x, y) in splits.items():
            if len(y) == 0:
                raise ValueError(f"split {name} is empty")
            bs = min(eval_batch_size, len(y))
            xt, yt = as_tensor(x, self.device), as_tensor(y, self.device)
            batches = [(xt[i : i + bs], yt[i : i + bs]) for i in range(0, len(y), bs)]
            self._data[name] = (batches, len(y))
        self._grad = torch.func.grad(self._batch_loss, has_aux=True)
        self.evaluations = 0

    def _forward(self, theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, {**self.fixed, **theta}, (x,))

    def _batch_loss(self, theta, x, y, n: int):
        losses = self._per_example(self._forward(theta, x), y)
        return losses.sum() / n, losses.detach().double().sum()

    def _parts(self, theta: np.ndarray) -> dict[str, torch.Tensor]:
        flat = as_tensor(self._checked(theta), self.device)
        pieces = torch.split(flat, self.sizes)
        return {n: p.reshape(s) for n, p, s in zip(self.names, pieces, self.shapes)}

    def _checked(self, theta: np.ndarray) -> np.ndarray:
        theta = np.ascontiguousarray(theta, dtype=np.float32)
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({self.num_params},)")
        return theta

    def __call__(self, theta: np.ndarray) -> dict[str, LossAndGradient]:
        parts = self._parts(theta)
        self.evaluations += 1
        tf32 = self.precision == "tf32"
        out = {}
        with tf32_allowed(tf32):
            for name in self.split_names:
                batches, n = self._data[name]
                loss = torch.zeros((), dtype=torch.float64, device=self.device)
                grad = torch.zeros(self.num_params, dtype=torch.float64, device=self.device)
                for x, y in batches:
                    g, loss_sum = self._grad(parts, x, y, n)
                    loss += loss_sum
                    grad += torch.cat([g[k].reshape(-1) for k in self.names]).double()
                out[name] = LossAndGradient(float(loss) / n, grad.float().cpu().numpy())
        if tf32:  # gradients on TF32 cores, losses from a float32 pass
            losses = self._losses(parts)
            out = {name: value._replace(loss=losses[name]) for name, value in out.items()}
        return out

    @torch.no_grad()
    def _losses(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each split's loss at θ from a forward pass with TF32 off (float64 sums)."""
        out = {}
        with tf32_allowed(False):
            for name in self.split_names:
                batches, n = self._data[name]
                loss = torch.zeros((), dtype=torch.float64, device=self.device)
                for x, y in batches:
                    loss += self._per_example(self._forward(parts, x), y).double().sum()
                out[name] = float(loss) / n
        return out

    def between(
        self, start: np.ndarray, end: np.ndarray, fraction: float
    ) -> dict[str, LossAndGradient]:
        """L and ∇L at start + fraction (end − start)."""
        from ..quadrature import segment_point

        return self(segment_point(start, end, fraction))

    @torch.no_grad()
    def scores(self, theta: np.ndarray) -> dict[str, tuple[float, int]]:
        """Each split's loss and number of right predictions (argmax) at θ, forward only,
        with TF32 off (the losses of every precision are float32's)."""
        parts = self._parts(theta)
        out = {}
        with tf32_allowed(False):
            for name in self.split_names:
                batches, n = self._data[name]
                loss, right = 0.0, 0
                for x, y in batches:
                    outputs = self._forward(parts, x)
                    loss += float(self._per_example(outputs, y).double().sum())
                    right += int((outputs.argmax(-1) == y.reshape(-1)).sum())
                out[name] = (loss / n, right)
        return out

    def num_examples(self, split: str) -> int:
        return int(self._data[split][1])

    def with_precision(self, precision: str) -> TorchObjective:
        """The same objective (model, data) with gradients in ``precision``: a fall-back."""
        other = copy.copy(self)
        other.precision = _torch_precision(precision)
        other._grad = torch.func.grad(other._batch_loss, has_aux=True)
        other.evaluations = 0
        return other


def _torch_precision(precision: str) -> str:
    if precision not in TORCH_PRECISIONS:
        raise ValueError(
            f"precision {precision!r}: torch runs are allocated in float32 or tf32 "
            "(bfloat16 is TensorFlow only)"
        )
    return precision
