"""``lca train`` with ``framework: torch``: the trainer the training loop drives.

The update rules are the TensorFlow trainer's, written in torch
(`lca.tensorflow.training.Trainer` documents them): heavy-ball SGD as Keras computes
it, Adam and AdamW with Keras' bias correction and ε, per-layer learning rates, momentum and
freezing from ``optimizer.layers``. So one config trains the same way in either framework,
and a run's steps can be re-derived.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import Config
from ..config.layer_settings import resolve_layer_settings
from ..storage import RunError
from .models import build_torch_model, torch_layout
from .runtime import as_tensor, device, per_example_loss, seed_step, versions
from .state import changed_state, fixed_state


class TorchTrainer:
    """Holds the torch model, the data on the device and the optimiser's slots."""

    framework = "torch"

    def __init__(self, config: Config, dataset) -> None:
        self.config = config
        self.where = device()
        self.model = build_torch_model(
            config.model, dataset.input_shape, dataset.num_classes, config.training.seed
        ).to(self.where)
        self.layout = torch_layout(self.model)
        self.names = [e.name.replace("/", ".") for e in self.layout.entries]
        named = dict(self.model.named_parameters())
        self.params = [named[n] for n in self.names]
        self.settings = resolve_layer_settings(config, self.layout)
        self.per_example = per_example_loss(config.model.loss, config.model.from_logits)
        self.classification = config.model.classification
        self.x_train = as_tensor(dataset.x_train, self.where)
        self.y_train = as_tensor(dataset.y_train, self.where)
        self.x_val = as_tensor(dataset.x_val, self.where)
        self.y_val = as_tensor(dataset.y_val, self.where)
        kinds = 1 if config.optimizer.name == "sgd" else 2
        self.slots = [[torch.zeros_like(p) for p in self.params] for _ in range(kinds)]
        self.versions = versions()

    # --- state for resume checkpoints ---------------------------------------------------

    def state(self) -> list[tuple[str, np.ndarray]]:
        """Parameters, buffers and the optimiser's slots."""
        parts = [(f"model/{n}", v.detach().cpu().numpy().copy()) for n, v in self._tensors()]
        parts += [
            (f"slot/{k}/{i}", s.cpu().numpy().copy())
            for k, kind in enumerate(self.slots)
            for i, s in enumerate(kind)
        ]
        return parts  # no random state: each step seeds its own (runtime.seed_step)

    def restore(self, state: list[tuple[str, np.ndarray]], where) -> None:
        expected = [(v.shape, v.dtype) for _, v in self.state()]
        if [(v.shape, v.dtype) for _, v in state] != expected:
            raise RunError(f"{where}: the resume checkpoint does not match the model's variables")
        targets = [v for _, v in self._tensors()] + [s for kind in self.slots for s in kind]
        with torch.no_grad():
            for target, (_, value) in zip(targets, state):
                target.copy_(torch.from_numpy(value))

    def _tensors(self):
        yield from self.model.named_parameters()
        yield from self.model.named_buffers()

    def fixed_state(self) -> list[tuple[str, np.ndarray]]:
        return fixed_state(self.model, self.names)

    def changed_state(self, before) -> list[str]:
        return changed_state(self.model, self.names, before)

    def theta(self) -> np.ndarray:
        return np.concatenate([p.detach().cpu().numpy().reshape(-1) for p in self.params])

    # --- one update -----------------------------------------------------------------------

    def step(self, batch: np.ndarray, iteration: int):
        """One update on the examples ``batch``; returns [loss, accuracy(, probe, θ parts)]."""
        idx = torch.from_numpy(np.asarray(batch)).to(self.where)
        x, y = self.x_train[idx], self.y_train[idx]
        self.model.train()
        seed_step(self.config.training.seed, iteration)  # this step's dropout masks
        outputs = self.model(x)
        loss = self.per_example(outputs, y).mean()
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            self._update(grads, iteration)
        if self.classification:
            accuracy = float((outputs.argmax(-1) == y.reshape(-1)).float().mean())
        else:
            accuracy = float("nan")
        return [float(loss.detach()), accuracy, *self._theta_outputs()]

    def _theta_outputs(self) -> list:
        """θ after the update: a finiteness probe, then each parameter's values."""
        parts = [p.detach().cpu().numpy() for p in self.params]
        return [float(sum(float(p.sum()) for p in parts)), *parts]

    def _update(self, grads, t: int) -> None:
        opt, s = self.config.optimizer, self.settings
        active = [float(t < f) for f in s.freeze_from]
        lr = [torch.tensor(v, dtype=torch.float32) for v in s.lr]
        if opt.name == "sgd":
            for i, (p, g) in enumerate(zip(self.params, grads)):
                vel = self.slots[0][i]
                m = torch.tensor(s.momentum[i], dtype=torch.float32)
                vel.copy_(active[i] * (m * vel - lr[i] * g))
                p.add_(vel)
            return
        if opt.name == "adamw" and opt.weight_decay:  # decoupled, before the step
            for i, p in enumerate(self.params):
                p.sub_(active[i] * (p * opt.weight_decay * lr[i]))
        b1, b2 = np.float32(opt.beta_1), np.float32(opt.beta_2)
        step = np.float32(t + 1)
        scale = float(np.sqrt(np.float32(1) - b2**step) / (np.float32(1) - b1**step))
        for i, (p, g) in enumerate(zip(self.params, grads)):
            m, v = self.slots[0][i], self.slots[1][i]
            # 1 − β rounded once to float32, as in the TensorFlow trainer (not 1 − float32(β))
            m.add_(active[i] * (g - m) * (1.0 - opt.beta_1))
            v.add_(active[i] * (g.square() - v) * (1.0 - opt.beta_2))
            p.sub_(active[i] * lr[i] * scale * m / (v.sqrt() + opt.epsilon))

    @torch.no_grad()
    def validation_accuracy(self, batch_size: int = 2500) -> float:
        """Accuracy on the validation split in eval mode; NaN for a regressor or no split."""
        n = len(self.y_val)
        if not self.classification or n == 0:
            return float("nan")
        self.model.eval()
        hits = 0
        for i in range(0, n, batch_size):
            out = self.model(self.x_val[i : i + batch_size])
            hits += int((out.argmax(-1) == self.y_val[i : i + batch_size].reshape(-1)).sum())
        return hits / n
