"""Reduced-precision gradient arithmetic that leaves the loss bitwise float32.

LCA's conserved quantity is the loss change, so the losses must be exact float32 whatever
the gradients cost. ``allocate.precision: bfloat16`` therefore keeps every forward operation
as it is and reduces only the backward pass: each dense and 2-D convolution layer's matrix
products for dx and dW take bfloat16 inputs (oneDNN runs them on AMX / AVX512-BF16 units,
accumulating in float32) and return float32. Everything else in the backward pass (ReLU
masks, pooling, biases, softmax, the float64 sums over batches) is unchanged.

Measured against the alternatives on a 2-core CPU (docs/performance.md#precision-modes):
Keras' ``mixed_bfloat16`` policy also rounds the forward activations (so the loss needs a
second, float32 forward pass) and is less accurate; oneDNN's ``TF_SET_ONEDNN_FPMATH_MODE``
is process-wide, so it cannot keep the loss in float32 within one evaluation.

The switch is read while TensorFlow traces a function (`backward_precision`), so one
model serves a float32 and a bfloat16 compiled objective side by side.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_BACKWARD = contextvars.ContextVar("lca_backward_precision", default="float32")


@contextlib.contextmanager
def backward_precision(precision: str) -> Iterator[None]:
    """Trace the patched layers' gradients in ``precision`` ("float32" or "bfloat16")."""
    token = _BACKWARD.set(precision)
    try:
        yield
    finally:
        _BACKWARD.reset(token)


@contextlib.contextmanager
def tensor_float_32(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 on GPUs for the calls inside; TensorFlow reads the flag when
    each kernel runs. No effect on CPUs, which have no TF32."""
    import tensorflow as tf

    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(enabled)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def reduced() -> bool:
    return _BACKWARD.get() == "bfloat16"


def _matmul_bf16_backward(x, w, x16=None):
    import tensorflow as tf

    @tf.custom_gradient
    def matmul(x, w):
        def grad(dy):
            dy16 = tf.cast(dy, tf.bfloat16)
            dx = tf.matmul(dy16, tf.cast(w, tf.bfloat16), transpose_b=True)
            inputs = tf.cast(x, tf.bfloat16) if x16 is None else x16
            dw = tf.matmul(inputs, dy16, transpose_a=True)
            return tf.cast(dx, x.dtype), tf.cast(dw, w.dtype)

        return tf.matmul(x, w), grad

    return matmul(x, w)


def matmul(x, w, x16=None):
    """``x @ w`` (float32, x of rank 2) with the gradients in the traced precision.

    ``x16``, when given, is ``x`` already in bfloat16 (inputs that never change, such as a
    first layer's data, are cast once rather than at every evaluation).
    """
    import tensorflow as tf

    return _matmul_bf16_backward(x, w, x16) if reduced() else tf.matmul(x, w)


def kernel_gradient(h, dz, h16=None):
    """``hᵀ dz``, a dense kernel's gradient computed directly, in the traced precision."""
    import tensorflow as tf

    if reduced():
        inputs = tf.cast(h, tf.bfloat16) if h16 is None else h16
        product = tf.matmul(inputs, tf.cast(dz, tf.bfloat16), transpose_a=True)
        return tf.cast(product, dz.dtype)
    return tf.matmul(h, dz, transpose_a=True)


def _conv2d_bf16_backward(forward, strides, padding: str, dilations):
    import tensorflow as tf

    strides = [1, *strides, 1]
    dilations = [1, *dilations, 1]
    padding = padding.upper()

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dy16 = tf.cast(dy, tf.bfloat16)
            options = dict(strides=strides, padding=padding, dilations=dilations)
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x),
                filter=tf.cast(kernel, tf.bfloat16),
                out_backprop=dy16,
                data_format="NHWC",
                **options,
            )
            dk = tf.raw_ops.Conv2DBackpropFilter(
                input=tf.cast(x, tf.bfloat16),
                filter_sizes=tf.shape(kernel),
                out_backprop=dy16,
                data_format="NHWC",
                **options,
            )
            return tf.cast(dx, x.dtype), tf.cast(dk, kernel.dtype)

        return forward(x, kernel), grad

    return conv


def enable_reduced_backward(model) -> list[str]:
    """Let the model's Dense and Conv2D layers follow `backward_precision`.

    Outside a bfloat16 trace the layers run their own, unchanged code, so float32 results
    stay bitwise those of an unpatched model. Layers of other kinds (and dense layers on
    inputs of rank > 2, grouped or channels-first convolutions, float16 policies) keep
    float32 gradients. Returns the names of the layers that follow the switch.
    """
    import keras
    import tensorflow as tf

    from .runtime import all_layers

    followed = []
    for layer in all_layers(model):
        if getattr(layer, "_lca_reduced_backward", False):
            followed.append(layer.name)
            continue
        if getattr(layer, "dtype_policy", None) is None or layer.dtype_policy.name != "float32":
            continue
        if type(layer) is keras.layers.Dense and not getattr(layer, "lora_enabled", False):
            original = layer.call

            def call(inputs, training=None, _layer=layer, _original=original):
                if not reduced() or len(inputs.shape) != 2:
                    return _original(inputs, training=training)
                x = matmul(inputs, tf.convert_to_tensor(_layer.kernel))
                if _layer.bias is not None:
                    x = keras.ops.add(x, _layer.bias)
                return _layer.activation(x) if _layer.activation is not None else x

            layer.call = call
        elif (
            type(layer) is keras.layers.Conv2D
            and layer.data_format == "channels_last"
            and getattr(layer, "groups", 1) == 1
        ):
            original = layer.convolution_op
            conv = _conv2d_bf16_backward(
                original, list(layer.strides), layer.padding, list(layer.dilation_rate)
            )

            def convolution_op(inputs, kernel, _original=original, _conv=conv):
                if not reduced():
                    return _original(inputs, kernel)
                return _conv(inputs, tf.convert_to_tensor(kernel))

            layer.convolution_op = convolution_op
        else:
            continue
        layer._lca_reduced_backward = True
        followed.append(layer.name)
    return followed
