"""What fixes the numbers of an allocation: the run's ``allocate`` settings, resolved for it.

The settings are defined, defaulted and checked once, as
[`lca.config.AllocateConfig`][lca.config.schema.AllocateConfig];
`resolve_settings` applies a caller's overrides to it and fixes what depends on the
machine and the run. A resumed allocation must use exactly the settings its store was made
with, so they have an ``identity()`` that ``lca.zarr`` records and compares.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ..config import AllocateConfig, Config, ConfigError, Precision, StoreLevel, with_overrides
from ..storage import RunError, rows_per_chunk

#: The arithmetic ``allocate.precision`` may choose for the gradients.
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)

#: CPU flags of bfloat16 matrix units (Intel AMX, AVX512-BF16): where bfloat16 pays off.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (Linux ``/proc/cpuinfo`` flags).

    Elsewhere TensorFlow emulates bfloat16 products, slower than float32.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(
    precision: str, *, on_gpu: bool | Callable[[], bool], per_class: bool = False
) -> str:
    """``auto``: bfloat16 on a CPU with bfloat16 units, float32 otherwise.

    Where ``auto`` picks bfloat16 it met the agreement limits with the paper's float32
    allocation on all three MNIST-FC set-ups (docs/performance.md#method-comparisons).
    GPUs get float32 until TF32 and bf16 there are measured (``tests/test_gpu.py``);
    per-class LCA has no reduced-precision path.
    """
    if precision != "auto":
        return precision
    if per_class or not cpu_has_bf16_units():
        return "float32"
    gpu = on_gpu() if callable(on_gpu) else on_gpu  # may import TensorFlow: asked last
    return "float32" if gpu else "bfloat16"


#: What ``allocate.store`` may keep per iteration (:mod:`.levels`): the (T, K) LCA; its sums
#: per output unit and per layer; its sums per layer only.
STORE_LEVELS: tuple[str, ...] = typing.get_args(StoreLevel)

#: The names ``lca.zarr`` records for settings that are named otherwise in the config: the
#: stores' own format, the same in stores made before and after the config's names changed.
RECORDED_NAMES = {"max_intervals": "max_splits", "block_iterations": "chunk_iterations"}

#: Settings a store records only when they differ from these values (stores made before a
#: setting existed lack it, and were made with this value), in the order they are recorded.
#: A resumed allocation continues with its store's values of these unless they are chosen.
RECORDED_UNLESS = {
    "rule": "simpson",
    "trapezoid_threshold": None,
    "precision": "float32",
    "store": "parameters",
    "store_grad": True,
    "causes": False,
}

#: Settings every store records (under :data:`RECORDED_NAMES`), in the order recorded.
ALWAYS_RECORDED = (
    "splits",
    "threshold",
    "max_intervals",
    "block_iterations",
    "eval_batch_size",
    "jit_compile",
    "reuse_input_layer",
)


@dataclass
class AllocationSettings(AllocateConfig):
    """The ``allocate`` settings resolved for one run: ``precision`` names the arithmetic
    actually used and ``block_iterations`` is set. Made by `resolve_settings`."""

    def __post_init__(self) -> None:
        if self.precision == "auto" or self.block_iterations is None:
            raise ValueError(
                "AllocationSettings needs a concrete precision and block_iterations "
                "(lca.allocation.resolve_settings resolves an AllocateConfig)"
            )

    @property
    def reduced_precision(self) -> bool:
        return self.precision != "float32"

    def identity(self) -> dict:
        """What ``lca.zarr`` records and a resumed allocation must match (JSON)."""
        recorded: dict[str, Any] = {
            RECORDED_NAMES.get(name, name): getattr(self, name) for name in ALWAYS_RECORDED
        }
        recorded["splits"] = list(self.splits)
        if self.subset_size is not None:  # absent otherwise, so older stores still resume
            recorded.update(
                subset_size=self.subset_size,
                subset_seed=self.subset_seed,
                check_every=self.check_every,
            )
        if self.per_class:
            recorded.update(per_class=True, per_class_full=self.per_class_full)
        for name, unrecorded in RECORDED_UNLESS.items():
            if getattr(self, name) != unrecorded:
                recorded[name] = getattr(self, name)
        return recorded

    def made(self, made_with: dict | None) -> bool:
        """Whether a store with the recorded identity ``made_with`` was made with these."""
        return made_with is not None and current_identity(made_with) == self.identity()

    def differences(self, made_with: dict) -> str:
        """``made with store: units; asked for store: parameters``: where a store's recorded
        identity and these settings differ (an absent key: the value stores made before had)."""
        made_with = current_identity(made_with)
        asked = self.identity()
        keys = [k for k in {**made_with, **asked} if made_with.get(k) != asked.get(k)]
        names = {recorded: name for name, recorded in RECORDED_NAMES.items()}

        def values(identity: dict) -> str:
            return ", ".join(
                f"{names.get(k, k)}: {identity.get(k, RECORDED_UNLESS.get(k))}" for k in keys
            )

        return f"made with {values(made_with)}; asked for {values(asked)}"

    def checked(self, iteration: int) -> bool:
        """Whether ``iteration`` also gets the full-set LCA (``subset_check/``)."""
        return self.check_every is not None and iteration % self.check_every == 0


def current_identity(identity: dict) -> dict:
    """A store's recorded ``identity`` in today's settings.

    Stores may record ``allow_tf32``, TF32 on for every operation: true with float32
    gradients reads as ``precision: tf32`` (TF32 gradients), otherwise it is dropped.
    """
    current = dict(identity)
    if current.pop("allow_tf32", False) and current.get("precision", "float32") == "float32":
        current["precision"] = "tf32"
    return current


def recorded_values(identity: dict) -> dict[str, Any]:
    """The settings of `RECORDED_UNLESS` a store's ``identity`` was made with."""
    identity = current_identity(identity)
    return {name: identity.get(name, unrecorded) for name, unrecorded in RECORDED_UNLESS.items()}


def continued_from(identity: dict, chosen: dict[str, Any]) -> dict[str, Any]:
    """``chosen`` completed with what a resumed store was made with, where not chosen.

    A trapezoid threshold continues only with the rule it was made with.
    """
    made = recorded_values(identity)
    continued = {name: value for name, value in made.items() if name not in chosen}
    if chosen.get("rule", made["rule"]) != made["rule"]:
        continued.pop("trapezoid_threshold", None)
    return {**continued, **chosen}


def subset_indices(num_train: int, size: int, seed: int) -> np.ndarray:
    """The fixed, sorted training examples an allocation with ``subset_size`` uses."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size, replace=False)).astype(np.int64)


def resolve_settings(
    config: AllocateConfig,
    num_params: int,
    *,
    num_train: int | None = None,
    on_gpu: bool | Callable[[], bool] = False,
    run: Config | None = None,
    framework: str = "tensorflow",
    **overrides: Any,
) -> AllocationSettings:
    """``config`` with ``overrides`` (setting names of
    [`lca.config.AllocateConfig`][lca.config.schema.AllocateConfig])
    applied and checked as a config file is, resolved for a run of ``num_params`` parameters.

    ``precision: auto`` is resolved here (``on_gpu``: the allocation runs on GPUs), so the
    settings, and the store they make, name the arithmetic actually used. ``run`` (the run's
    whole config) adds the checks that depend on its model and framework. Errors name the
    setting: ``allocate.max_intervals: must be a power of two >= 2``.
    """
    try:
        merged = with_overrides(config, overrides, "allocate.")
        if run is not None:
            framework = run.framework
            for key, problem in replace(run, allocate=merged).validate().items():
                if key.startswith("allocate."):
                    raise ConfigError(f"{key}: {problem}")
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    if framework == "torch":  # what the torch objective computes (lca.torch.objective)
        if merged.precision == "bfloat16":
            raise RunError(
                "allocate.precision: torch runs are allocated in float32 or tf32 "
                "(bfloat16 is TensorFlow only)"
            )
        if merged.per_class:
            raise RunError("allocate.per_class: not available for torch runs (framework: torch)")
        if merged.precision == "auto":
            merged = replace(merged, precision="float32")
    too_big = num_train is not None and (merged.subset_size or 0) >= num_train
    if too_big:
        raise RunError(
            f"allocate.subset_size {merged.subset_size}: must be smaller than the {num_train} "
            "training examples (omit it to allocate on the full train split)"
        )
    values = {f.name: getattr(merged, f.name) for f in fields(AllocateConfig)}
    values["precision"] = resolve_precision(
        merged.precision, on_gpu=on_gpu, per_class=merged.per_class
    )
    values["block_iterations"] = merged.block_iterations or rows_per_chunk(num_params)
    return AllocationSettings(**values)
