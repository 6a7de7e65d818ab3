"""TensorFlow at run time: threads and TF32, the per-example loss, a model's layers and GPUs.

Training, the allocation and the models' own helpers share these; none builds a model.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..config import ModelError


def configure_tensorflow(threads: int | None = None) -> None:
    """Set thread counts (must precede TensorFlow's first op) and turn TF32 off.

    TensorFlow's CPU kernels split reductions by thread, so a fixed thread count is what
    makes results bitwise reproducible across processes. TF32 stays off but inside the
    gradient passes of ``allocate.precision: tf32`` (`lca.tensorflow.precision.tensor_float_32`).
    """
    import tensorflow as tf

    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(threads, 2)))
        except RuntimeError:  # TensorFlow already initialised in this process
            running = tf.config.threading.get_intra_op_parallelism_threads()
            if running not in (0, threads):
                raise RuntimeError(
                    f"cannot set {threads} threads: TensorFlow is already running with {running}"
                ) from None
            if running == 0:  # its default: results are reproducible only at that count
                warnings.warn(
                    f"TensorFlow already runs with its default thread count in this process: "
                    f"{threads} threads apply only in a fresh process (e.g. the lca command)",
                    stacklevel=2,
                )
    tf.config.experimental.enable_tensor_float_32_execution(False)


def per_example_loss(name: str = "sparse_categorical_crossentropy", from_logits: bool = True):
    """``f(y, outputs) -> (N,) float32`` losses of the run's declared loss.

    The mean over examples of these is what Keras' ``model.fit`` minimises with the same loss
    (mean squared error: the mean over each example's outputs, then over examples).
    """
    import tensorflow as tf

    if name == "sparse_categorical_crossentropy":
        if from_logits:
            return lambda y, out: tf.nn.sparse_softmax_cross_entropy_with_logits(
                y, tf.cast(out, tf.float32)
            )
        import keras

        return lambda y, out: keras.losses.sparse_categorical_crossentropy(
            y, tf.cast(out, tf.float32)
        )
    if name == "mean_squared_error":

        def mse(y, out):
            out = tf.cast(out, tf.float32)
            y = tf.cast(y, tf.float32)
            if y.shape.rank == out.shape.rank - 1:
                y = y[..., None]
            squared = tf.square(out - y)
            return tf.reduce_mean(tf.reshape(squared, [tf.shape(squared)[0], -1]), 1)

        return mse
    raise ValueError(f"unknown loss {name!r}")


def all_layers(model) -> list:
    """Every layer of a model, nested models' layers included (depth first)."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(all_layers(layer))
    return found


def evaluation_mode(model) -> list[str]:
    """Make the model's batch-norm layers use batch statistics even at ``training=False``.

    The loss LCA integrates must be a function of the trainable weights alone; moving
    averages are not among them. Returns the names of the layers switched.
    """
    import keras

    switched = []
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not getattr(
            layer, "_lca_batch_statistics", False
        ):
            original = layer.call

            def call(inputs, training=None, mask=None, _original=original):
                return _original(inputs, training=True, mask=mask)

            layer.call = call
            layer._lca_batch_statistics = True
            switched.append(layer.name)
    return switched


def check_deterministic(model, x: np.ndarray, training: bool) -> None:
    """Raise ModelError unless two forward passes on ``x`` agree bitwise; name the layer.

    Catches what makes the loss random at a fixed θ: dropout or noise active at evaluation,
    random ops in a custom layer.
    """
    import keras
    import tensorflow as tf

    x = tf.constant(x)
    first = tf.nest.flatten(model(x, training=training))
    second = tf.nest.flatten(model(x, training=training))
    if all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, second)):
        return
    culprit = "its output"
    try:  # the first layer whose output differs, through a probe model over every layer
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        probe = keras.Model(model.inputs, [layer.output for layer in layers])
        a = probe(x, training=training)
        b = probe(x, training=training)
        for layer, u, v in zip(layers, a, b):
            if not np.array_equal(np.asarray(u), np.asarray(v)):
                culprit = f"layer {layer.name} ({type(layer).__name__})"
                break
    except Exception:  # a subclassed model has no symbolic layer outputs
        pass
    raise ModelError(
        f"model: the loss is not a deterministic function of the trainable weights: {culprit} "
        "gives different values on the same input (dropout, noise or random ops active at "
        "evaluation); make it honour training=False"
    )


def visible_gpus() -> list[str]:
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]
