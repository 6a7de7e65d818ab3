"""What a torch recording checks and describes before its first step.

The arguments, the model as the allocation will rebuild it (a built-in twin or
``model_fn``), the data, θ (the optimizer's parameters), a sharded or already-recorded run
refused in one line, and the optimizer's description for ``--causes``: the jobs of
`lca.torch.recorder.TrajectoryRecorder`'s construction, apart from its hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..config import (
    ConfigError,
    DataConfig,
    ModelConfig,
)
from ..data import DatasetError, dataset_from_parts, load_dataset
from .models import FC, LeNet, build_torch_model
from .state import to_numpy

#: the hyperparameters of a param group that are recorded (those a group has)
HYPERPARAMETERS = (
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


def check_arguments(iterations, train_data, data_fn, validation_data, batch_size) -> None:
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


def check_record_every(record_every) -> None:
    if isinstance(record_every, bool) or not isinstance(record_every, (int, np.integer)):
        raise ConfigError("TrajectoryRecorder: record_every must be a whole number of steps")
    if record_every < 1:
        raise ConfigError(f"TrajectoryRecorder: record_every must be >= 1, got {record_every}")


def unwrapped(model: nn.Module) -> nn.Module:
    """The module whose parameters are θ: DDP's, DataParallel's or torch.compile's inner one;
    a sharded model is refused."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"TrajectoryRecorder: model is a {type(model).__name__}, not an nn.Module"
        )
    if is_sharded(model):
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


def is_sharded(model: nn.Module) -> bool:
    kinds: tuple[type, ...] = ()
    with contextlib.suppress(ImportError):
        from torch.distributed import fsdp

        kinds = tuple(
            k
            for k in (getattr(fsdp, n, None) for n in ("FullyShardedDataParallel", "FSDPModule"))
            if isinstance(k, type)
        )
    return any(isinstance(m, kinds) or hasattr(m, "_fsdp_wrapped_module") for m in model.modules())


def is_recording_rank() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def optimized_parameters(model: nn.Module, optimizer) -> tuple[list[str], list[torch.Tensor]]:
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


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise the same values, NaN equal to NaN (a diverged step is still a step)."""
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(torch.isclose(a, b, 0, 0, equal_nan=True).all())


def recorded_dataset(train_data, validation_data, data_fn, data_kwargs):
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


def model_config(model, model_fn, model_kwargs, loss, from_logits, dataset):
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


def check_rebuilt(model, config, dataset, seed, what) -> None:
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


def optimizer_description(optimizer, model: nn.Module, names: Sequence[str]) -> dict:
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
        described = {k: plain(group[k]) for k in HYPERPARAMETERS if k in group}
        described["parameters"] = [name_of[id(p)] for p in group["params"] if id(p) in name_of]
        groups.append(described)
    return {"class": type(optimizer).__name__, "groups": groups}


def hyperparameters(optimizer) -> list[tuple]:
    """Each param group's recorded hyperparameters as they are now (compared every step)."""
    return [
        tuple(
            float(group[k]) if isinstance(group[k], torch.Tensor) else group[k]
            for k in HYPERPARAMETERS
            if k in group
        )
        for group in optimizer.param_groups
    ]
