"""What fixes the numbers of an allocation: the settings, merged from config and command line.

A resumed allocation must use exactly the settings its store was made with, so they have an
``identity()`` that ``lca.zarr`` records and compares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from ..config import AllocateConfig
from ..quadrature import METHODS
from ..storage import RunError, rows_per_chunk

#: The arithmetic ``allocate.precision`` may choose for the gradients.
PRECISIONS = ("auto", "float32", "bfloat16", "tf32")

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
    GPUs get float32 until TF32 and bf16 there are measured (``scripts/gpu_check.py``);
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
STORE_LEVELS = ("parameters", "units", "layers")


@dataclass(frozen=True)
class AllocationSettings:
    """What fixes the numbers of an allocation; a resumed run must use the same."""

    splits: tuple[str, ...]
    threshold: float
    max_splits: int
    chunk_iterations: int
    eval_batch_size: int
    allow_tf32: bool = False
    jit_compile: bool = False
    reuse_input_layer: bool = True
    subset_size: int | None = None  # train split on this many examples (None: all of them)
    subset_seed: int = 0
    check_every: int | None = None  # also allocate every k-th iteration on the full train set
    per_class: bool = False  # also the per-class parts of every LCA
    per_class_full: bool = False  # ... and their full (T, C, K) arrays
    rule: str = "simpson"  # the refinement sequence (lca.quadrature.METHODS)
    trapezoid_threshold: float | None = None  # rule "adaptive": when the trapezoid is accepted
    precision: str = "float32"  # arithmetic of the gradients; losses always float32
    store: str = "parameters"  # what is kept per iteration (STORE_LEVELS)
    store_grad: bool = True  # also keep the full-set gradient at every θ_t
    causes: bool = False  # also the LCA of every term of the optimiser's step (cause_sums)

    @property
    def reduced_precision(self) -> bool:
        return self.precision != "float32"

    def identity(self) -> dict:
        subset = {}
        if self.subset_size is not None:  # absent otherwise, so older stores still resume
            subset = {
                "subset_size": self.subset_size,
                "subset_seed": self.subset_seed,
                "check_every": self.check_every,
            }
        return {
            "splits": list(self.splits),
            "threshold": self.threshold,
            "max_splits": self.max_splits,
            "chunk_iterations": self.chunk_iterations,
            "eval_batch_size": self.eval_batch_size,
            "allow_tf32": self.allow_tf32,
            "jit_compile": self.jit_compile,
            "reuse_input_layer": self.reuse_input_layer,
            **subset,
            **(
                {"per_class": True, "per_class_full": self.per_class_full} if self.per_class else {}
            ),
            # absent at their defaults, so that stores made before they existed still resume
            **({"rule": self.rule} if self.rule != "simpson" else {}),
            **(
                {"trapezoid_threshold": self.trapezoid_threshold}
                if self.trapezoid_threshold is not None
                else {}
            ),
            **({"precision": self.precision} if self.reduced_precision else {}),
            **({"store": self.store} if self.store != "parameters" else {}),
            **({"store_grad": False} if not self.store_grad else {}),
            **({"causes": True} if self.causes else {}),
        }

    def checked(self, iteration: int) -> bool:
        """Whether ``iteration`` also gets the full-set LCA (``subset_check/``)."""
        return self.check_every is not None and iteration % self.check_every == 0


def subset_indices(num_train: int, size: int, seed: int) -> np.ndarray:
    """The fixed, sorted training examples an allocation with ``subset_size`` uses."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size, replace=False)).astype(np.int64)


def resolve_settings(
    config: AllocateConfig,
    num_params: int,
    *,
    splits: Sequence[str] | None = None,
    threshold: float | None = None,
    max_splits: int | None = None,
    subset_size: int | None = None,
    check_every: int | None = None,
    num_train: int | None = None,
    per_class: bool | None = None,
    rule: str | None = None,
    trapezoid_threshold: float | None = None,
    precision: str | None = None,
    store: str | None = None,
    store_grad: bool | None = None,
    causes: bool | None = None,
    on_gpu: bool | Callable[[], bool] = False,
    framework: str = "tensorflow",
) -> AllocationSettings:
    """Merge command-line choices over the run's ``allocate`` section, validated the same way.

    ``precision: auto`` is resolved here (``on_gpu``: the allocation runs on GPUs), so the
    settings, and the store they make, name the arithmetic actually used.
    """
    merged = replace(
        config,
        splits=list(splits) if splits else list(config.splits),
        threshold=config.threshold if threshold is None else threshold,
        max_splits=config.max_splits if max_splits is None else max_splits,
        subset_size=config.subset_size if subset_size is None else subset_size,
        check_every=config.check_every if check_every is None else check_every,
        per_class=config.per_class if per_class is None else per_class,
        rule=rule or config.rule,
        trapezoid_threshold=trapezoid_threshold or config.trapezoid_threshold,
        precision=precision or config.precision,
        store=store or config.store,
        store_grad=config.store_grad if store_grad is None else store_grad,
        causes=config.causes if causes is None else causes,
    )
    if merged.rule not in METHODS:
        raise RunError(f"--rule {merged.rule!r}: choose from {', '.join(METHODS)}")
    if merged.precision not in PRECISIONS:
        raise RunError(f"--precision {merged.precision!r}: choose from {', '.join(PRECISIONS)}")
    if merged.store not in STORE_LEVELS:
        raise RunError(f"--store {merged.store!r}: choose from {', '.join(STORE_LEVELS)}")
    for key, problem in merged.validate().items():
        raise RunError(f"allocate.{key}: {problem}")
    if framework == "torch":  # what the torch objective computes (lca.torch.objective)
        if merged.precision not in ("auto", "float32"):
            raise RunError(f"--precision {merged.precision}: torch runs are allocated in float32")
        if merged.per_class:
            raise RunError("--per-class: not available for torch runs (framework: torch)")
        merged = replace(merged, precision="float32")
    merged = replace(
        merged,
        precision=resolve_precision(merged.precision, on_gpu=on_gpu, per_class=merged.per_class),
    )
    unknown = [s for s in merged.splits if s not in ("train", "val")]
    if unknown:
        raise RunError(f"--splits: unknown split {unknown[0]!r} (choose from train, val)")
    too_big = num_train is not None and (merged.subset_size or 0) >= num_train
    if too_big:
        raise RunError(
            f"--subset {merged.subset_size}: must be smaller than the {num_train} "
            "training examples (omit it to allocate on the full train split)"
        )
    # every setting has the allocate-config field of the same name
    values = {f.name: getattr(merged, f.name) for f in fields(AllocationSettings)}
    values["splits"] = tuple(merged.splits)
    values["chunk_iterations"] = merged.chunk_iterations or rows_per_chunk(num_params)
    return AllocationSettings(**values)
