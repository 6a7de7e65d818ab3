"""One work unit: replay its stretch of the trajectory and allocate every iteration in it.

A unit computes the gradient at its first θ once, then walks its iterations, reusing every
endpoint gradient as the next start; its arrays are written (in the background) only after
the whole unit is computed, and the unit is marked done last.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..layout import LevelSums
from ..quadrature import integrate_step
from ..storage import (
    LCA_STORE,
    RunError,
    location,
    open_group,
    open_trajectory,
    read_run_config,
)
from ..storage.base import writing_to
from .backends import load_objective
from .settings import AllocationSettings, subset_indices
from .store import CHECK_SCALARS, _layer_index, unit_index

#: The arrays of a split with a row per step (T+1 rows), not per iteration.
STEP_ARRAYS = ("grad", "loss", "class_loss")


@dataclass
class ChunkResult:
    """What one work unit computed, before it is written."""

    chunk: int
    start: int
    stop: int
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    halvings: int = 0
    evaluations: int = 0
    fallbacks: int = 0  # iterations recomputed in float32 (reduced precision only)
    check: dict[str, np.ndarray] | None = None  # rows of ``subset_check/`` (checked units)
    root: dict[str, np.ndarray] = field(default_factory=dict)  # lca.zarr/<name> rows (causes)


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
            precision=settings.precision,
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
        self.sums = LevelSums.from_layout(self.trajectory.layout_json)  # allocate.store
        self._exact = None  # the float32 objective, for reduced-precision fall-backs
        self.causes = None  # allocate.causes: the optimiser's terms of every step
        if settings.causes:
            from .replay import CauseReplay

            self.causes = CauseReplay(run_dir, self.trajectory, read_run_config(run_dir))
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
        """Allocate the iterations of work unit ``chunk`` (nothing is written here).

        Every iteration's float32 LCA row is kept until the unit is done; then the store
        level (``allocate.store``) decides what of it is written: the rows, or their sums.
        """
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
                **(
                    {"grad": np.empty((n + 1, thetas.shape[1]), np.float32)}
                    if self.settings.store_grad
                    else {}
                ),
                "loss": np.empty(n + 1),
                "splits": np.empty(n, np.int32),
                "error": np.empty(n),
                "error_fo": np.empty(n),
                **({"fallback": np.zeros(n, bool)} if self.settings.reduced_precision else {}),
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
        causes = None
        if self.causes is not None:
            store = self._open_store()
            causes = self.causes.unit(store, chunk, start, n, splits, self.settings.store)
        here = self.objective(thetas[0])
        evaluations_before = self.objective.evaluations
        for s in splits:
            out[s]["loss"][0] = here[s][0]
            if "grad" in out[s]:
                out[s]["grad"][0] = here[s][1]
            if per_class:
                out[s]["class_loss"][0] = here[s][2]

        def nodes(values):  # what the quadrature integrates at one point
            found = {s: values[s][1] for s in splits}
            found.update({f"{s}/class": values[s][3] for s in splits if per_class})
            return found

        for k in range(n):
            there = self.objective(thetas[k + 1])
            step = self._integrate(self.objective, thetas[k], thetas[k + 1], here, there, nodes)
            start_values = here
            fallback = self.settings.reduced_precision and not step.converged
            if fallback:  # the reduced arithmetic's rounding floor: redo this step in float32
                exact = self.exact_objective()
                before = exact.evaluations
                start_values = exact(thetas[k])
                step = self._integrate(
                    exact,
                    thetas[k],
                    thetas[k + 1],
                    start_values,
                    exact(thetas[k + 1]),
                    nodes,
                    reduced=False,
                )
                result.fallbacks += 1
                result.evaluations += exact.evaluations - before
            for s in splits:
                out[s]["lca"][k] = step.lca[s]
                out[s]["loss"][k + 1] = there[s][0]
                if "grad" in out[s]:
                    out[s]["grad"][k + 1] = there[s][1]
                if per_class:
                    self._per_class(out[s], k, step.components[f"{s}/class"], here[s], there[s])
                out[s]["splits"][k] = step.splits
                out[s]["error"][k] = step.error[s]
                out[s]["error_fo"][k] = step.error_first_order[s]
                if "fallback" in out[s]:
                    out[s]["fallback"][k] = fallback
            result.halvings += step.halvings
            if causes is not None:
                self._add_causes(causes, k, thetas, start_values, step)
            if self.settings.checked(start + k):
                self._check(
                    result, k, thetas[k], thetas[k + 1], step.splits, out["train"]["lca"][k]
                )
            here = there
            if on_iteration is not None:
                on_iteration(step.halvings)
        result.evaluations += self.objective.evaluations - evaluations_before + 1
        for s in splits:  # the float32 rows, as stored, are what the sums add up
            out[s].update(self.sums.arrays(out[s].pop("lca"), self.settings.store))
        if causes is not None:
            for s, arrays in causes.arrays().items():
                out[s].update(arrays)
            result.root["replay_residual"] = causes.residual
        return result

    def _add_causes(self, causes, k: int, thetas, start_values, step) -> None:
        """Row k of the unit's cause sums: the step's terms and every split's shares."""
        t = causes.start + k
        batch_grad = None
        if self.causes.batch_gradient is not None:
            batch_grad = self.causes.batch_gradient(t, thetas[k])
        train_grad = start_values["train"][1]  # what the optimiser followed: the train split's
        terms = causes.terms(k, thetas[k], thetas[k + 1], train_grad, batch_grad)
        grads = {s: start_values[s][1] for s in self.settings.splits}
        causes.add(k, terms, grads, step.mean_grad, step.lca)

    def _integrate(self, objective, theta0, theta1, here, there, nodes, reduced=None):
        """One step's LCA by the settings' rule, from the objective's values at both ends.

        The loss change always comes from ``here``/``there`` as given: float32 losses, the
        same bitwise whatever arithmetic the gradients use.
        """
        splits = self.settings.splits
        return integrate_step(
            lambda fraction: nodes(objective.between(theta0, theta1, fraction)),
            theta1.astype(np.float64) - theta0,
            {s: there[s][0] - here[s][0] for s in splits},
            nodes(here),
            nodes(there),
            threshold=self.settings.threshold,
            max_splits=self.settings.max_splits,
            method=self.settings.rule,
            trapezoid_threshold=self.settings.trapezoid_threshold,
            components=tuple(f"{s}/class" for s in splits) if self.settings.per_class else (),
            stop_when_stalled=self.settings.reduced_precision if reduced is None else reduced,
        )

    def exact_objective(self):
        """The float32 objective for fall-backs, built on first use from the same data."""
        if self._exact is None:
            self._exact = self.objective.with_precision("float32")
        return self._exact

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
        """Full-set LCA of row ``k`` by the subset's rule on its n sub-intervals; compare.

        Using the subset's n (not an adaptive rule of its own) keeps the two LCAs on the same
        quadrature, so their difference is the subset's sampling error alone; the full set's
        own conservation error is stored beside it as ``full_error``.
        """
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
            method="adaptive" if n == 1 else "simpson",  # n = 1: the trapezoid
        )
        check = result.check
        check["iteration"][k] = result.start + k
        for name, value in compare_lca(
            a_subset, step.lca["train"], self.layer_index, self.num_layers
        ).items():
            check[name][k] = value
        check["full_loss_change"][k] = there[0] - here[0]
        check["full_error"][k] = step.error["train"]

    def write(self, result: ChunkResult) -> None:
        """Write a unit's own chunks, then (and only then) mark it done.

        A write that fails (disk full, read-only, no permission) raises a one-line
        :class:`~lca.storage.WriteFailed`; the unit stays not done (each chunk is replaced
        atomically, so what was written before is intact) and a rerun recomputes it.
        """
        unit = f"(work unit {result.chunk}, iterations {result.start}–{result.stop - 1})"
        with writing_to(
            f"{self.run_dir / LCA_STORE} {unit}",
            "the units finished before are kept: free space (or fix the permissions) and "
            f"rerun `lca allocate {self.run_dir}` to resume",
        ):
            self._write(result)

    def _open_store(self) -> zarr.Group:
        if self._store is None:
            self._store = open_group(self.run_dir / LCA_STORE, "r+")
        return self._store

    def _write(self, result: ChunkResult) -> None:
        self._open_store()
        T = self.trajectory.num_iterations
        a, b = result.start, result.stop
        # rows a..b-1 of every array belong to this unit's chunk; row T of the (T+1)-row
        # arrays along steps only to the last unit.
        last = b + 1 if b == T else b
        for split, arrays in result.arrays.items():
            group = self._store[split]
            for name, values in arrays.items():
                if name in STEP_ARRAYS:
                    group[name][a:last] = values[: last - a]
                else:
                    group[name][a:b] = values
        for name, values in result.root.items():
            self._store[name][a:b] = values
        if result.check is not None:
            for name, values in result.check.items():
                self._store["subset_check"][name][a:b] = values
        self._store["done"][result.chunk] = True
