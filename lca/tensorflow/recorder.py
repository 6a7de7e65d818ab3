"""Record an ordinary ``model.fit`` as an LCA run: ``lca.keras.TrajectoryRecorder``.

    model.fit(x, y, epochs=2, callbacks=[TrajectoryRecorder("runs/mine",
              model_fn="my_model:build", data_fn="my_model:load_data")])
    model.fit(x, y, epochs=2, callbacks=[TrajectoryRecorder("runs/mine",
              train_data=(x, y), validation_data=(x_val, y_val))])   # no module at all

After every optimizer step the callback copies θ (the model's trainable variables, in
``model.trainable_variables`` order) into ``RUN/trajectory.zarr`` through the same buffered,
asynchronous writer ``lca train`` uses, and it writes ``RUN/config.yaml`` naming the model
builder, the loss (taken from ``model.compile``) and the data builder, so that ``lca
allocate/verify-error/report RUN`` rebuild everything with no extra arguments.

The builders must rebuild *this* model and *this* data: the callback checks at the start of
training that ``model_fn`` gives the same trainable shapes and ``data_fn`` loads, and at the
end that no non-trainable weight other than batch-norm moving statistics changed.

What can and cannot be resumed. ``lca train`` continues a killed run bitwise from its last
checkpoint because it owns the whole loop: the optimiser, the batch order, the random state.
A recorded ``model.fit`` cannot be continued by lca: fit owns its optimizer (slots, step
counter), its data pipeline (shuffling, augmentation, prefetching) and its random state,
none of which the recorder can save or restore, and LCA is only exact along the trajectory
one uninterrupted fit produces, so a stitched-together recording would be a different one
(Keras' own ``BackupAndRestore`` restarts from an epoch boundary with fresh data iterators:
not the same path either). After a crash, the rows recorded so far stay readable
(``steps_recorded``), but ``lca allocate`` refuses an incomplete trajectory, and recording
into the same directory again is a one-line error. What to do: rerun the whole fit with
``overwrite=True`` (``keras.utils.set_random_seed`` first, to get the same run); or, for a
long training that must survive interruptions, describe it as an ``lca train`` config
(``model.builder``/``data.builder`` accept your own functions), which resumes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..config import (
    AllocateConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainingConfig,
    config_from_dict,
)
from ..config.user_code import KERAS_CONFIG_BUILDER
from ..data import RUN_ARRAYS
from ..storage import (
    CONFIG_FILE,
    TrajectoryWriter,
    location,
    prepare_run_dir,
    refuse_existing_recording,
    write_fixed_weights,
)
from ..storage.trajectory import shorten_recording, stored_steps

__all__ = ["TrajectoryRecorder", "compiled_loss"]

_HEADER = (
    "# Written by lca.keras.TrajectoryRecorder: model.fit trained this run; `training` records\n"
    "# its number of optimizer steps and is otherwise informational.\n"
)


def compiled_loss(model: keras.Model) -> tuple[str, bool]:
    """``(model.loss name, from_logits)`` from a compiled model's loss, or a clear error."""
    loss = getattr(model, "loss", None)
    if loss is None:
        raise ConfigError("model: compile the model (model.compile(loss=...)) before fit")
    if isinstance(loss, str):
        name = keras.losses.get(loss).__name__
        from_logits = False
    else:
        config = loss.get_config() if hasattr(loss, "get_config") else {}
        fn = getattr(loss, "fn", loss)
        name = getattr(fn, "__name__", type(loss).__name__)
        from_logits = bool(config.get("from_logits", False))
    aliases = {
        "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
        "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
        "mean_squared_error": "mean_squared_error",
        "MeanSquaredError": "mean_squared_error",
    }
    if name not in aliases:
        raise ConfigError(
            f"model.loss: {name} is not supported; use sparse_categorical_crossentropy or "
            "mean_squared_error (or pass loss= to the recorder)"
        )
    return aliases[name], from_logits


def _theta_reader(variables: list) -> Callable[[], list[np.ndarray]]:
    """A function returning the variables' values as numpy arrays, as cheaply as possible.

    ``KerasVariable.numpy()`` costs ~30 µs a variable in Python-side dispatch; reading the
    TensorFlow resource directly costs ~8 µs, which matters when it is paid at every step.
    Variables without a TensorFlow resource handle (another Keras backend) are read the
    ordinary way.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            handles = [(v.value.handle, v.value.dtype) for v in variables]
            read = tf.raw_ops.ReadVariableOp
            for (handle, dtype), v in zip(handles, variables, strict=True):
                if not np.array_equal(np.asarray(read(resource=handle, dtype=dtype)), v.numpy()):
                    raise ValueError("the resource holds another value")
        except (AttributeError, ValueError, TypeError, tf.errors.OpError):
            pass
        else:
            return lambda: [np.asarray(read(resource=h, dtype=d)) for h, d in handles]
    return lambda: [v.numpy() for v in variables]


class TrajectoryRecorder(keras.callbacks.Callback):
    """Record θ after every optimizer step of ``model.fit`` into an LCA run directory.

    ``model_fn`` and ``data_fn`` are ``"module:function"`` import paths (as in the config's
    ``model.builder`` and ``data.builder``), called with ``model_kwargs`` / ``data_kwargs``.
    Without ``model_fn`` the model's own Keras config (``model.to_json()``) goes into the run's
    config as the kwargs of the builder ``lca.tensorflow.models:from_keras_config``;
    ``data_fn`` returns ``(train, val)`` as `lca.data.load_builder_dataset` describes,
    and its train split must be the data the loss is allocated on (usually the one fitted).
    Instead of ``data_fn``, ``train_data=(x, y)`` (and ``validation_data``) are stored in the
    run (``RUN/data.zarr``), which then needs no module of yours to be allocated.
    ``loss``/``from_logits`` override the compiled model's loss; ``allocate`` holds settings
    of the config's ``allocate`` section (e.g. ``{"eval_batch_size": 1000}``).
    ``overwrite=True`` replaces an existing run directory; an interrupted recording cannot be
    continued (see the module docstring), so recording into it again is a one-line error.
    ``record_every=k`` stores θ every k optimizer steps and after the last one (each
    iteration of the allocation is then a segment of k steps: docs/checkpoints.md).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        data_fn: str | None = None,
        train_data: tuple[Any, Any] | None = None,
        validation_data: tuple[Any, Any] | None = None,
        model_fn: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        data_kwargs: dict[str, Any] | None = None,
        loss: str | None = None,
        from_logits: bool | None = None,
        allocate: dict[str, Any] | None = None,
        seed: int = 0,
        overwrite: bool = False,
        record_every: int = 1,
    ) -> None:
        super().__init__()
        self.run_dir = location(run_dir)
        if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
            raise ConfigError(
                f"TrajectoryRecorder: record_every must be a whole number >= 1, got {record_every}"
            )
        self.record_every = record_every
        if (data_fn is None) == (train_data is None):
            raise ConfigError(
                "TrajectoryRecorder: give either data_fn ('module:function') or train_data=(x, y)"
            )
        if validation_data is not None and train_data is None:
            raise ConfigError("TrajectoryRecorder: validation_data goes with train_data")
        self.model_fn, self.data_fn = model_fn, data_fn
        self.train_data, self.validation_data = train_data, validation_data
        self.model_kwargs, self.data_kwargs = dict(model_kwargs or {}), dict(data_kwargs or {})
        self.loss, self.from_logits = loss, from_logits
        self.allocate = dict(allocate or {})
        self.seed = seed
        self.overwrite = overwrite
        self.writer: TrajectoryWriter | None = None
        self.steps = 0

    # --- start -------------------------------------------------------------------------

    def _config(self, iterations: int) -> Config:
        if self.model_fn is None:  # the model's own architecture, kept in the config
            self.model_fn = KERAS_CONFIG_BUILDER
            self.model_kwargs = {"config": self.model.to_json()}
        loss, from_logits = (self.loss, self.from_logits) if self.loss else (None, None)
        if loss is None:
            loss, from_logits = compiled_loss(self.model)
        raw = Config(
            name=self.run_dir.name,
            model=ModelConfig(
                builder=self.model_fn,
                kwargs=self.model_kwargs,
                loss=loss,
                from_logits=True if from_logits is None else from_logits,
            ),
            data=DataConfig(builder=self.data_fn or RUN_ARRAYS, kwargs=self.data_kwargs),
            training=TrainingConfig(
                iterations=iterations, seed=self.seed, log_every=0, record_every=self.record_every
            ),
            allocate=AllocateConfig(),
        ).to_dict()
        raw["allocate"].update(self.allocate)
        return config_from_dict(raw, source="TrajectoryRecorder")  # validated like a file

    def on_train_begin(self, logs=None) -> None:
        from ..data import dataset_from_parts, load_dataset, write_run_arrays
        from .models import build_model
        from .parameters import fixed_weights, parameter_layout, same_structure
        from .training import trajectory_attrs

        model = self.model
        if not model.trainable_variables:
            raise ConfigError(
                "model: build the model before fit (give it a keras.Input or call model.build)"
            )
        if int(getattr(model, "steps_per_execution", 1) or 1) != 1:
            raise ConfigError(
                "model: compile with steps_per_execution=1; the recorder needs θ after every step"
            )
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if not steps:
            raise ConfigError(
                "model.fit: the number of steps per epoch is unknown; pass steps_per_epoch"
            )
        iterations = int(epochs) * int(steps)
        config = self._config(iterations)
        if self.train_data is not None:  # stored in the run below, read back by run_arrays
            dataset = dataset_from_parts((self.train_data, self.validation_data), "model.fit data")
        else:
            dataset = load_dataset(config.data)
        layout = parameter_layout(model)
        rebuilt = build_model(config.model, dataset.input_shape, dataset.num_classes)
        if not same_structure(parameter_layout(rebuilt).to_json(), layout.to_json()):
            raise ConfigError(
                f"model.builder: {self.model_fn} builds a model whose trainable weights differ "
                "in number or shape from the model being fitted"
            )
        del rebuilt
        if not self.overwrite:
            refuse_existing_recording(self.run_dir, "model.fit recording", "fit", "the whole fit")
        run_dir = prepare_run_dir(self.run_dir, self.overwrite)
        (run_dir / CONFIG_FILE).write_text(_HEADER + config.to_yaml())
        if self.train_data is not None:
            write_run_arrays(run_dir, dataset)
        self._written = config
        # θ every k steps: the steps whose θ is stored, and those of the rows written so far
        stored = stored_steps(iterations, self.record_every) if self.record_every > 1 else None
        self._stored = None if stored is None else {int(s) for s in stored}
        self._row_steps = [0]
        self.writer = TrajectoryWriter(
            run_dir,
            num_iterations=iterations if stored is None else len(stored) - 1,
            num_params=layout.total,
            batch_size=1,
            train_indices=dataset.train_indices,
            val_indices=dataset.val_indices,
            attrs={
                **trajectory_attrs(
                    config.name,
                    layout,
                    self.seed,
                    dataset,
                    recorded_by="lca.keras.TrajectoryRecorder",
                ),
                "metrics": "loss, accuracy and batch_indices are not recorded by model.fit",
            },
            steps=stored,
        )
        self._fixed = fixed_weights(model)
        write_fixed_weights(self.writer.group, [(n, a) for n, a, _ in self._fixed])
        self._read_theta = _theta_reader(model.trainable_variables)
        self._no_metrics = {"batch_indices": np.full(1, -1, np.int64)}  # the rest NaN
        self.writer.append(self._read_theta(), None)
        self.steps = 0

    # --- every step ----------------------------------------------------------------------

    def on_train_batch_end(self, batch, logs=None) -> None:
        if self.writer is None:
            return
        if self._stored is not None:  # θ every k steps: a row where a segment ends
            if self.steps >= self._written.training.iterations:
                raise ConfigError("model.fit ran more steps than it announced; cannot record them")
            self.steps += 1
            if self.steps in self._stored:
                self.writer.append(self._read_theta(), self._no_metrics)
                self._row_steps.append(self.steps)
            return
        if self.steps >= self.writer.num_steps - 1:
            raise ConfigError("model.fit ran more steps than it announced; cannot record them")
        self.writer.append(self._read_theta(), self._no_metrics)
        self.steps += 1

    # --- end -------------------------------------------------------------------------------

    def on_train_end(self, logs=None) -> None:
        from .parameters import changed_fixed_weights

        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        segmented = self._stored is not None
        if segmented and self._row_steps[-1] < self.steps:  # stopped inside a segment
            writer.append(self._read_theta(), self._no_metrics)
            self._row_steps.append(self.steps)
        recorded = writer.close("complete")
        group = writer.group
        stopped = recorded < writer.num_steps or self.steps < self._written.training.iterations
        if stopped:  # stopped early (EarlyStopping, initial_epoch)
            shorten_recording(group, recorded, self._row_steps if segmented else None)
            self._written.training.iterations = self.steps if segmented else recorded - 1
            (self.run_dir / CONFIG_FILE).write_text(_HEADER + self._written.to_yaml())
        changed = changed_fixed_weights(self.model, self._fixed)
        if changed:
            group.attrs["non_trainable_changed"] = changed
            warnings.warn(
                f"non-trainable weight {changed[0]} changed during training: the loss is not "
                "a function of θ alone, and `lca allocate` will refuse this run",
                stacklevel=2,
            )
