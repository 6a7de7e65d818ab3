"""Full-dataset loss and gradient at any flat parameter vector θ.

LCA needs L(θ) and ∇L(θ) over a *whole* split, at many θ. For the numbers to be right, L must
be a deterministic function of the trainable parameters alone, so the model is the
evaluation variant (no dropout), batch norm uses the statistics of each fixed, unshuffled
evaluation batch (``training=True``; moving averages are not parameters), and the
per-example losses and per-batch gradients are summed in float64. For speed the data stay
resident on the device and one compiled function runs every batch of every split.

A user's model is not built by us in an evaluation variant, so it is evaluated in inference
mode (``training=False``: dropout and noise layers off) with its batch-norm layers switched to
the statistics of each fixed evaluation batch (`lca.tensorflow.runtime.evaluation_mode`),
which is what the built-ins' ``training=True`` evaluation variants compute;
`lca.tensorflow.runtime.check_deterministic` then verifies that the result does not change
from one call to the next.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np

from ..quadrature import LossAndGradient, segment_point  # noqa: F401 (segment_point re-exported)
from .precision import kernel_gradient, matmul, tensor_float_32
from .runtime import per_example_loss


class FullBatchObjective:
    """L and ∇L of every split at a flat θ, compiled once: ``objective(theta)``.

    Returns ``{split: LossAndGradient(loss, gradient)}`` with ``loss`` the float64 mean of the
    per-example ``loss`` (`per_example_loss`) over the split and ``gradient`` its float32
    gradient as a flat vector in the layout's order. ``training`` is the mode the model is
    called in: True for the built-ins' evaluation variants, False for a user's model after
    `lca.tensorflow.runtime.evaluation_mode`.

    For a network whose first weighted layer is a dense layer on the (flattened) input, the
    pre-activations z = xW + b are affine along a training step, z(s) = z(0) + s (z(1) − z(0)):
    `between` reuses the z of both ends instead of recomputing the largest matrix
    product at every interior quadrature node (about a fifth of MNIST-FC's gradient work).
    """

    def __init__(
        self,
        model,
        splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
        eval_batch_size: int,
        *,
        jit_compile: bool = False,
        reuse_input_layer: bool = True,
        cache_bytes: int = 2**30,
        loss: str = "sparse_categorical_crossentropy",
        from_logits: bool = True,
        training: bool = True,
        precision: str = "float32",
    ) -> None:
        self.model = model
        self.training = training
        self._jit_compile = jit_compile
        self._per_example = per_example_loss(loss, from_logits)
        self.variables = list(model.trainable_variables)
        self.num_params = sum(int(np.prod(v.shape)) for v in self.variables)
        self.split_names = list(splits)
        self._data = {}
        for name, (x, y) in splits.items():
            if len(y) == 0:
                raise ValueError(f"split {name} is empty")
            self._data[name] = _fixed_batches(x, y, eval_batch_size)
        self.chain = _dense_input_chain(model, splits, training) if reuse_input_layer else None
        if self.chain is not None:
            units = self.chain[1].units
            needed = 2 * 4 * units * sum(len(y) for _, y in splits.values())
            if needed > cache_bytes:  # two cached ends of every split's pre-activations
                self.chain = None
        self._compile(precision)

    def _compile(self, precision: str) -> None:
        """(Re)create the compiled functions for gradients in ``precision``.

        ``bfloat16`` reduces the backward matrix products of dense and convolution layers
        (`lca.tensorflow.precision`); ``tf32`` lets GPUs use TF32 tensor cores for the
        gradient pass and takes the losses from a separate forward pass with TF32 off. The
        losses are float32 in every case, bitwise those of ``float32``.
        """
        import tensorflow as tf

        from .precision import backward_precision, enable_reduced_backward

        if precision not in ("float32", "bfloat16", "tf32"):
            raise ValueError(f"unknown precision {precision!r}")
        if precision == "bfloat16":
            enable_reduced_backward(self.model)
        self.precision = precision
        self._h16 = self._cast_inputs()  # split -> the chain's inputs in bfloat16, made once

        def traced(fn):  # the switch is read while TensorFlow traces the function
            def run(*args):
                with backward_precision(precision):
                    return fn(*args)

            return tf.function(run, jit_compile=self._jit_compile)

        self._compiled = traced(self._evaluate)
        self._compiled_between = traced(self._evaluate_between)
        self._compiled_losses = tf.function(self._evaluate_losses, jit_compile=self._jit_compile)
        self._compiled_scores = None  # made on first use: allocations never need it
        self._cache: dict[bytes, list] = {}  # θ fingerprint -> per-split z tensors
        self.evaluations = 0

    def with_precision(self, precision: str) -> FullBatchObjective:
        """The same objective (model, data) with gradients in ``precision``: a fall-back."""
        other = copy.copy(self)
        other._compile(precision)
        return other

    # --- one evaluation batch ---------------------------------------------------------------

    def _loss_terms(self, logits, y, n):
        import tensorflow as tf

        losses = self._per_example(y, logits)
        return tf.reduce_sum(losses) / n, tf.reduce_sum(tf.cast(losses, tf.float64))

    def _batch(self, x, y, n, h16=None):
        """Loss sum and float64 gradients of one batch; also its z when the chain is used.

        ``h16``: the chain's flat inputs already in bfloat16 (``precision: bfloat16``).
        """
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits, z = self._forward(x, h16)
            scaled, loss_sum = self._loss_terms(logits, y, n)
        grads = tape.gradient(scaled, self.variables)
        return loss_sum, [tf.cast(g, tf.float64) for g in grads], z

    def _forward(self, x, h16=None):
        """Logits of one batch, and the first dense layer's z when the chain is used."""
        if self.chain is None:  # no dropout; BN batch stats (see the module docstring)
            return self.model(x, training=self.training), None
        pre, dense, tail = self.chain
        h = _apply(pre, x, self.training)
        z = matmul(h, dense.kernel.value, h16) + dense.bias.value
        return _apply(tail, dense.activation(z), self.training), z

    def _batch_between(self, x, y, n, z0, z1, fraction, h16=None):
        """The same at θ(s) from the ends' pre-activations: z(s) = z0 + s (z1 − z0)."""
        import tensorflow as tf

        pre, dense, tail = self.chain
        z = z0 + fraction * (z1 - z0)
        tail_vars = self.variables[2:]
        with tf.GradientTape() as tape:
            tape.watch(z)
            logits = _apply(tail, dense.activation(z), self.training)
            scaled, loss_sum = self._loss_terms(logits, y, n)
        dz, *grads = tape.gradient(scaled, [z, *tail_vars])
        h = _apply(pre, x, self.training)
        grads = [kernel_gradient(h, dz, h16), tf.reduce_sum(dz, 0), *grads]
        return loss_sum, [tf.cast(g, tf.float64) for g in grads]

    # --- whole splits -----------------------------------------------------------------------

    def _accumulate(self, name, batch_fn, extra_full=(), extra_rest=()):
        """Sum a split's batches (one compiled loop); ``batch_fn(x, y, n, *extra)``."""
        import tensorflow as tf

        (xb, yb), rest, n = self._data[name]
        loss = tf.constant(0.0, tf.float64)
        grads = [tf.zeros(v.shape, tf.float64) for v in self.variables]
        record = self._records_z(batch_fn)  # a Python bool: fixed when traced
        zs = tf.TensorArray(tf.float32, size=tf.shape(xb)[0] if record else 0)
        for i in tf.range(tf.shape(xb)[0]):
            out = batch_fn(xb[i], yb[i], n, *(e[i] for e in extra_full))
            loss += out[0]
            grads = [a + g for a, g in zip(grads, out[1])]
            if record:
                zs = zs.write(i, out[2])
        z_rest = None
        if rest is not None:
            out = batch_fn(rest[0], rest[1], n, *extra_rest)
            loss += out[0]
            grads = [a + g for a, g in zip(grads, out[1])]
            z_rest = out[2] if record else None
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        z = (zs.stack(), z_rest) if record else None
        return loss / n, tf.cast(flat, tf.float32), z

    def _records_z(self, batch_fn) -> bool:
        return self.chain is not None and batch_fn == self._batch

    def _evaluate(self, theta):
        _assign_flat(self.variables, theta)
        return [
            self._accumulate(name, self._batch, *self._inputs16(name)) for name in self.split_names
        ]

    def _inputs16(self, name) -> tuple[tuple, tuple]:
        """The chain's flat inputs of a split in bfloat16, as extra batch arguments (or none)."""
        return self._h16.get(name, ((), ()))

    def _cast_inputs(self) -> dict[str, tuple]:
        """A first dense layer's kernel gradient multiplies by the data themselves: under
        ``precision: bfloat16`` they are cast once, here (eagerly), not at every evaluation."""
        import tensorflow as tf

        if self.chain is None or self.precision != "bfloat16":
            return {}
        cast = {}
        for name, ((xb, _), rest, _) in self._data.items():
            full = tf.cast(tf.reshape(xb, [xb.shape[0], xb.shape[1], -1]), tf.bfloat16)
            tail = (
                ()
                if rest is None
                else (tf.cast(tf.reshape(rest[0], [rest[0].shape[0], -1]), tf.bfloat16),)
            )
            cast[name] = ((full,), tail)
        return cast

    def _evaluate_losses(self, theta):
        """Every split's loss, forward only: the same operations as `_evaluate`'s."""
        return [loss for loss, _ in self._evaluate_forward(theta, count_right=False)]

    def _evaluate_forward(self, theta, count_right: bool):
        """Every split's (loss, right predictions), forward only; ``count_right`` False: 0."""
        import tensorflow as tf

        def terms(x, y, n):
            logits = self._forward(x)[0]
            loss_sum = self._loss_terms(logits, y, n)[1]
            if not count_right:
                return loss_sum, tf.constant(0, tf.int64)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int64)
            right = tf.equal(predicted, tf.cast(tf.reshape(y, [-1]), tf.int64))
            return loss_sum, tf.reduce_sum(tf.cast(right, tf.int64))

        _assign_flat(self.variables, theta)
        results = []
        for name in self.split_names:
            (xb, yb), rest, n = self._data[name]
            total, right = tf.constant(0.0, tf.float64), tf.constant(0, tf.int64)
            for i in tf.range(tf.shape(xb)[0]):
                loss_sum, hits = terms(xb[i], yb[i], n)
                total, right = total + loss_sum, right + hits
            if rest is not None:
                loss_sum, hits = terms(rest[0], rest[1], n)
                total, right = total + loss_sum, right + hits
            results.append((total / n, right))
        return results

    def _evaluate_between(self, theta, fraction, z0s, z1s):
        _assign_flat(self.variables, theta)
        results = []
        for name, (z0, r0), (z1, r1) in zip(self.split_names, z0s, z1s):

            def batch_fn(x, y, n, a, b, h16=None):
                return self._batch_between(x, y, n, a, b, fraction, h16)

            full, rest = self._inputs16(name)
            loss, grad, _ = self._accumulate(name, batch_fn, (z0, z1, *full), (r0, r1, *rest))
            results.append((loss, grad))
        return results

    # --- public -----------------------------------------------------------------------------

    def _checked(self, theta: np.ndarray) -> np.ndarray:
        theta = np.ascontiguousarray(theta, dtype=np.float32)
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({self.num_params},)")
        return theta

    def _unpack(self, results) -> dict[str, LossAndGradient]:
        return {
            name: LossAndGradient(float(result[0].numpy()), result[1].numpy())
            for name, result in zip(self.split_names, results)
        }

    def __call__(self, theta: np.ndarray) -> dict[str, LossAndGradient]:
        theta = self._checked(theta)
        self.evaluations += 1
        if self.precision == "tf32":  # gradients on TF32 cores, losses from a float32 pass
            with tensor_float_32(True):
                results = self._compiled(theta)
            with tensor_float_32(False):
                losses = self._compiled_losses(theta)
            results = [(loss, *rest) for loss, (_, *rest) in zip(losses, results)]
        else:
            results = self._compiled(theta)
        if self.chain is not None:  # keep the pre-activations of the two latest points
            self._cache[theta.tobytes()] = [r[2] for r in results]
            while len(self._cache) > 2:
                self._cache.pop(next(iter(self._cache)))
        return self._unpack(results)

    def scores(self, theta: np.ndarray) -> dict[str, tuple[float, int]]:
        """Each split's loss and number of right predictions (argmax of the outputs) at θ,
        forward only: what a pruned θ is worth. The loss is bitwise ``__call__``'s."""
        import tensorflow as tf

        theta = self._checked(theta)
        if self._compiled_scores is None:
            self._compiled_scores = tf.function(
                lambda t: self._evaluate_forward(t, count_right=True),
                jit_compile=self._jit_compile,
            )
        with tensor_float_32(False):  # the losses of every precision are float32's
            results = self._compiled_scores(theta)
        return {
            name: (float(loss.numpy()), int(right.numpy()))
            for name, (loss, right) in zip(self.split_names, results)
        }

    def num_examples(self, split: str) -> int:
        return int(self._data[split][2])

    def between(
        self, start: np.ndarray, end: np.ndarray, fraction: float
    ) -> dict[str, LossAndGradient]:
        """L and ∇L at start + fraction (end − start): as ``__call__`` at that point.

        Cheaper when both ends were the latest points evaluated and the input layer is
        affine (see the class docstring); otherwise the point is evaluated directly.
        """
        point = segment_point(start, end, fraction)
        keys = [np.ascontiguousarray(e, np.float32).tobytes() for e in (start, end)]
        ends = [self._cache.get(key) for key in keys]
        if self.chain is None or ends[0] is None or ends[1] is None:
            return self(point)
        self.evaluations += 1
        with tensor_float_32(self.precision == "tf32"):
            results = self._compiled_between(point, np.float32(fraction), ends[0], ends[1])
        return self._unpack(results)


def _assign_flat(variables, theta) -> None:
    """Load a flat θ into the model's variables (inside the compiled function)."""
    import tensorflow as tf

    offset = 0
    for var in variables:
        size = int(np.prod(var.shape))
        var.assign(tf.reshape(theta[offset : offset + size], var.shape))
        offset += size


def _apply(layers, x, training: bool = True):
    for layer in layers:
        x = layer(x, training=training)
    return x


def _dense_input_chain(model, splits, training: bool = True):
    """(pre, dense, tail) when the model is ``tail(dense(pre(x)))`` with ``pre`` weightless.

    Only plain chains qualify, checked numerically on a few examples, and the dense layer's
    kernel and bias must be the first two trainable variables (θ's layout order) and act on
    flat (N, features) inputs.
    """
    import keras
    import tensorflow as tf

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    first = next((i for i, layer in enumerate(layers) if layer.trainable_weights), None)
    if first is None:
        return None
    pre, dense, tail = layers[:first], layers[first], layers[first + 1 :]
    if (
        not isinstance(dense, keras.layers.Dense)
        or not dense.use_bias
        or not all(isinstance(layer, (keras.layers.Flatten, keras.layers.Reshape)) for layer in pre)
        or model.trainable_variables[0] is not dense.kernel
        or model.trainable_variables[1] is not dense.bias
    ):
        return None
    x = next(iter(splits.values()))[0][:16]
    try:
        h = _apply(pre, tf.constant(x), training)
        if h.shape.rank != 2:  # the reuse multiplies (N, features) by the kernel
            return None
        chained = _apply(tail, dense(h, training=training), training)
        direct = model(x, training=training)
    except (ValueError, TypeError):  # not a chain after all (a branch needs other inputs)
        return None
    if not hasattr(direct, "shape"):  # several outputs
        return None
    if chained.shape != direct.shape or not np.allclose(
        chained.numpy(), direct.numpy(), rtol=1e-5, atol=1e-6
    ):
        return None
    return pre, dense, tail


def _fixed_batches(x: np.ndarray, y: np.ndarray, eval_batch_size: int):
    """The split in fixed, unshuffled batches of one size, plus a smaller remainder batch."""
    import tensorflow as tf

    n = len(y)
    bs = min(eval_batch_size, n)
    full = (n // bs) * bs
    batches = (
        tf.constant(x[:full].reshape(n // bs, bs, *x.shape[1:])),
        tf.constant(y[:full].reshape(n // bs, bs)),
    )
    rest = (tf.constant(x[full:]), tf.constant(y[full:])) if full < n else None
    return batches, rest, n
