"""The full-set loss and gradient split exactly into classes (``allocate.per_class``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..quadrature import ClassLossAndGradient
from .objective import _assign_flat, _fixed_batches, segment_point
from .runtime import all_layers, per_example_loss


class PerClassObjective:
    """L, ∇L and their exact split into classes: L = Σ_c L_c, L_c = (1/N) Σ_{i in class c} l_i.

    Returns ``{split: ClassLossAndGradient}`` (``class_loss`` (C,), ``class_gradient`` (C, K)).
    Without batch norm the loss does not depend on how examples are batched, so the evaluation
    batches are made class-pure (each class padded with zero-weight examples): every batch's
    gradient belongs to one class and the split costs no extra backward pass. With batch norm
    the fixed batches define L, so each batch takes one forward pass and C class-masked backward
    passes.
    """

    def __init__(
        self,
        model,
        splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
        eval_batch_size: int,
        num_classes: int,
        *,
        jit_compile: bool = False,
        from_logits: bool = True,
        training: bool = True,
    ) -> None:
        import keras
        import tensorflow as tf

        self.model = model
        self.training = training
        self._per_example = per_example_loss("sparse_categorical_crossentropy", from_logits)
        self.variables = list(model.trainable_variables)
        self.num_params = sum(int(np.prod(v.shape)) for v in self.variables)
        self.num_classes = num_classes
        self.split_names = list(splits)
        self.batch_norm = any(
            isinstance(layer, keras.layers.BatchNormalization) for layer in all_layers(model)
        )
        self.padding = {}  # split -> padded examples (class-pure batches only)
        self._data = {}
        for name, (x, y) in splits.items():
            if self.batch_norm:
                self._data[name] = _fixed_batches(x, y, eval_batch_size)
            else:
                self._data[name], self.padding[name] = _class_pure_batches(
                    x, y, eval_batch_size, num_classes
                )
        self._compiled = tf.function(self._evaluate, jit_compile=jit_compile)
        self.evaluations = 0

    def _flat(self, grads):
        import tensorflow as tf

        return tf.concat([tf.reshape(tf.cast(g, tf.float64), [-1]) for g in grads], 0)

    def _class_pure(self, name):
        import tensorflow as tf

        xb, yb, wb, cb, n = self._data[name]
        C = self.num_classes
        class_loss = tf.zeros([C], tf.float64)
        class_grad = tf.zeros([C, self.num_params], tf.float64)
        for i in tf.range(tf.shape(xb)[0]):
            with tf.GradientTape() as tape:
                logits = self.model(xb[i], training=self.training)
                losses = wb[i] * self._per_example(yb[i], logits)
                scaled = tf.reduce_sum(losses) / n
            flat = self._flat(tape.gradient(scaled, self.variables))
            index = tf.reshape(cb[i], [1, 1])
            class_grad = tf.tensor_scatter_nd_add(class_grad, index, flat[None])
            loss_sum = tf.reduce_sum(tf.cast(losses, tf.float64))
            class_loss = tf.tensor_scatter_nd_add(class_loss, index, loss_sum[None])
        return class_loss / n, class_grad

    def _masked(self, name):
        import tensorflow as tf

        (xb, yb), rest, n = self._data[name]
        C = self.num_classes

        def batch(x, y):
            with tf.GradientTape(persistent=True) as tape:
                logits = self.model(x, training=self.training)
                losses = self._per_example(y, logits)
                per_class = tf.math.unsorted_segment_sum(losses, y, C) / n
                targets = [per_class[c] for c in range(C)]  # sliced inside: taped
            grads = tf.stack([self._flat(tape.gradient(t, self.variables)) for t in targets])
            sums = tf.math.unsorted_segment_sum(tf.cast(losses, tf.float64), y, C)
            return sums, grads

        class_loss = tf.zeros([C], tf.float64)
        class_grad = tf.zeros([C, self.num_params], tf.float64)
        for i in tf.range(tf.shape(xb)[0]):
            sums, grads = batch(xb[i], yb[i])
            class_loss += sums
            class_grad += grads
        if rest is not None:
            sums, grads = batch(*rest)
            class_loss += sums
            class_grad += grads
        return class_loss / n, class_grad

    def _evaluate(self, theta):
        import tensorflow as tf

        _assign_flat(self.variables, theta)
        results = []
        for name in self.split_names:
            class_loss, class_grad = (self._masked if self.batch_norm else self._class_pure)(name)
            results.append(
                (
                    tf.reduce_sum(class_loss),
                    tf.cast(tf.reduce_sum(class_grad, 0), tf.float32),
                    class_loss,
                    tf.cast(class_grad, tf.float32),
                )
            )
        return results

    def __call__(self, theta: np.ndarray) -> dict[str, ClassLossAndGradient]:
        theta = np.ascontiguousarray(theta, dtype=np.float32)
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({self.num_params},)")
        self.evaluations += 1
        return {
            name: ClassLossAndGradient(float(r[0].numpy()), *(x.numpy() for x in r[1:4]))
            for name, r in zip(self.split_names, self._compiled(theta))
        }

    def between(
        self, start: np.ndarray, end: np.ndarray, fraction: float
    ) -> dict[str, ClassLossAndGradient]:
        return self(segment_point(start, end, fraction))


def _class_pure_batches(x: np.ndarray, y: np.ndarray, eval_batch_size: int, num_classes: int):
    """Batches holding one class each, padded with zero-weight copies to a common size.

    The batch size is the one up to ``eval_batch_size`` that needs the least padding.
    """
    import tensorflow as tf

    counts = np.bincount(y, minlength=num_classes)
    present = counts[counts > 0]
    top = min(eval_batch_size, int(present.max()))
    sizes = np.arange(max(1, top // 4), top + 1)
    padded = (np.ceil(present[None, :] / sizes[:, None]) * sizes[:, None]).sum(axis=1)
    least = padded.min()
    b = int(sizes[padded == least].max())  # the largest batch among the least padded
    xs, ys, ws, cs = [], [], [], []
    for c in np.flatnonzero(counts):
        idx = np.flatnonzero(y == c)
        m = int(np.ceil(len(idx) / b))
        pad = m * b - len(idx)
        full_idx = np.concatenate([idx, np.full(pad, idx[0])])
        weights = np.concatenate([np.ones(len(idx)), np.zeros(pad)]).astype(np.float32)
        xs.append(x[full_idx].reshape(m, b, *x.shape[1:]))
        ys.append(y[full_idx].reshape(m, b))
        ws.append(weights.reshape(m, b))
        cs.append(np.full(m, c, dtype=np.int32))
    data = tuple(tf.constant(np.concatenate(a)) for a in (xs, ys, ws, cs))
    return (*data, len(y)), int(least - len(y))
