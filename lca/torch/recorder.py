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

import contextlib
import warnings
from collections.abc import Sequence
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
    ModelConfig,
    TrainingConfig,
    config_from_dict,
)
from ..data import RUN_ARRAYS, DatasetError, dataset_from_parts, load_dataset, write_run_arrays
from ..storage import (
    CONFIG_FILE,
    TRAJECTORY_STORE,
    RunError,
    TrajectoryWriter,
    location,
    open_group,
    prepare_run_dir,
    trajectory_attrs,
    write_fixed_weights,
)
from ..storage.base import has_contents
from .models import FC, LeNet, build_torch_model, torch_layout
from .runtime import versions
from .state import changed_state, fixed_state, to_numpy

__all__ = ["TrajectoryRecorder"]

_HEADER = (
    "# Written by lca.torch.TrajectoryRecorder: a torch training loop trained this run;\n"
    "# `training` records its number of optimizer steps, and `optimizer` is not the one used\n"
    "# (trajectory.zarr's torch_optimizer attribute names it).\n"
)

# the hyperparameters of a param group that are recorded (those a group has)
_HYPERPARAMETERS = (
    "lr",
    "momentum",
    "nesterov",
    "dampening",
    "weight_decay",
    "betas",
    "eps",
    "amsgrad",
    "maximize",
    "decoupled_weight_decay",
)


class TrajectoryRecorder:
    """Record θ after every ``optimizer.step()`` of ``model`` into an LCA run directory.

    ``iterations``: the number of optimizer steps the training will take (the store is made
    for them; a training that stops earlier is recorded as the shorter run at :meth:`close`,
    one more step is a one-line ConfigError). The data the loss is allocated on are either
    ``train_data=(x, y)`` (numpy arrays or tensors; with ``validation_data``), stored in the
    run (``RUN/data.zarr``), or ``data_fn``, a ``"module:function"`` as the config's
    ``data.builder`` (called with ``data_kwargs``). ``model_fn`` (``"module:function"``,
    called with ``model_kwargs``) builds the model again for the allocation; it may be left
    out for lca's built-in networks (:class:`lca.torch.models.FC`, ``LeNet``). The model's
    outputs and the labels give the loss ``loss`` (``sparse_categorical_crossentropy`` on
    logits, or on probabilities with ``from_logits=False``; or ``mean_squared_error``);
    ``allocate`` holds settings of the config's ``allocate`` section.

    ``batch_size``: the most example indices one step records with :meth:`batch` (the
    batch size times the steps of gradient accumulation); without it no indices are
    recorded (-1). ``seed`` is written to the config; ``overwrite=True`` replaces an
    existing run directory.

    Use it as a context manager, or call :meth:`close` after the last step: either removes
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
    ) -> None:
        self.run_dir = location(run_dir)
        self.writer: TrajectoryWriter | None = None
        self.steps = 0
        self._handles: list = []
        _check_arguments(iterations, train_data, data_fn, validation_data, batch_size)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"TrajectoryRecorder: optimizer is a {type(optimizer).__name__}, not a "
                "torch.optim.Optimizer"
            )
        model = _unwrapped(model)
        self.model, self.optimizer = model, optimizer
        self.iterations = int(iterations)
        self.batch_size = batch_size
        self.active = _is_recording_rank()
        if not self.active:  # another rank of a distributed training: rank 0 records
            return

        self.names, self._params = _theta(model, optimizer)
        layout = torch_layout(model, self.names)
        dataset = _dataset(train_data, validation_data, data_fn, data_kwargs)
        model_cfg, what = _model_config(model, model_fn, model_kwargs, loss, from_logits, dataset)
        raw = Config(
            name=self.run_dir.name,
            framework="torch",
            model=model_cfg,
            data=DataConfig(builder=data_fn or RUN_ARRAYS, kwargs=dict(data_kwargs or {})),
            training=TrainingConfig(iterations=self.iterations, seed=seed, log_every=0),
            allocate=AllocateConfig(),
        ).to_dict()
        raw["allocate"].update(allocate or {})
        config = config_from_dict(raw, source="TrajectoryRecorder")  # validated like a file
        _check_rebuilt(model, config, dataset, seed, what)
        self._warn_precision()

        if not overwrite:
            _refuse_existing(self.run_dir)
        run_dir = prepare_run_dir(self.run_dir, overwrite)
        (run_dir / CONFIG_FILE).write_text(_HEADER + config.to_yaml())
        if train_data is not None:
            write_run_arrays(run_dir, dataset)
        self._config = config
        self._num_train = len(dataset.y_train)
        self.writer = TrajectoryWriter(
            run_dir,
            num_iterations=self.iterations,
            num_params=layout.total,
            batch_size=batch_size or 1,
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
                "torch_optimizer": _optimizer_description(optimizer, model, self.names),
                "metrics": (
                    "loss and accuracy are not recorded; batch_indices where "
                    "TrajectoryRecorder.batch gave them (-1 elsewhere)"
                ),
            },
        )
        self._fixed = fixed_state(model, self.names)
        with self.writer.writing():
            write_fixed_weights(self.writer.group, self._fixed)
        self._pending: list[np.ndarray] = []
        self._hyperparameters = _hyperparameters(optimizer)
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
        recorded = writer.close("complete")
        group = writer.group
        if recorded < writer.num_steps:  # the training stopped early
            iterations = recorded - 1
            group["theta"].resize((recorded, group["theta"].shape[1]))
            for name in ("loss", "accuracy", "val_accuracy"):
                if name in group:
                    group[name].resize((iterations,))
            group["batch_indices"].resize((iterations, group["batch_indices"].shape[1]))
            group.attrs.update(
                {"num_iterations": iterations, "steps_recorded": recorded, "complete": True}
            )
            self._config.training.iterations = iterations
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
        return recorded - 1

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
            if not _same(p.detach(), last):
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
        if self._changed_at is None and _hyperparameters(optimizer) != self._hyperparameters:
            self._changed_at = self.steps  # a schedule: --causes replays fixed settings only
        self._last = self._snapshot()
        row = np.full(self.batch_size or 1, -1, np.int64)
        if self._pending:
            indices = np.concatenate(self._pending)
            row[: len(indices)] = indices
            self._pending = []
        self.writer.append(self._arrays(self._last), {"batch_indices": row})
        self.steps += 1

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


# --- construction ---------------------------------------------------------------------------


def _check_arguments(iterations, train_data, data_fn, validation_data, batch_size) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
        raise ConfigError("TrajectoryRecorder: iterations must be the number of optimizer steps")
    if iterations <= 0:
        raise ConfigError(f"TrajectoryRecorder: iterations must be > 0, got {iterations}")
    if (data_fn is None) == (train_data is None):
        raise ConfigError(
            "TrajectoryRecorder: give either data_fn ('module:function') or train_data=(x, y)"
        )
    if validation_data is not None and train_data is None:
        raise ConfigError("TrajectoryRecorder: validation_data goes with train_data")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) <= 0):
        raise ConfigError(f"TrajectoryRecorder: batch_size must be > 0, got {batch_size}")


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module whose parameters are θ: DDP's, DataParallel's or torch.compile's inner one;
    a sharded model is refused."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"TrajectoryRecorder: model is a {type(model).__name__}, not an nn.Module"
        )
    if _is_sharded(model):
        raise ConfigError(
            "model: FSDP shards the parameters, so no process holds θ; record an unsharded "
            "model (DistributedDataParallel) or gather the full parameters after every step"
        )
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _is_sharded(model: nn.Module) -> bool:
    kinds: tuple[type, ...] = ()
    with contextlib.suppress(ImportError):
        from torch.distributed import fsdp

        kinds = tuple(
            k
            for k in (getattr(fsdp, n, None) for n in ("FullyShardedDataParallel", "FSDPModule"))
            if isinstance(k, type)
        )
    return any(isinstance(m, kinds) or hasattr(m, "_fsdp_wrapped_module") for m in model.modules())


def _is_recording_rank() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def _theta(model: nn.Module, optimizer) -> tuple[list[str], list[torch.Tensor]]:
    """The names and tensors of the parameters the optimizer updates, in module order."""
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in updated]
    if len(named) != len(updated):
        raise ConfigError(
            f"optimizer: {len(updated) - len(named)} of its parameters are not the model's; "
            "pass the model whose parameters the optimizer updates"
        )
    if not named:
        raise ConfigError("optimizer: it updates no parameter of the model")
    return [n for n, _ in named], [p for _, p in named]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise the same values, NaN equal to NaN (a diverged step is still a step)."""
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(torch.isclose(a, b, 0, 0, equal_nan=True).all())


def _dataset(train_data, validation_data, data_fn, data_kwargs):
    if train_data is None:
        try:
            return load_dataset(DataConfig(builder=data_fn, kwargs=dict(data_kwargs or {})))
        except DatasetError as exc:
            raise ConfigError(str(exc).replace("data.builder:", "data_fn:", 1)) from None

    def arrays(pair, what):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ConfigError(f"TrajectoryRecorder: {what} must be (x, y)")
        return tuple(to_numpy(a) if isinstance(a, torch.Tensor) else np.asarray(a) for a in pair)

    val = None if validation_data is None else arrays(validation_data, "validation_data")
    try:
        return dataset_from_parts((arrays(train_data, "train_data"), val), "recorded data")
    except DatasetError as exc:
        raise ConfigError(f"train_data: {exc}") from None


def _model_config(model, model_fn, model_kwargs, loss, from_logits, dataset):
    """The config's model section and how to name it in errors."""
    if model_fn is not None:
        cfg = ModelConfig(
            builder=model_fn, kwargs=dict(model_kwargs or {}), loss=loss, from_logits=from_logits
        )
        return cfg, f"model_fn {model_fn}"
    if model_kwargs:
        raise ConfigError("TrajectoryRecorder: model_kwargs go with model_fn")
    if type(model) is FC:
        layers = [getattr(model, f"dense_{i}") for i in range(1, model.depth + 1)]
        cfg = ModelConfig(name="fc", hidden_units=[m.out_features for m in layers[:-1]])
    elif type(model) is LeNet:
        cfg = ModelConfig(
            name="lenet",
            conv_filters=[model.conv_1.out_channels, model.conv_2.out_channels],
            dense_units=model.dense_1.out_features,
        )
    else:
        raise ConfigError(
            f"model_fn: {type(model).__name__} is not one of lca's built-in networks; pass "
            "model_fn='module:function' building it (a torch module is never pickled into "
            "the run)"
        )
    cfg.loss, cfg.from_logits = loss, from_logits
    shape = "×".join(map(str, dataset.input_shape))
    return cfg, f"the built-in {cfg.name} for {shape} inputs and {dataset.num_classes} classes"


def _check_rebuilt(model, config, dataset, seed, what) -> None:
    """The model the config rebuilds must have θ's and the fixed state's names and shapes."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):  # the user's random state stays as it was
        try:
            rebuilt = build_torch_model(
                config.model, dataset.input_shape, dataset.num_classes, seed
            )
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("model.builder:", "model_fn:", 1)) from None
        except Exception as exc:  # the builder's own error
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"model_fn: {what} failed ({type(exc).__name__}: {first})") from None
    want = dict(model.named_parameters())
    want.update(dict(model.named_buffers()))
    have = dict(rebuilt.named_parameters())
    have.update(dict(rebuilt.named_buffers()))
    for name, tensor in want.items():
        if name not in have:
            problem = f"has no {name}"
        elif tuple(have[name].shape) != tuple(tensor.shape):
            problem = f"has {name} of shape {tuple(have[name].shape)}, not {tuple(tensor.shape)}"
        else:
            continue
        raise ConfigError(
            f"model_fn: {what} builds another model than the one being trained: it {problem}"
        )
    extra = [n for n, _ in rebuilt.named_parameters() if n not in want]
    if extra:
        raise ConfigError(
            f"model_fn: {what} builds another model than the one being trained: it has a "
            f"parameter {extra[0]} the trained model lacks"
        )


def _refuse_existing(run_dir: Path) -> None:
    """A one-line error for a run directory that already holds anything."""
    store = run_dir / TRAJECTORY_STORE
    if store.exists():
        attrs = open_group(store, "r", requirements=False).attrs.asdict()
        steps, total = attrs.get("steps_recorded", 0), attrs.get("num_iterations", -1) + 1
        if attrs.get("complete"):
            what = "a complete recording"
        elif attrs.get("recorded_by") == "lca train":
            what = f"an interrupted `lca train` run ({steps} of {total} steps; rerun it to resume)"
        else:
            what = (
                f"an interrupted recording ({steps} of {total} steps), which lca cannot "
                "continue (the training loop owns its optimizer, data order and random state)"
            )
        raise RunError(
            f"{run_dir} already holds {what}; pass overwrite=True to record the training again"
        )
    if has_contents(run_dir):
        raise RunError(f"{run_dir} already exists; pass overwrite=True to replace it")


def _optimizer_description(optimizer, model: nn.Module, names: Sequence[str]) -> dict:
    """The optimizer's class and each param group's hyperparameters (at the start) as JSON."""
    name_of = {id(p): n for n, p in model.named_parameters()}

    def plain(value):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().tolist()
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, (bool, int, float, str)) or value is None:
            return value
        return str(value)

    groups = []
    for group in optimizer.param_groups:  # as _hyperparameters reads them
        described = {k: plain(group[k]) for k in _HYPERPARAMETERS if k in group}
        described["parameters"] = [name_of[id(p)] for p in group["params"] if id(p) in name_of]
        groups.append(described)
    return {"class": type(optimizer).__name__, "groups": groups}


def _hyperparameters(optimizer) -> list[tuple]:
    """Each param group's recorded hyperparameters as they are now (compared every step)."""
    return [
        tuple(
            float(group[k]) if isinstance(group[k], torch.Tensor) else group[k]
            for k in _HYPERPARAMETERS
            if k in group
        )
        for group in optimizer.param_groups
    ]
