"""User-side builders for tests/test_own_model.py: models and data ``lca`` does not know."""

import keras
import numpy as np
import tensorflow as tf


def blobs(n: int = 240, features: int = 6, classes: int = 3):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(classes, features))
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.normal(size=(n, features))).astype(np.float32)
    return (x[:200], y[:200]), (x[200:], y[200:])


def blobs_dataset(shuffle: bool = False):
    (x, y), (xv, yv) = blobs()
    train = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        train = train.shuffle(200, reshuffle_each_iteration=True)
    return train.batch(64), tf.data.Dataset.from_tensor_slices((xv, yv)).batch(64)


def batch_norm_net(features: int = 6, classes: int = 3) -> keras.Model:
    inputs = keras.Input((features,))
    x = keras.layers.Dense(8, name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x))


class AlwaysNoise(keras.layers.Layer):
    """Adds noise whatever the mode (a custom layer that ignores ``training``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, x):
        return x + keras.random.normal(keras.ops.shape(x), stddev=0.5, seed=self.seed)


def noisy_net(features: int = 6, classes: int = 3) -> keras.Model:
    """Noise on even at evaluation: the loss is not a function of θ."""
    inputs = keras.Input((features,))
    x = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    x = AlwaysNoise(name="noise")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x))


class Counter(keras.layers.Layer):
    """Passes its input through, counting training calls in a non-trainable weight."""

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x, training=None):
        if training:
            self.count.assign_add(1.0)
        return x


def counting_net(features: int = 6, classes: int = 3) -> keras.Model:
    inputs = keras.Input((features,))
    x = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    x = Counter(name="counter")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x))


def token_mlp(p: int = 7, width: int = 16) -> keras.Model:
    """A small model of the modular data's tokens ``a b =``: embeddings, one hidden layer."""
    inputs = keras.Input((3,), dtype="int32")
    x = keras.layers.Embedding(p + 1, 8, name="embed")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(width, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(p, name="logits")(x))
