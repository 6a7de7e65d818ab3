"""Building a run's network: the paper's four (supplement S7), the transformer, a user's own.

LCA works on one flat vector θ of all trainable parameters, and its map
(`lca.tensorflow.parameters.parameter_layout`) is stored with each run and compared on
reload, so layer and variable names here are explicit and stable rather than Keras's
auto-generated ones.

Every network outputs logits. ``evaluation=True`` builds the same network without dropout,
because the full-set loss that LCA integrates must be a deterministic function of θ.

A user's model (``model.builder: "module:function"``) is built by calling that function with
``model.kwargs``; its evaluation is made deterministic differently (inference mode, batch
norm on batch statistics: see `lca.tensorflow.runtime.evaluation_mode`), since its code
is not ours.
"""

from __future__ import annotations

import keras

from ..config import ModelConfig, ModelError, import_function
from ..config.user_code import holds_bytecode

BN_SUFFIX = "_bn"


def from_keras_config(config: str) -> keras.Model:
    """A builder for a model saved as ``model.to_json()`` (what the recorder stores without
    ``model_fn``); its custom layers, if any, must be registered Keras serializables.

    A run directory is data, possibly someone else's: the JSON is deserialized in Keras safe
    mode even where ``keras.config.enable_unsafe_deserialization()`` was called, so Python
    bytecode in it (a ``Lambda`` layer's function) is refused with a `ModelError`
    instead of run. Keras itself imports nothing but its own modules here.
    """
    import json

    try:
        raw = json.loads(config)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model.kwargs.config: not a Keras model's JSON ({exc})") from None
    if holds_bytecode(raw):
        raise ModelError(
            "model.kwargs.config: the stored Keras model holds Python bytecode (a Lambda "
            "layer's function); lca deserializes models in Keras safe mode and does not run "
            "it. If you trust this run, rebuild its model with a model.builder of your own"
        )
    try:
        with _safe_mode():
            model = keras.saving.deserialize_keras_object(raw, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/TypeError with multi-line messages
        first = " ".join(str(exc).split())[:240]
        raise ModelError(
            f"model.kwargs.config: the stored Keras model cannot be rebuilt in safe mode "
            f"({exc.__class__.__name__}: {first})"
        ) from None
    if not isinstance(model, keras.Model):
        raise ModelError(f"model.kwargs.config: holds a {type(model).__name__}, not a model")
    return model


def _safe_mode():
    """Keras' safe-mode scope, which overrides a global ``enable_unsafe_deserialization``."""
    try:
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # a Keras without it: deserialize_keras_object(safe_mode=True) alone
        import contextlib

        return contextlib.nullcontext()
    return SafeModeScope(True)


def build_user_model(cfg: ModelConfig) -> keras.Model:
    """Call ``cfg.builder(**cfg.kwargs)`` and check it returned a built Keras model."""
    model = import_function(cfg.builder, "model.builder")(**cfg.kwargs)
    if not isinstance(model, keras.Model):
        raise ModelError(
            f"model.builder: {cfg.builder} returned {type(model).__name__}, not a keras.Model"
        )
    if not model.built or not model.trainable_variables:
        raise ModelError(
            f"model.builder: {cfg.builder} returned a model without built weights; give it a "
            "keras.Input (or call model.build(input_shape)) before returning it"
        )
    return model


# --- building blocks -----------------------------------------------------------------------


def _conv(filters: int, size: int, name: str, *, strides: int = 1, activation: str | None = None):
    """A 'same' convolution with bias; a fresh initializer each so layers draw different weights."""
    return keras.layers.Conv2D(
        filters,
        size,
        strides=strides,
        padding="same",
        activation=activation,
        use_bias=True,
        kernel_initializer=keras.initializers.HeNormal(),
        bias_initializer="zeros",
        name=name,
    )


def _dense(units: int, name: str, *, activation: str | None = None):
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=keras.initializers.HeNormal(),
        bias_initializer="zeros",
        name=name,
    )


def _dropout(x, rate: float, name: str, evaluation: bool):
    """Dropout only while training.

    The layer is constructed in both modes because constructing it draws a seed from the
    global RNG; skipping it would shift every later layer's initial weights, and then the
    same seed would not give the same θ₀ in training and evaluation models.
    """
    layer = keras.layers.Dropout(rate, name=name)
    return x if evaluation else layer(x)


def _conv_bn_relu(x, filters: int, size: int, name: str, *, strides: int = 1, relu: bool = True):
    """conv -> BN -> ReLU; the BN is named after its conv so the layout groups them."""
    x = _conv(filters, size, name, strides=strides)(x)
    x = keras.layers.BatchNormalization(name=name + BN_SUFFIX)(x)
    if relu:
        x = keras.layers.ReLU(name=name + "_relu")(x)
    return x


# --- architectures -------------------------------------------------------------------------


def _fc(cfg: ModelConfig, inputs, num_classes: int, evaluation: bool):
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(cfg.hidden_units, start=1):
        x = _dense(units, f"dense_{i}", activation="relu")(x)
    return _dense(num_classes, f"dense_{len(cfg.hidden_units) + 1}")(x)


def _lenet(cfg: ModelConfig, inputs, num_classes: int, evaluation: bool):
    if len(cfg.conv_filters) != 2:
        raise ValueError(f"lenet needs 2 conv_filters, got {cfg.conv_filters}")
    x = _conv(cfg.conv_filters[0], 5, "conv_1", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool_1")(x)
    x = _conv(cfg.conv_filters[1], 5, "conv_2", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_2")(x)
    x = _dropout(x, 0.25, "dropout_1", evaluation)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _dense(cfg.dense_units, "dense_1", activation="relu")(x)
    x = _dropout(x, 0.5, "dropout_2", evaluation)
    return _dense(num_classes, "dense_2")(x)


def _allcnn(cfg: ModelConfig, inputs, num_classes: int, evaluation: bool):
    widths = cfg.widths or [96, 192]
    if len(widths) != 2:
        raise ValueError(f"allcnn needs 2 widths, got {widths}")
    a, b = widths
    x = _conv_bn_relu(inputs, a, 3, "conv_1")
    x = _conv_bn_relu(x, a, 3, "conv_2")
    x = _conv(a, 3, "conv_3", strides=2, activation="relu")(x)
    x = _dropout(x, 0.5, "dropout_1", evaluation)
    x = _conv_bn_relu(x, b, 3, "conv_4")
    x = _conv_bn_relu(x, b, 3, "conv_5")
    x = _conv(b, 3, "conv_6", strides=2, activation="relu")(x)
    x = _dropout(x, 0.5, "dropout_2", evaluation)
    x = _conv_bn_relu(x, b, 3, "conv_7")
    x = _conv_bn_relu(x, b, 1, "conv_8")
    x = _conv(num_classes, 1, "conv_9")(x)
    return keras.layers.GlobalAveragePooling2D(name="gap")(x)


def _resnet20(cfg: ModelConfig, inputs, num_classes: int, evaluation: bool):
    widths = cfg.widths or [16, 32, 64]
    if len(widths) != 3:
        raise ValueError(f"resnet20 needs 3 widths, got {widths}")
    x = _conv_bn_relu(inputs, widths[0], 3, "stem")
    channels = widths[0]
    for stage, width in enumerate(widths, start=1):
        for block in range(1, cfg.blocks_per_stage + 1):
            name = f"s{stage}b{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            y = _conv_bn_relu(x, width, 3, f"{name}_conv1", strides=strides)
            y = _conv_bn_relu(y, width, 3, f"{name}_conv2", relu=False)
            if width != channels or strides != 1:
                x = _conv(width, 1, f"{name}_shortcut", strides=strides)(x)
            x = keras.layers.Add(name=f"{name}_add")([x, y])
            x = keras.layers.ReLU(name=f"{name}_out")(x)
            channels = width
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return _dense(num_classes, "dense")(x)


class PositionEmbedding(keras.layers.Layer):
    """A learned vector per sequence position, added to the token embeddings."""

    def build(self, input_shape):
        length, width = int(input_shape[-2]), int(input_shape[-1])
        self.embeddings = self.add_weight(
            shape=(length, width),
            initializer=keras.initializers.RandomNormal(stddev=width**-0.5),
            name="embeddings",
        )

    def call(self, x):
        return x + self.embeddings


def _transformer(cfg: ModelConfig, inputs, num_classes: int, evaluation: bool):
    """A decoder-only transformer (as in Nanda et al. 2023) reading logits at the last token.

    Token + learned positional embeddings, ``num_layers`` blocks of causal multi-head
    attention (no biases, so every attention weight belongs to one head) and a ReLU MLP, both
    residual, pre-norm when ``layer_norm``; no dropout, so training and evaluation agree.
    Layer names ``<block>_mlp_in``/``_mlp_out`` put both MLP weights into one ``<block>_mlp``
    group whose units are the hidden neurons (see `lca.tensorflow.parameters.parameter_layout`).
    """
    vocab = cfg.vocab_size or num_classes + 1
    normal = keras.initializers.RandomNormal(stddev=cfg.d_model**-0.5)
    x = keras.layers.Embedding(vocab, cfg.d_model, embeddings_initializer=normal, name="embed")(
        inputs
    )
    x = PositionEmbedding(name="pos_embed")(x)
    for block in range(1, cfg.num_layers + 1):
        name = f"block{block}"
        y = keras.layers.LayerNormalization(name=f"{name}_ln1")(x) if cfg.layer_norm else x
        y = keras.layers.MultiHeadAttention(
            cfg.num_heads,
            cfg.d_model // cfg.num_heads,
            use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(stddev=cfg.d_model**-0.5),
            name=f"{name}_attn",
        )(y, y, use_causal_mask=True)
        x = keras.layers.Add(name=f"{name}_attn_add")([x, y])
        y = keras.layers.LayerNormalization(name=f"{name}_ln2")(x) if cfg.layer_norm else x
        y = _dense(cfg.d_mlp, f"{name}_mlp_in", activation="relu")(y)
        y = _dense(cfg.d_model, f"{name}_mlp_out")(y)
        x = keras.layers.Add(name=f"{name}_mlp_add")([x, y])
    if cfg.layer_norm:
        x = keras.layers.LayerNormalization(name="ln_final")(x)
    last = x[:, -1, :]  # the answer is read where the "=" token sits
    return _dense(num_classes, "unembed")(last)


_ARCHITECTURES = {
    "fc": _fc,
    "lenet": _lenet,
    "allcnn": _allcnn,
    "resnet20": _resnet20,
    "transformer": _transformer,
}


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    evaluation: bool = False,
) -> keras.Model:
    """Build ``cfg.name`` with He-normal weights and zero biases, outputting logits.

    Seed with ``keras.utils.set_random_seed`` first: the same seed gives bitwise the same
    weights, in both the training and the evaluation (dropout-free) variant. With
    ``cfg.builder`` the user's function builds the model (``evaluation`` does not apply).
    """
    if cfg.builder is not None:
        return build_user_model(cfg)
    try:
        body = _ARCHITECTURES[cfg.name]
    except KeyError:
        known = ", ".join(_ARCHITECTURES)
        raise ValueError(f"unknown model {cfg.name!r} (known: {known})") from None
    dtype = "int32" if cfg.name == "transformer" else None  # token ids
    inputs = keras.Input(shape=tuple(input_shape), name="input", dtype=dtype)
    outputs = body(cfg, inputs, num_classes, evaluation)
    suffix = "_eval" if evaluation else ""
    return keras.Model(inputs, outputs, name=f"{cfg.name}{suffix}")
