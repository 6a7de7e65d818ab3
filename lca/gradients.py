"""Full-dataset loss and gradient at any flat parameter vector θ.

LCA needs L(θ) and ∇L(θ) over a *whole* split, at many θ. For the numbers to be right, L must
be a deterministic function of the trainable parameters alone, so the model is the
evaluation variant (no dropout), batch norm uses the statistics of each fixed, unshuffled
evaluation batch (``training=True``; moving averages are not parameters), and the
per-example losses and per-batch gradients are summed in float64. For speed the data stay
resident on the device and one compiled function runs every batch of every split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


def configure_tensorflow(threads: int | None = None, allow_tf32: bool = False) -> None:
    """Set thread counts (must precede TensorFlow's first op) and keep TF32 off by default.

    TensorFlow's CPU kernels split reductions by thread, so a fixed thread count is what
    makes results bitwise reproducible across processes.
    """
    import tensorflow as tf

    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(threads, 2)))
        except RuntimeError:  # TensorFlow already initialised in this process
            if tf.config.threading.get_intra_op_parallelism_threads() not in (0, threads):
                raise RuntimeError(
                    f"cannot set {threads} threads: TensorFlow is already running with "
                    f"{tf.config.threading.get_intra_op_parallelism_threads()}"
                ) from None
    tf.config.experimental.enable_tensor_float_32_execution(allow_tf32)


def tf32_enabled() -> bool:
    import tensorflow as tf

    return bool(tf.config.experimental.tensor_float_32_execution_enabled())


class FullBatchObjective:
    """L and ∇L of every split at a flat θ, compiled once: ``objective(theta)``.

    Returns ``{split: (loss, grad)}`` with ``loss`` a float64 mean cross-entropy over the
    split and ``grad`` its float32 gradient as a flat vector in the layout's order.
    """

    def __init__(
        self,
        model,
        splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
        eval_batch_size: int,
        *,
        jit_compile: bool = False,
    ) -> None:
        import tensorflow as tf

        self.model = model
        self.variables = list(model.trainable_variables)
        self.sizes = [int(np.prod(v.shape)) for v in self.variables]
        self.num_params = sum(self.sizes)
        self.split_names = list(splits)
        self._data = {}
        for name, (x, y) in splits.items():
            n = len(y)
            if n == 0:
                raise ValueError(f"split {name} is empty")
            bs = min(eval_batch_size, n)
            full = (n // bs) * bs
            batches = (
                tf.constant(x[:full].reshape(n // bs, bs, *x.shape[1:])),
                tf.constant(y[:full].reshape(n // bs, bs)),
            )
            rest = (tf.constant(x[full:]), tf.constant(y[full:])) if full < n else None
            self._data[name] = (batches, rest, n)
        self._compiled = tf.function(self._evaluate, jit_compile=jit_compile)
        self.evaluations = 0

    def _batch(self, x, y, n):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)  # evaluation model: no dropout; BN batch stats
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.cast(logits, tf.float32))
            scaled = tf.reduce_sum(losses) / n
        grads = tape.gradient(scaled, self.variables)
        loss_sum = tf.reduce_sum(tf.cast(losses, tf.float64))
        return loss_sum, [tf.cast(g, tf.float64) for g in grads]

    def _evaluate(self, theta):
        import tensorflow as tf

        offset = 0
        for var, size in zip(self.variables, self.sizes):
            var.assign(tf.reshape(theta[offset : offset + size], var.shape))
            offset += size
        results = []
        for name in self.split_names:
            (xb, yb), rest, n = self._data[name]
            loss = tf.constant(0.0, tf.float64)
            grads = [tf.zeros(v.shape, tf.float64) for v in self.variables]
            for i in tf.range(tf.shape(xb)[0]):
                batch_loss, batch_grads = self._batch(xb[i], yb[i], n)
                loss += batch_loss
                grads = [a + g for a, g in zip(grads, batch_grads)]
            if rest is not None:
                batch_loss, batch_grads = self._batch(rest[0], rest[1], n)
                loss += batch_loss
                grads = [a + g for a, g in zip(grads, batch_grads)]
            flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
            results.append((loss / n, tf.cast(flat, tf.float32)))
        return results

    def __call__(self, theta: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
        theta = np.ascontiguousarray(theta, dtype=np.float32)
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({self.num_params},)")
        self.evaluations += 1
        results = self._compiled(theta)
        return {
            name: (float(loss.numpy()), grad.numpy())
            for name, (loss, grad) in zip(self.split_names, results)
        }


def visible_gpus() -> list[str]:
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def hide_gpus() -> None:
    """Keep a CPU worker off every GPU (must run before TensorFlow starts)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
