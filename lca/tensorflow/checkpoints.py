"""Keras weight files (``.weights.h5``) read as θ of a run's model, for ``lca import``.

The model is built from the config as ``lca train`` builds it; each file is checked
against it before anything is loaded (every variable present with the model's shape,
nothing else in the file), then loaded with the model's own ``load_weights``: an HDF5 file
of plain arrays, nothing unpickled. Where each variable sits in a file is learnt once, by
saving the model with a distinct value in each variable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..config import Config
from ..storage import RunError

#: the file names ``model.save_weights`` writes and ``load_weights`` reads
SUFFIX = ".weights.h5"


class KerasCheckpoints:
    """θ (and the weights outside it) of each Keras weight file, checked against the model."""

    framework = "tensorflow"

    def __init__(self, config: Config, dataset) -> None:
        import keras

        from .models import build_model
        from .parameters import parameter_layout
        from .training import tensorflow_versions

        keras.utils.set_random_seed(config.training.seed)
        self.model = build_model(config.model, dataset.input_shape, dataset.num_classes)
        self.layout = parameter_layout(self.model)
        self.versions = tensorflow_versions()
        self.where = self._locations()

    def _locations(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """``{dataset path in a weights file: (variable path, shape)}`` of this model."""
        import h5py

        variables = list(self.model.weights)
        before = [v.numpy() for v in variables]
        for i, v in enumerate(variables):
            v.assign(np.full(v.shape, i + 1, dtype=v.dtype))
        handle, name = tempfile.mkstemp(suffix=SUFFIX)
        os.close(handle)
        try:
            self.model.save_weights(name, overwrite=True)
            where = {}
            with h5py.File(name, "r") as file:

                def visit(path: str, node) -> None:
                    if isinstance(node, h5py.Dataset) and node.size:
                        v = variables[int(np.asarray(node).reshape(-1)[0]) - 1]
                        where[path] = (v.path, tuple(v.shape))

                file.visititems(visit)
        finally:
            os.unlink(name)
            for v, value in zip(variables, before, strict=True):
                v.assign(value)
        return where

    def check(self, path: Path) -> None:
        """One line naming what of ``path`` does not fit the model (shapes only are read)."""
        import h5py

        if not path.name.endswith(SUFFIX):
            raise RunError(f"{path}: not a Keras weights file (its name must end in {SUFFIX})")
        try:
            with h5py.File(path, "r") as file:
                found: dict[str, tuple[int, ...]] = {}
                file.visititems(
                    lambda name, node: (
                        found.__setitem__(name, tuple(node.shape))
                        if isinstance(node, h5py.Dataset) and node.size
                        else None
                    )
                )
        except OSError as exc:
            cause = str(exc).split("(")[-1].rstrip(")") if "(" in str(exc) else str(exc)
            raise RunError(
                f"{path}: not a checkpoint (not an HDF5 weights file: {cause})"
            ) from None
        for location, (variable, shape) in self.where.items():
            if location not in found:
                raise RunError(f"{path}: has no {variable} (shape {shape}); another model?")
            if found[location] != shape:
                raise RunError(
                    f"{path}: {variable} has shape {found[location]}, the model's is {shape}"
                )
        extra = sorted(set(found) - set(self.where))
        if extra:
            raise RunError(
                f"{path}: holds {extra[0]} (shape {found[extra[0]]}), which the model does not have"
            )

    def read(self, path: Path) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        """θ of the file (flat float32, layout order) and the weights outside θ."""
        from .parameters import fixed_weights

        self.check(path)
        try:
            self.model.load_weights(str(path))
        except Exception as exc:  # checked above; anything else is the file's own damage
            raise RunError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
        theta = np.concatenate(
            [np.asarray(v.numpy(), np.float32).reshape(-1) for v in self.model.trainable_variables]
        )
        return theta, [(name, value) for name, value, _ in fixed_weights(self.model)]

    def changed(self, before: list, now: list) -> list[str]:
        """Weights outside θ, moving statistics aside, that differ between two files'
        `read` (the loss would not be a function of θ alone)."""
        from .parameters import fixed_weights

        moving = [flag for _, _, flag in fixed_weights(self.model)]
        return [
            name
            for (name, old), (_, new), flag in zip(before, now, moving, strict=True)
            if not flag and not np.array_equal(old, new)
        ]
