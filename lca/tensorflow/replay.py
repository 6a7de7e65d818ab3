"""The mini-batch gradient of a recorded training step, for ``allocate.causes``
(`lca.allocation.replay` uses it to replay Adam/AdamW)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Config
from ..storage import RecordedBatches, RunError, Trajectory


class BatchGradient:
    """g_B(θ_t) as the training step computed it: training model, recorded batch, step t's
    dropout randomness.

    The model is rebuilt as ``lca train`` built it (same seed, so the same dropout seeds);
    Keras' seed generators hold [seed, calls] and every ``training=True`` call adds one, so
    before iteration t's gradient each generator is set to [seed, t].
    """

    def __init__(self, run_dir: str | Path, config: Config, trajectory: Trajectory) -> None:
        import keras
        import tensorflow as tf

        from ..data import load_dataset
        from .models import build_model
        from .runtime import per_example_loss

        dataset = load_dataset(config.data, run_dir)
        keras.utils.set_random_seed(config.training.seed)
        self.model = build_model(config.model, dataset.input_shape, dataset.num_classes)
        self.variables = list(self.model.trainable_variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        if sum(self.sizes) != trajectory.theta.shape[1]:
            raise RunError(f"{run_dir}: the training model's parameters differ from the recorded")
        self.seeds = [
            (v, np.array(v.numpy()))
            for v in self.model.non_trainable_variables
            if "seed_generator_state" in v.path
        ]
        self.x = tf.constant(dataset.x_train)
        self.y = tf.constant(dataset.y_train)
        self.batch = RecordedBatches(trajectory, len(dataset.y_train))
        loss_of = per_example_loss(config.model.loss, config.model.from_logits)

        def gradient(idx):
            x = tf.gather(self.x, idx)
            y = tf.gather(self.y, idx)
            with tf.GradientTape() as tape:
                logits = self.model(x, training=True)
                loss = tf.reduce_mean(loss_of(y, logits))
            grads = tape.gradient(loss, self.variables)
            return [tf.reshape(tf.convert_to_tensor(g), [-1]) for g in grads]

        self._gradient = tf.function(gradient, reduce_retracing=True)

    def __call__(self, t: int, theta: np.ndarray) -> np.ndarray:
        """(K,) float32 g_B of iteration t at θ_t (the recorded row)."""
        offset = 0
        for var, shape, size in zip(self.variables, self.shapes, self.sizes, strict=True):
            var.assign(theta[offset : offset + size].reshape(shape))
            offset += size
        for var, initial in self.seeds:
            var.assign(np.array([initial[0], t], dtype=initial.dtype))
        parts = self._gradient(self.batch(t))
        return np.concatenate([np.asarray(p) for p in parts])
