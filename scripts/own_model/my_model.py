"""A user's own Keras models and data, in their own module: nothing here is part of ``lca``.

``lca`` rebuilds them from the import paths ``my_model:build`` / ``my_model:load_data`` (and
the regression pair) that the run's config.yaml names, so keep them deterministic: the same
call returns the same architecture and the same examples in the same order.
"""

import keras
import numpy as np


def build(features: int = 16, hidden: int = 32, classes: int = 4) -> keras.Model:
    """A small classifier with dropout; it outputs logits."""
    inputs = keras.Input((features,))
    x = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    x = keras.layers.Dropout(0.2, name="dropout")(x)  # off when LCA evaluates the loss
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="my_classifier")


def load_data(n: int = 600, features: int = 16, classes: int = 4, seed: int = 0):
    """Gaussian blobs: ((x_train, y_train), (x_val, y_val)); the last sixth is validation."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, features))
    y = rng.integers(0, classes, n)
    x = (centres[y] + 1.5 * rng.normal(size=(n, features))).astype(np.float32)
    cut = n - n // 6
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def build_regressor(features: int = 8, hidden: int = 16) -> keras.Model:
    """A small regressor trained with mean squared error."""
    inputs = keras.Input((features,))
    x = keras.layers.Dense(hidden, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="out")(x)
    return keras.Model(inputs, outputs, name="my_regressor")


def load_regression(n: int = 600, features: int = 8, seed: int = 0):
    """y = sin(x · w) + noise, float targets: ((x_train, y_train), (x_val, y_val))."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features) / np.sqrt(features)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (np.sin(2 * x @ w) + 0.1 * rng.normal(size=n)).astype(np.float32)
    cut = n - n // 6
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])
