"""Record any torch training loop as an LCA run: ``lca.torch.TrajectoryRecorder``.

    recorder = TrajectoryRecorder(model, optimizer, "runs/mine", iterations=1000,
                                  train_data=(x, y), model_fn="my_model:build")
    with recorder:
        for step, (idx, x_batch, y_batch) in enumerate(loader):
            loss_fn(model(x_batch), y_batch).backward()
            optimizer.step()          # θ is recorded after every step
            optimizer.zero_grad()

The recorder registers itself as a step pre-hook and post-hook of the optimizer, so it
records the same way in a plain loop, under Lightning (create it in a callback's
``on_train_start`` from ``trainer.optimizers[0]``) or under another trainer that calls
``optimizer.step()``: one θ row per optimizer step, whatever the number of forward and
backward passes before it (gradient accumulation), and none for a step that a
``torch.amp.GradScaler`` skips.

θ is the parameters the optimizer updates, in ``model.named_parameters()`` order. Every
other parameter (frozen ones) and every buffer is fixed state, stored once beside θ; the
allocation rebuilds the model from ``RUN/config.yaml`` (``model_fn``, or lca's built-in
twin the model is), puts θ and the fixed state back, and evaluates the loss with
``torch.func``. Nothing of the model is pickled.

What the recorder refuses, each with one line: θ that changes outside ``optimizer.step``
(weight clipping, a manual edit: LCA would miss that change; the rows recorded so far are
kept), more steps than ``iterations``, a ``model_fn`` that builds another model, a sharded
(FSDP) model, and a run directory that already holds a recording. A
``DistributedDataParallel`` model is recorded on rank 0 (its ``.module``); on the other ranks
the recorder does nothing. Like the Keras recorder, a recording that stopped cannot be
continued: run the training again with ``overwrite=True``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import (
    AllocateConfig,
    Config,
    ConfigError,
    DataConfig,
    TrainingConfig,
    config_from_dict,
)
from ..data import RUN_ARRAYS, write_run_arrays
from ..storage import (
    CONFIG_FILE,
    RunError,
    TrajectoryWriter,
    location,
    prepare_run_dir,
    refuse_existing_recording,
    trajectory_attrs,
    write_fixed_weights,
)
from ..storage.trajectory import shorten_recording, stored_steps
from .models import torch_layout
from .recorder_setup import (
    check_arguments,
    check_rebuilt,
    check_record_every,
    hyperparameters,
    is_recording_rank,
    model_config,
    optimized_parameters,
    optimizer_description,
    recorded_dataset,
    same_values,
    unwrapped,
)
from .runtime import versions
from .state import changed_state, fixed_state

__all__ = ["TrajectoryRecorder"]

_HEADER = (
    "# Written by lca.torch.TrajectoryRecorder: a torch training loop trained this run;\n"
    "# `training` records its number of optimizer steps, and `optimizer` is not the one used\n"
    "# (trajectory.zarr's torch_optimizer attribute names it).\n"
)


class TrajectoryRecorder:
    """Record θ after every ``optimizer.step()`` of ``model`` into an LCA run directory.

    ``iterations``: the number of optimizer steps the training will take (the store is made
    for them; a training that stops earlier is recorded as the shorter run at `close`,
    one more step is a one-line ConfigError). The data the loss is allocated on are either
    ``train_data=(x, y)`` (numpy arrays or tensors; with ``validation_data``), stored in the
    run (``RUN/data.zarr``), or ``data_fn``, a ``"module:function"`` as the config's
    ``data.builder`` (called with ``data_kwargs``). ``model_fn`` (``"module:function"``,
    called with ``model_kwargs``) builds the model again for the allocation; it may be left
    out for lca's built-in networks (`lca.torch.models.FC`, ``LeNet``). The model's
    outputs and the labels give the loss ``loss`` (``sparse_categorical_crossentropy`` on
    logits, or on probabilities with ``from_logits=False``; or ``mean_squared_error``);
    ``allocate`` holds settings of the config's ``allocate`` section.

    ``batch_size``: the most example indices one step records with `batch` (the
    batch size times the steps of gradient accumulation); without it no indices are
    recorded (-1). ``seed`` is written to the config; ``overwrite=True`` replaces an
    existing run directory. ``record_every=k`` stores θ every k optimizer steps and after
    the last one (each iteration of the allocation is then a segment of k steps, with the
    examples of all its steps: docs/checkpoints.md).

    Use it as a context manager, or call `close` after the last step: either removes
    the hooks and finishes the store; an exception inside the ``with`` block keeps the rows
    recorded so far, marked incomplete.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        run_dir: str | Path,
        *,
        iterations: int,
        train_data: tuple[Any, Any] | None = None,
        data_fn: str | None = None,
        validation_data: tuple[Any, Any] | None = None,
        model_fn: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        data_kwargs: dict[str, Any] | None = None,
        loss: str = "sparse_categorical_crossentropy",
        from_logits: bool = True,
        allocate: dict[str, Any] | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        overwrite: bool = False,
        record_every: int = 1,
    ) -> None:
        self.run_dir = location(run_dir)
        self.writer: TrajectoryWriter | None = None
        self.steps = 0
        self._handles: list = []
        check_arguments(iterations, train_data, data_fn, validation_data, batch_size)
        check_record_every(record_every)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"TrajectoryRecorder: optimizer is a {type(optimizer).__name__}, not a "
                "torch.optim.Optimizer"
            )
        model = unwrapped(model)
        self.model, self.optimizer = model, optimizer
        self.iterations = int(iterations)
        self.batch_size = batch_size
        self.active = is_recording_rank()
        if not self.active:  # another rank of a distributed training: rank 0 records
            return

        self.names, self._params = optimized_parameters(model, optimizer)
        layout = torch_layout(model, self.names)
        dataset = recorded_dataset(train_data, validation_data, data_fn, data_kwargs)
        model_cfg, what = model_config(model, model_fn, model_kwargs, loss, from_logits, dataset)
        raw = Config(
            name=self.run_dir.name,
            framework="torch",
            model=model_cfg,
            data=DataConfig(builder=data_fn or RUN_ARRAYS, kwargs=dict(data_kwargs or {})),
            training=TrainingConfig(
                iterations=self.iterations, seed=seed, log_every=0, record_every=record_every
            ),
            allocate=AllocateConfig(),
        ).to_dict()
        raw["allocate"].update(allocate or {})
        config = config_from_dict(raw, source="TrajectoryRecorder")  # validated like a file
        check_rebuilt(model, config, dataset, seed, what)
        self._warn_precision()

        if not overwrite:
            refuse_existing_recording(
                self.run_dir, "recording", "the training loop", "the training"
            )
        run_dir = prepare_run_dir(self.run_dir, overwrite)
        (run_dir / CONFIG_FILE).write_text(_HEADER + config.to_yaml())
        if train_data is not None:
            write_run_arrays(run_dir, dataset)
        self._config = config
        self._num_train = len(dataset.y_train)
        # θ every k steps: the steps whose θ is stored, those of the rows written so far, and
        # the examples of the steps of the segment being trained
        stored = stored_steps(self.iterations, record_every) if record_every > 1 else None
        self._stored = None if stored is None else {int(s) for s in stored}
        self._row_steps = [0]
        self._segment: list[np.ndarray] = []
        self.writer = TrajectoryWriter(
            run_dir,
            num_iterations=self.iterations if stored is None else len(stored) - 1,
            num_params=layout.total,
            batch_size=(batch_size or 1) * record_every,
            train_indices=dataset.train_indices,
            val_indices=dataset.val_indices,
            attrs={
                **trajectory_attrs(
                    config.name,
                    layout,
                    seed,
                    dataset,
                    recorded_by="lca.torch.TrajectoryRecorder",
                    versions=versions(),
                ),
                "torch_optimizer": optimizer_description(optimizer, model, self.names),
                "metrics": (
                    "loss and accuracy are not recorded; batch_indices where "
                    "TrajectoryRecorder.batch gave them (-1 elsewhere)"
                ),
            },
            steps=stored,
        )
        self._fixed = fixed_state(model, self.names)
        with self.writer.writing():
            write_fixed_weights(self.writer.group, self._fixed)
        self._pending: list[np.ndarray] = []
        self._hyperparameters = hyperparameters(optimizer)
        self._changed_at: int | None = None  # the first step taken with other hyperparameters
        self._last = self._snapshot()
        self.writer.append(self._arrays(self._last), None)
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    # --- the user's side ----------------------------------------------------------------

    def batch(self, indices) -> None:
        """Record the training examples (positions in ``train_data`` or ``data_fn``'s train
        split) of the next optimizer step; call it once per micro-batch with gradient
        accumulation (the indices add up until the step)."""
        if not self.active or self.writer is None:
            return
        if self.batch_size is None:
            raise ConfigError(
                "TrajectoryRecorder.batch: pass batch_size= (the most examples one step "
                "uses) to the recorder to record batches"
            )
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        values = np.asarray(indices).reshape(-1)
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise ConfigError(
                f"TrajectoryRecorder.batch: indices must be integers, not {values.dtype}"
            )
        values = values.astype(np.int64)
        outside = values[(values < 0) | (values >= self._num_train)]
        if outside.size:
            raise ConfigError(
                f"TrajectoryRecorder.batch: index {int(outside[0])} is outside the "
                f"{self._num_train} training examples"
            )
        total = sum(len(v) for v in self._pending) + len(values)
        if total > self.batch_size:
            raise ConfigError(
                f"TrajectoryRecorder.batch: optimizer step {self.steps + 1} has {total} "
                f"examples, more than batch_size={self.batch_size}"
            )
        self._pending.append(values)

    def close(self) -> int:
        """Remove the hooks and finish the store; returns the number of steps recorded.

        A training that took fewer steps than ``iterations`` is recorded as that shorter
        run. Fixed state (a frozen parameter, a buffer other than batch-norm statistics)
        that changed during training is named in the store, and ``lca allocate`` refuses it.
        """
        self._remove_hooks()
        if self.writer is None:
            return self.steps
        writer, self.writer = self.writer, None
        if self.steps == 0:
            writer.close("stopped: no optimizer step was taken")
            warnings.warn(
                f"{self.run_dir}: no optimizer step was recorded; nothing to allocate",
                stacklevel=2,
            )
            return 0
        segmented = self._stored is not None
        if segmented and self._row_steps[-1] < self.steps:  # stopped inside a segment
            self._append_segment(writer)
        recorded = writer.close("complete")
        group = writer.group
        stopped = recorded < writer.num_steps or self.steps < self.iterations
        if stopped:  # the training stopped early
            shorten_recording(group, recorded, self._row_steps if segmented else None)
            self._config.training.iterations = self.steps if segmented else recorded - 1
            (self.run_dir / CONFIG_FILE).write_text(_HEADER + self._config.to_yaml())
        if self._changed_at is not None:
            group.attrs["torch_optimizer_changed_at"] = self._changed_at
        changed = changed_state(self.model, self.names, self._fixed)
        if changed:
            group.attrs["non_trainable_changed"] = changed
            warnings.warn(
                f"{changed[0]} (a buffer or a parameter outside the optimizer) changed during "
                "training: the loss is not a function of θ alone, and `lca allocate` will "
                "refuse this run",
                stacklevel=2,
            )
        return self.steps if segmented else recorded - 1

    def abort(self, status: str = "failed") -> int:
        """Remove the hooks and keep the rows recorded so far, marked incomplete."""
        self._remove_hooks()
        if self.writer is None:
            return self.steps
        writer, self.writer = self.writer, None
        writer.abort(status)
        return self.steps

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(f"failed: {exc_type.__name__}")

    # --- the optimizer's hooks ----------------------------------------------------------

    def _before_step(self, optimizer, args, kwargs) -> None:
        if self.writer is None:
            return
        if self.steps >= self.iterations:
            self.close()
            raise ConfigError(
                f"optimizer.step: step {self.steps + 1} is more than iterations="
                f"{self.iterations} given to TrajectoryRecorder; the {self.iterations} steps "
                f"are recorded in {self.run_dir}: pass the number of optimizer steps as "
                "iterations"
            )
        for name, p, last in zip(self.names, self._params, self._last):
            if not same_values(p.detach(), last):
                t = self.steps
                self.abort(f"failed: parameters changed outside optimizer.step after step {t}")
                where = f"optimizer steps {t} and {t + 1}" if t else "the start and step 1"
                raise RunError(
                    f"parameters changed between {where} (outside optimizer.step: weight "
                    f"clipping or a manual edit?): {name} is not the recorded θ_{t}; LCA "
                    f"needs every change of θ to be an optimizer step; θ_0..θ_{t} are kept "
                    f"in {self.run_dir}, incomplete"
                )

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self.writer is None:
            return
        if self._changed_at is None and hyperparameters(optimizer) != self._hyperparameters:
            self._changed_at = self.steps  # a schedule: --causes replays fixed settings only
        self._last = self._snapshot()
        row = np.full(self.batch_size or 1, -1, np.int64)
        if self._pending:
            indices = np.concatenate(self._pending)
            row[: len(indices)] = indices
            self._pending = []
        if self._stored is not None:  # θ every k steps: a row where a segment ends
            self._segment.append(row[row >= 0])
            self.steps += 1
            if self.steps in self._stored:
                self._append_segment(self.writer)
            return
        self.writer.append(self._arrays(self._last), {"batch_indices": row})
        self.steps += 1

    def _append_segment(self, writer: TrajectoryWriter) -> None:
        """θ after the segment's last step, with the examples of all its steps (-1 after)."""
        width = writer.group["batch_indices"].shape[1]
        row = np.full(width, -1, np.int64)
        indices = np.concatenate(self._segment) if self._segment else row[:0]
        row[: len(indices)] = indices
        self._segment = []
        writer.append(self._arrays(self._last), {"batch_indices": row})
        self._row_steps.append(self.steps)

    # --- helpers ------------------------------------------------------------------------

    def _snapshot(self) -> list[torch.Tensor]:
        """θ as it is now: a copy on the parameters' device (compared before the next step)."""
        with torch.no_grad():
            return [p.detach().clone() for p in self._params]

    @staticmethod
    def _arrays(snapshot: list[torch.Tensor]) -> list[np.ndarray]:
        return [s.to("cpu", torch.float32).numpy() for s in snapshot]

    def _warn_precision(self) -> None:
        low = [(n, p.dtype) for n, p in zip(self.names, self._params) if p.dtype != torch.float32]
        if low:
            name, dtype = low[0]
            warnings.warn(
                f"parameter {name} is {dtype}: θ is recorded cast to float32, and the rebuilt "
                "float32 model is allocated at those values",
                stacklevel=3,
            )

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
