"""Phase 2: replay a recorded trajectory and allocate each iteration's loss change.

The T iterations are cut into work units aligned with the Zarr chunks of ``lca.zarr``; a unit
computes the gradient at its first θ once, then walks its iterations, reusing every endpoint
gradient as the next start. Units are handed out dynamically to one or more worker
processes (one per GPU, or N CPU workers) and each writes only its own chunks, then marks
itself done. A rerun skips the done units, so a crashed or killed allocation resumes and
ends with exactly the arrays of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import zarr

from . import __version__
from .config import AllocateConfig, Config, load_config
from .quadrature import integrate_step
from .storage import (
    CONFIG_FILE,
    LCA_STORE,
    RunError,
    Trajectory,
    location,
    open_group,
    open_trajectory,
    remove_tree,
    rows_per_chunk,
)


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
        }

    def checked(self, iteration: int) -> bool:
        """Whether ``iteration`` also gets the full-set LCA (``subset_check/``)."""
        return self.check_every is not None and iteration % self.check_every == 0


def subset_indices(num_train: int, size: int, seed: int) -> np.ndarray:
    """The fixed, sorted training examples an allocation with ``subset_size`` uses."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size, replace=False)).astype(np.int64)


@dataclass
class AllocationSummary:
    run_dir: Path
    iterations_total: int
    iterations_done: int
    iterations_this_run: int
    seconds: float
    halvings: int = 0
    gradient_evaluations: int = 0
    chunks_skipped: int = 0

    @property
    def complete(self) -> bool:
        return self.iterations_done == self.iterations_total


@dataclass
class ChunkResult:
    """What one work unit computed, before it is written."""

    chunk: int
    start: int
    stop: int
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    halvings: int = 0
    evaluations: int = 0
    check: dict[str, np.ndarray] | None = None  # rows of ``subset_check/`` (checked units)
    check_seconds: float = 0.0  # time spent on the full-set check (benchmarks subtract it)


def read_run_config(run_dir: str | Path) -> Config:
    path = location(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: no {CONFIG_FILE}; is this a run directory of `lca train`?")
    return load_config(path)


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
) -> AllocationSettings:
    """Merge command-line choices over the run's ``allocate`` section, validated the same way."""
    merged = replace(
        config,
        splits=list(splits) if splits else list(config.splits),
        threshold=config.threshold if threshold is None else threshold,
        max_splits=config.max_splits if max_splits is None else max_splits,
        subset_size=config.subset_size if subset_size is None else subset_size,
        check_every=config.check_every if check_every is None else check_every,
        per_class=config.per_class if per_class is None else per_class,
    )
    for key, problem in merged.validate().items():
        raise RunError(f"allocate.{key}: {problem}")
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


# --- the store --------------------------------------------------------------------------


def open_lca_store(
    run_dir: Path, trajectory: Trajectory, settings: AllocationSettings
) -> zarr.Group:
    """Create ``lca.zarr`` or reopen it for resuming, refusing one made with other settings."""
    path = run_dir / LCA_STORE
    T = trajectory.num_iterations
    K = trajectory.theta.shape[1]
    c = settings.chunk_iterations
    if path.exists():
        group = open_group(path, "r+")
        made_with = group.attrs.get("settings")
        if made_with != settings.identity():
            raise RunError(
                f"{path} was made with other settings ({made_with}); use the same options, "
                f"or delete it (or pass --restart) to start over"
            )
        return group
    group = open_group(path, "w")
    n_chunks = math.ceil(T / c)
    group.create_array(
        "done",
        shape=(n_chunks,),
        chunks=(1,),
        dtype="bool",
        fill_value=False,
        dimension_names=("work_unit",),
    )
    arrays = {  # name: (shape, dimension names, dtype, fill value); chunks of c rows
        "lca": ((T, K), ("iteration", "parameter"), "float32", np.nan),
        "grad": ((T + 1, K), ("step", "parameter"), "float32", np.nan),
        "loss": ((T + 1,), ("step",), "float64", np.nan),
        "splits": ((T,), ("iteration",), "int32", 0),
        "error": ((T,), ("iteration",), "float64", np.nan),
        "error_fo": ((T,), ("iteration",), "float64", np.nan),
    }
    num_train = int(trajectory.attrs["num_train"])
    for split in settings.splits:
        sub = group.create_group(split)
        for name, (shape, dims, dtype, fill) in arrays.items():
            chunks = (c, *shape[1:])
            sub.create_array(
                name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims, fill_value=fill
            )
        sub.attrs.update(
            {
                "split": split,
                "num_examples": int(
                    trajectory.attrs["num_train" if split == "train" else "num_val"]
                ),
            }
        )
        if split == "train" and settings.subset_size is not None:
            indices = subset_indices(num_train, settings.subset_size, settings.subset_seed)
            sub.create_array(
                "subset_indices",
                shape=indices.shape,
                dtype="int64",
                dimension_names=("subset_example",),
            )[:] = indices
            sub.attrs.update(
                {
                    "num_examples": settings.subset_size,
                    "num_examples_full": num_train,
                    "subset_size": settings.subset_size,
                    "subset_seed": settings.subset_seed,
                }
            )
    if settings.per_class:
        for split in settings.splits:
            _create_per_class_arrays(
                group[split],
                T,
                c,
                int(trajectory.attrs["num_classes"]),
                trajectory.layout_json,
                settings.per_class_full,
            )
    if settings.check_every is not None:
        _create_check_arrays(group, T, c, len(_layer_index(trajectory.layout_json)[1]))
    group.attrs.update(
        {
            "settings": settings.identity(),
            "rule": "simpson",
            "num_iterations": T,
            "num_params": K,
            "layout": trajectory.layout_json,
            "lca_version": __version__,
            "description": "A[t, i] = Δθ_i · ∫ g_i along the step t (adaptive composite Simpson); "
            "error = (L[t+1] − L[t]) − Σ_i A[t, i]; negative LCA helps",
        }
    )
    return group


CHECK_DESCRIPTION = (
    "every check_every-th iteration of a subset allocation, also allocated on the full train "
    "split with composite Simpson on the same number of sub-intervals the subset used; rows "
    "of unchecked (or not yet allocated) iterations hold iteration = -1 and NaN"
)


def unit_index(layout_json: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per layer group: its parameters' flat indices, their output unit, the unit count.

    A parameter's unit is its index along the variable's last axis (a dense kernel's output
    neuron, a conv kernel's output channel; a bias or batch-norm vector's own position).
    """
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for e in layout_json:
        last = int(e["shape"][-1]) if e["shape"] else 1
        flat = np.arange(e["offset"], e["offset"] + e["size"])
        groups.setdefault(e["layer"], []).append((flat, np.arange(e["size"]) % last))
    return {
        layer: (
            np.concatenate([f for f, _ in parts]),
            np.concatenate([u for _, u in parts]),
            int(max(u.max(initial=0) for _, u in parts)) + 1,
        )
        for layer, parts in groups.items()
    }


def _create_per_class_arrays(sub: zarr.Group, T: int, c: int, C: int, layout_json, full: bool):
    """The per-class arrays of one split (``allocate.per_class``)."""
    _, layers = _layer_index(layout_json)
    K = sum(int(e["size"]) for e in layout_json)
    specs = {
        "class_loss": ((T + 1, C), ("step", "class"), "float64"),
        "class_error": ((T, C), ("iteration", "class"), "float64"),
        "class_layer_lca": ((T, C, len(layers)), ("iteration", "class", "layer"), "float32"),
    }
    for layer, (_, _, units) in unit_index(layout_json).items():
        specs[f"class_unit_lca/{layer}"] = (
            (T, C, units),
            ("iteration", "class", f"{layer}_unit"),
            "float32",
        )
    if full:
        specs["class_lca"] = ((T, C, K), ("iteration", "class", "parameter"), "float32")
    for name, (shape, dims, dtype) in specs.items():
        sub.create_array(
            name,
            shape=shape,
            chunks=(c, *shape[1:]),
            dtype=dtype,
            dimension_names=dims,
            fill_value=np.nan,
        )
    sub.attrs["layers"] = layers


def _create_check_arrays(group: zarr.Group, T: int, c: int, num_layers: int) -> None:
    """``subset_check/`` at full length T, chunked like the (T,) arrays: units write own rows."""
    check = group.create_group("subset_check")
    check.create_array(
        "iteration",
        shape=(T,),
        chunks=(c,),
        dtype="int64",
        fill_value=-1,
        dimension_names=("iteration",),
    )
    check.create_array(
        "layer_rel_error",
        shape=(T, num_layers),
        chunks=(c, num_layers),
        dtype="float64",
        fill_value=np.nan,
        dimension_names=("iteration", "layer"),
    )
    for name in CHECK_SCALARS:
        check.create_array(
            name,
            shape=(T,),
            chunks=(c,),
            dtype="float64",
            fill_value=np.nan,
            dimension_names=("iteration",),
        )
    check.attrs["description"] = CHECK_DESCRIPTION


CHECK_SCALARS = (
    "correlation",  # Pearson of per-parameter A_subset vs A_full
    "sign_agreement",  # share of parameters with A_full ≠ 0 whose signs agree
    "helped_error",  # % helped on the subset − % helped on the full set (percentage points)
    "full_loss_change",  # L_full(θ_t+1) − L_full(θ_t)
    "full_error",  # full_loss_change − Σ_i A_full
)


def _layer_index(layout_json) -> tuple[np.ndarray, list[str]]:
    from .layout import ParameterLayout

    layout = ParameterLayout.from_json(layout_json)
    return layout.layer_index(), layout.layers


def compare_lca(
    a_subset: np.ndarray, a_full: np.ndarray, layer_index: np.ndarray, num_layers: int
) -> dict[str, np.ndarray | float]:
    """How far one iteration's subset LCA is from its full-set LCA, per layer and overall."""
    sub = np.asarray(a_subset, dtype=np.float64)
    full = np.asarray(a_full, dtype=np.float64)
    layer_sub = np.bincount(layer_index, weights=sub, minlength=num_layers)
    layer_full = np.bincount(layer_index, weights=full, minlength=num_layers)
    with np.errstate(invalid="ignore", divide="ignore"):
        layer_rel = np.abs(layer_sub - layer_full) / np.abs(layer_full)
    correlation = (
        float(np.corrcoef(sub, full)[0, 1]) if sub.std() > 0 and full.std() > 0 else float("nan")
    )
    nonzero = full != 0
    sign_agreement = (
        float((np.sign(sub[nonzero]) == np.sign(full[nonzero])).mean())
        if nonzero.any()
        else float("nan")
    )

    def helped_pct(a: np.ndarray) -> float:
        moved = np.count_nonzero(a)
        return 100.0 * np.count_nonzero(a < 0) / moved if moved else float("nan")

    return {
        "layer_rel_error": layer_rel,
        "correlation": correlation,
        "sign_agreement": sign_agreement,
        "helped_error": helped_pct(sub) - helped_pct(full),
    }


def chunks_for(num_iterations: int, chunk: int, iterations: tuple[int, int] | None) -> list[int]:
    """Work units covering ``iterations`` (a half-open range), rounded out to whole chunks."""
    start, stop = iterations if iterations else (0, num_iterations)
    start, stop = max(0, start), min(num_iterations, stop)
    if start >= stop:
        raise RunError(f"--iterations {start}:{stop} selects no iteration of {num_iterations}")
    return list(range(start // chunk, math.ceil(stop / chunk)))


# --- one work unit ----------------------------------------------------------------------


def load_objective(
    run_dir: str | Path,
    splits: Sequence[str] = ("train", "val"),
    eval_batch_size: int | None = None,
    *,
    allow_tf32: bool = False,
    jit_compile: bool = False,
    reuse_input_layer: bool = True,
    train_subset: np.ndarray | None = None,
    per_class: bool = False,
):
    """The full-set loss/gradient function of a run's model and data, checked against the run.

    The dataset is reloaded from the run's config and must hold exactly the examples the run
    was trained on; the evaluation model (no dropout) must have the recorded layout.
    ``train_subset`` (indices into the train split) restricts the train split to those examples.
    """
    import keras

    from .data import load_dataset
    from .gradients import FullBatchObjective, PerClassObjective, configure_tensorflow
    from .models import build_model, parameter_layout

    configure_tensorflow(allow_tf32=allow_tf32)
    config = read_run_config(run_dir)
    trajectory = open_trajectory(run_dir)
    dataset = load_dataset(config.data, run_dir)
    if not np.array_equal(trajectory.group["train_indices"][:], dataset.train_indices):
        raise RunError(f"{run_dir}: the dataset differs from the one the run was trained on")
    user_model = config.model.builder is not None
    if user_model:
        keras.utils.set_random_seed(int(trajectory.attrs.get("seed", 0)))
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, evaluation=True)
    data = {split: dataset.split(split) for split in splits}
    for split, (_, y) in data.items():
        if len(y) == 0:
            raise RunError(
                f"allocate.splits: the run has no {split} examples (data.builder returned "
                f"none); allocate with --splits train"
            )
    if user_model:
        _prepare_user_model(run_dir, model, trajectory, data)
    elif parameter_layout(model).to_json() != trajectory.layout_json:
        raise RunError(f"{run_dir}: the model's parameter layout differs from the recorded one")
    if train_subset is not None and "train" in data:
        x, y = data["train"]
        data["train"] = (x[train_subset], y[train_subset])
    batch_size = eval_batch_size or config.allocate.eval_batch_size
    options = {"from_logits": config.model.from_logits, "training": not user_model}
    if per_class:
        if not config.model.classification:
            raise RunError(f"--per-class: needs a classification loss, not {config.model.loss}")
        return PerClassObjective(
            model, data, batch_size, dataset.num_classes, jit_compile=jit_compile, **options
        )
    return FullBatchObjective(
        model,
        data,
        batch_size,
        jit_compile=jit_compile,
        reuse_input_layer=reuse_input_layer,
        loss=config.model.loss,
        **options,
    )


def _prepare_user_model(run_dir, model, trajectory: Trajectory, data) -> None:
    """Make a user's model evaluate the run's loss honestly, or say why it cannot.

    Restores the non-trainable weights the run stored, switches batch norm to batch
    statistics (a warning: the allocated loss is then the one of the fixed evaluation batches),
    and checks that the layout matches and that the model is deterministic at a fixed θ.
    """
    import warnings

    from .gradients import check_deterministic, evaluation_mode
    from .models import parameter_layout, restore_fixed_weights, same_structure
    from .storage import read_fixed_weights

    if not same_structure(parameter_layout(model).to_json(), trajectory.layout_json):
        raise RunError(
            f"{run_dir}: model.builder builds a model whose trainable weights differ in number "
            "or shape from the recorded ones"
        )
    changed = trajectory.attrs.get("non_trainable_changed")
    if changed:
        raise RunError(
            f"{run_dir}: non-trainable weight {changed[0]} changed during training, so the "
            "loss is not a function of the recorded θ alone; make it trainable or keep it fixed"
        )
    stored = read_fixed_weights(trajectory.group)
    if stored is not None:
        restore_fixed_weights(model, stored)
    switched = evaluation_mode(model)
    if switched:
        warnings.warn(
            f"layer {switched[0]} is batch normalization: the allocated loss uses the batch "
            "statistics of the fixed evaluation batches (allocate.eval_batch_size), not its "
            "moving averages",
            stacklevel=3,
        )
    x = next(iter(data.values()))[0][:256]
    check_deterministic(model, x, training=False)


class ChunkAllocator:
    """Everything a worker needs to allocate work units: data, compiled objective, stores."""

    def __init__(self, run_dir: str | Path, settings: AllocationSettings) -> None:
        self.run_dir = location(run_dir)
        self.settings = settings
        self.trajectory = open_trajectory(run_dir)
        options = dict(
            allow_tf32=settings.allow_tf32,
            jit_compile=settings.jit_compile,
            reuse_input_layer=settings.reuse_input_layer,
        )
        subset = None
        if settings.subset_size is not None:
            num_train = int(self.trajectory.attrs["num_train"])
            subset = subset_indices(num_train, settings.subset_size, settings.subset_seed)
        self.objective = load_objective(
            run_dir,
            settings.splits,
            settings.eval_batch_size,
            train_subset=subset,
            per_class=settings.per_class,
            **options,
        )
        # the exact full-train-set objective, only for the iterations that are checked
        self.full_objective = (
            load_objective(run_dir, ("train",), settings.eval_batch_size, **options)
            if settings.check_every is not None
            else None
        )
        self.layer_index, layers = _layer_index(self.trajectory.layout_json)
        self.num_layers = len(layers)
        self.num_classes = int(self.trajectory.attrs["num_classes"])
        self.units = unit_index(self.trajectory.layout_json)
        self._store: zarr.Group | None = None
        # Chunks are compressed and written by one background thread while the next chunk's
        # gradients are computed; at most one written chunk is pending at a time.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lca-writer")
        self._pending: Future | None = None

    def submit(self, result: ChunkResult, then: Callable[[ChunkResult], None] | None = None):
        """Write ``result`` in the background, then call ``then(result)`` (from that thread)."""
        self.wait()

        def write_then() -> None:
            self.write(result)
            if then is not None:
                then(result)

        self._pending = self._writer.submit(write_then)

    def wait(self) -> None:
        """Block until the pending write (if any) is done; re-raise its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def compute(self, chunk: int, on_iteration: Callable[[int], None] | None = None) -> ChunkResult:
        """Allocate the iterations of work unit ``chunk`` (nothing is written here)."""
        T = self.trajectory.num_iterations
        c = self.settings.chunk_iterations
        start, stop = chunk * c, min(chunk * c + c, T)
        thetas = self.trajectory.theta[start : stop + 1]
        if not np.isfinite(thetas).all():
            raise RunError(f"{self.run_dir}: θ between steps {start} and {stop} is not finite")
        splits = self.settings.splits
        n = stop - start
        out = {
            s: {
                "lca": np.empty((n, thetas.shape[1]), np.float32),
                "grad": np.empty((n + 1, thetas.shape[1]), np.float32),
                "loss": np.empty(n + 1),
                "splits": np.empty(n, np.int32),
                "error": np.empty(n),
                "error_fo": np.empty(n),
            }
            for s in splits
        }
        per_class = self.settings.per_class
        if per_class:
            C, L, K = self.num_classes, self.num_layers, thetas.shape[1]
            for s in splits:
                out[s]["class_loss"] = np.empty((n + 1, C))
                out[s]["class_error"] = np.empty((n, C))
                out[s]["class_layer_lca"] = np.empty((n, C, L), np.float32)
                for layer, (_, _, units) in self.units.items():
                    out[s][f"class_unit_lca/{layer}"] = np.empty((n, C, units), np.float32)
                if self.settings.per_class_full:
                    out[s]["class_lca"] = np.empty((n, C, K), np.float32)
        result = ChunkResult(chunk, start, stop, out)
        here = self.objective(thetas[0])
        evaluations_before = self.objective.evaluations
        for s in splits:
            out[s]["loss"][0], out[s]["grad"][0] = here[s][0], here[s][1]
            if per_class:
                out[s]["class_loss"][0] = here[s][2]
        components = tuple(f"{s}/class" for s in splits) if per_class else ()

        def nodes(values):  # what the quadrature integrates at one point
            found = {s: values[s][1] for s in splits}
            found.update({f"{s}/class": values[s][3] for s in splits if per_class})
            return found

        for k in range(n):
            delta = thetas[k + 1].astype(np.float64) - thetas[k]
            there = self.objective(thetas[k + 1])

            def gradient_at(fraction: float, k=k):
                return nodes(self.objective.between(thetas[k], thetas[k + 1], fraction))

            step = integrate_step(
                gradient_at,
                delta,
                {s: there[s][0] - here[s][0] for s in splits},
                nodes(here),
                nodes(there),
                threshold=self.settings.threshold,
                max_splits=self.settings.max_splits,
                components=components,
            )
            for s in splits:
                out[s]["lca"][k] = step.lca[s]
                out[s]["loss"][k + 1], out[s]["grad"][k + 1] = there[s][0], there[s][1]
                if per_class:
                    self._per_class(out[s], k, step.components[f"{s}/class"], here[s], there[s])
                out[s]["splits"][k] = step.splits
                out[s]["error"][k] = step.error[s]
                out[s]["error_fo"][k] = step.error_first_order[s]
            result.halvings += int(math.log2(step.splits // 2))
            if self.settings.checked(start + k):
                self._check(
                    result, k, thetas[k], thetas[k + 1], step.splits, out["train"]["lca"][k]
                )
            here = there
            if on_iteration is not None:
                on_iteration(step.splits)
        result.evaluations = self.objective.evaluations - evaluations_before + 1
        return result

    def _per_class(self, out: dict, k: int, lca: np.ndarray, here: tuple, there: tuple) -> None:
        """Row k of the per-class arrays from the (C, K) per-class LCA of one iteration."""
        out["class_loss"][k + 1] = there[2]
        out["class_error"][k] = (there[2] - here[2]) - lca.sum(axis=1, dtype=np.float64)
        for c, row in enumerate(lca):
            out["class_layer_lca"][k, c] = np.bincount(
                self.layer_index, weights=row, minlength=self.num_layers
            )
            for layer, (indices, unit_of, units) in self.units.items():
                out[f"class_unit_lca/{layer}"][k, c] = np.bincount(
                    unit_of, weights=row[indices], minlength=units
                )
        if "class_lca" in out:
            out["class_lca"][k] = lca

    def _check(self, result: ChunkResult, k: int, theta0, theta1, n: int, a_subset) -> None:
        """Full-set LCA of row ``k`` by Simpson on the subset's n sub-intervals; compare.

        Using the subset's n (not an adaptive rule of its own) keeps the two LCAs on the same
        quadrature, so their difference is the subset's sampling error alone; the full set's
        own conservation error is stored beside it as ``full_error``.
        """
        began = time.perf_counter()
        objective = self.full_objective
        rows = result.stop - result.start
        if result.check is None:
            result.check = {"iteration": np.full(rows, -1, np.int64)}
            result.check["layer_rel_error"] = np.full((rows, self.num_layers), np.nan)
            result.check.update({name: np.full(rows, np.nan) for name in CHECK_SCALARS})
        here, there = objective(theta0)["train"], objective(theta1)["train"]
        delta = theta1.astype(np.float64) - theta0
        step = integrate_step(
            lambda fraction: {"train": objective.between(theta0, theta1, fraction)["train"][1]},
            delta,
            {"train": there[0] - here[0]},
            {"train": here[1]},
            {"train": there[1]},
            threshold=0.0,  # never accept early: refine up to exactly n sub-intervals
            max_splits=n,
        )
        check = result.check
        check["iteration"][k] = result.start + k
        for name, value in compare_lca(
            a_subset, step.lca["train"], self.layer_index, self.num_layers
        ).items():
            check[name][k] = value
        check["full_loss_change"][k] = there[0] - here[0]
        check["full_error"][k] = step.error["train"]
        result.check_seconds += time.perf_counter() - began

    def write(self, result: ChunkResult) -> None:
        """Write a unit's own chunks, then (and only then) mark it done."""
        if self._store is None:
            self._store = open_group(self.run_dir / LCA_STORE, "r+")
        T = self.trajectory.num_iterations
        a, b = result.start, result.stop
        # grad/loss rows a..b-1 belong to this unit's chunk; row T only to the last unit.
        last = b + 1 if b == T else b
        for split, arrays in result.arrays.items():
            group = self._store[split]
            group["lca"][a:b] = arrays["lca"]
            group["grad"][a:last] = arrays["grad"][: last - a]
            group["loss"][a:last] = arrays["loss"][: last - a]
            for name in ("splits", "error", "error_fo"):
                group[name][a:b] = arrays[name]
            for name, values in arrays.items():
                if name.startswith("class_"):  # per-class rows; losses like `loss`
                    if name == "class_loss":
                        group[name][a:last] = values[: last - a]
                    else:
                        group[name][a:b] = values
        if result.check is not None:
            for name, values in result.check.items():
                self._store["subset_check"][name][a:b] = values
        self._store["done"][result.chunk] = True


# --- scheduling -------------------------------------------------------------------------


def parse_gpus(spec: str) -> list[int]:
    """``"0-3"`` → [0, 1, 2, 3]; ``"0,2"`` → [0, 2]."""
    gpus: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                gpus.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                gpus.append(int(part))
    except ValueError:
        raise RunError(f"--gpus {spec!r}: expected a list like 0-3 or 0,2") from None
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise RunError(f"--gpus {spec!r}: expected distinct GPU numbers like 0-3 or 0,2")
    return gpus


def allocate(
    run_dir: str | Path,
    *,
    splits: Sequence[str] | None = None,
    threshold: float | None = None,
    max_splits: int | None = None,
    subset_size: int | None = None,
    check_every: int | None = None,
    per_class: bool | None = None,
    iterations: tuple[int, int] | None = None,
    workers: int = 1,
    gpus: Sequence[int] | None = None,
    threads: int | None = None,
    ray: str | None = None,
    gpus_per_task: float = 0.0,
    cpus_per_task: float | None = None,
    restart: bool = False,
    progress: bool = True,
) -> AllocationSummary:
    """Allocate the loss change of every (selected) iteration of a run; resumable.

    ``gpus`` starts one worker process per listed GPU, each seeing only its GPU; ``workers``
    starts that many CPU worker processes; ``ray`` (``auto``, ``local`` or a cluster address)
    runs each chunk as a Ray task holding ``gpus_per_task`` GPUs and ``cpus_per_task`` CPUs
    (see ``lca.cluster``); by default the work runs in this process. ``threads`` pins
    TensorFlow's intra-op threads per worker (bitwise-reproducible results).
    """
    from tqdm.auto import tqdm

    run_dir = location(run_dir)
    config = read_run_config(run_dir)
    trajectory = open_trajectory(run_dir)
    trajectory.require_complete()
    K = trajectory.theta.shape[1]
    if per_class and not config.model.classification:
        raise RunError(f"--per-class: needs a classification loss, not {config.model.loss}")
    settings = resolve_settings(
        config.allocate,
        K,
        splits=splits,
        threshold=threshold,
        max_splits=max_splits,
        subset_size=subset_size,
        check_every=check_every,
        num_train=int(trajectory.attrs["num_train"]),
        per_class=per_class,
    )
    if restart and (run_dir / LCA_STORE).exists():
        remove_tree(run_dir / LCA_STORE)
    store = open_lca_store(run_dir, trajectory, settings)
    T = trajectory.num_iterations
    c = settings.chunk_iterations
    wanted = chunks_for(T, c, iterations)
    done = store["done"][:]
    todo = [k for k in wanted if not done[k]]
    size = {k: min(c, T - k * c) for k in wanted}
    summary = AllocationSummary(
        run_dir,
        T,
        sum(min(c, T - k * c) for k in np.flatnonzero(done)),
        0,
        0.0,
        chunks_skipped=len(wanted) - len(todo),
    )
    bar = tqdm(
        total=sum(size[k] for k in todo),
        desc=f"allocate {run_dir.name}",
        unit="it",
        disable=not progress,
    )

    def on_iteration(splits_used: int) -> None:
        summary.halvings += int(math.log2(splits_used // 2))
        bar.update(1)
        bar.set_postfix(halvings=summary.halvings, refresh=False)

    start = time.perf_counter()
    try:
        # three ways to schedule the same work units; each yields (iterations, evaluations)
        if ray is not None:
            from .cluster import run_on_ray

            bar.set_description(f"allocate {run_dir.name} on Ray")
            finished = run_on_ray(
                run_dir, settings, todo, ray, gpus_per_task, cpus_per_task, on_iteration, threads
            )
        elif gpus is None and workers <= 1:
            finished = _run_here(run_dir, settings, todo, threads, on_iteration)
        else:
            devices = [str(g) for g in gpus] if gpus is not None else [""] * workers
            finished = _run_workers(run_dir, settings, todo, devices, threads, on_iteration)
        with contextlib.closing(finished):
            for iterations_done, evaluations in finished:
                summary.iterations_this_run += iterations_done
                summary.gradient_evaluations += evaluations
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
        done = open_group(run_dir / LCA_STORE, "r")["done"][:]
        summary.iterations_done = sum(min(c, T - k * c) for k in np.flatnonzero(done))
    return summary


def _run_here(run_dir, settings, todo, threads, on_iteration):
    """Compute the work units in this process, writing each while the next is computed."""
    if threads is not None:
        from .gradients import configure_tensorflow

        configure_tensorflow(threads)
    allocator = ChunkAllocator(run_dir, settings)
    try:
        for k in todo:
            result = allocator.compute(k, on_iteration)
            allocator.submit(result)
            yield result.stop - result.start, result.evaluations
    finally:
        allocator.wait()  # what was computed is written, even on Ctrl-C


def _run_workers(run_dir, settings, todo, devices, threads, on_iteration):
    """Hand work units to one process per device through a queue; yield finished units."""
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for k in todo:
        tasks.put(k)
    for _ in devices:
        tasks.put(None)
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(str(run_dir), settings, device, threads, tasks, results),
            daemon=True,
        )
        for device in devices
    ]
    for p in procs:
        p.start()
    remaining = len(todo)
    try:
        while remaining:
            try:
                kind, *payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead or not any(p.is_alive() for p in procs):
                    raise RunError(
                        f"an allocation worker died (exit code {dead[0].exitcode if dead else 0}); "
                        "rerun the same command to resume from the finished chunks"
                    ) from None
                continue
            if kind == "iteration":
                on_iteration(payload[0])
            elif kind == "done":
                remaining -= 1
                yield payload[0], payload[1]
            elif kind == "error":
                raise RunError(payload[0])
    finally:
        for p in procs:
            if p.is_alive() and remaining:
                p.terminate()
        for p in procs:
            p.join(timeout=30)


def _worker_main(run_dir, settings, device, threads, tasks, results) -> None:
    """Entry point of a worker process: see only its device, then take units until told to stop."""
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from .gradients import configure_tensorflow

        configure_tensorflow(threads)
        if device:
            from .gradients import visible_gpus

            if not visible_gpus():
                raise RunError(f"--gpus: GPU {device} is not visible to TensorFlow here")
        allocator = ChunkAllocator(run_dir, settings)

        def report(result: ChunkResult) -> None:
            results.put(("done", result.stop - result.start, result.evaluations))

        while (chunk := tasks.get()) is not None:
            result = allocator.compute(chunk, lambda n: results.put(("iteration", n)))
            allocator.submit(result, then=report)
        allocator.wait()
    except Exception as exc:  # report to the parent, which stops the others
        if isinstance(exc, RunError):
            results.put(("error", str(exc)))
        else:
            traceback.print_exc()
            results.put(
                (
                    "error",
                    f"worker on device {device or 'cpu'} failed: {exc.__class__.__name__}: {exc}",
                )
            )
