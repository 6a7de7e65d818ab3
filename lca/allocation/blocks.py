"""One block: replay its stretch of the trajectory and allocate every iteration in it.

A block (``allocate.block_iterations`` consecutive iterations, one Zarr chunk of every array
along iterations) computes the gradient at its first θ once, then walks its iterations,
reusing every endpoint gradient as the next start; its arrays (their rows as the table of
`lca.storage.lca_arrays` says) are written in the background only after the whole block
is computed, and the block is marked done last.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..layout import GroupSums, LevelSums
from ..quadrature import ClassLossAndGradient, LossAndGradient, integrate_step
from ..storage import (
    LCA_STORE,
    RunError,
    location,
    open_group,
    open_trajectory,
    read_run_config,
)
from ..storage.base import writing_to
from ..storage.lca_arrays import block_buffers, block_rows, spec
from .backends import load_objective
from .settings import AllocationSettings, subset_indices
from .store import store_sizes


@dataclass
class BlockResult:
    """What one block computed, before it is written: rows of arrays named as in the store."""

    block: int
    start: int
    stop: int
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # per split
    halvings: int = 0
    evaluations: int = 0
    fallbacks: int = 0  # iterations recomputed in float32 (reduced precision only)
    root: dict[str, np.ndarray] = field(default_factory=dict)  # lca.zarr/<name> (causes, check)


def compare_lca(
    a_subset: np.ndarray, a_full: np.ndarray, layer_index: np.ndarray, num_layers: int
) -> dict[str, np.ndarray | float]:
    """How far one iteration's subset LCA is from its full-set LCA, per layer and overall."""
    sub = np.asarray(a_subset, dtype=np.float64)
    full = np.asarray(a_full, dtype=np.float64)
    layer_sub, layer_full = GroupSums(layer_index, num_layers).in_order(np.stack([sub, full]))
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


class BlockAllocator:
    """Everything a worker needs to allocate blocks: data, compiled objective, stores."""

    def __init__(self, run_dir: str | Path, settings: AllocationSettings) -> None:
        self.run_dir = location(run_dir)
        self.settings = settings
        self.trajectory = open_trajectory(run_dir)
        options = dict(
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
        self.sums = LevelSums.from_layout(self.trajectory.layout_json)  # allocate.store
        self.num_layers = len(self.sums.layers)
        self._exact = None  # the float32 objective, for reduced-precision fall-backs
        self.causes = None  # allocate.causes: the optimiser's terms of every step
        if settings.causes:
            from .replay import CauseReplay

            self.causes = CauseReplay(run_dir, self.trajectory, read_run_config(run_dir))
        model = self.causes.model if self.causes is not None else None
        self.sizes = store_sizes(settings, self.trajectory, model)
        self._store: zarr.Group | None = None
        # Blocks are compressed and written by one background thread while the next block's
        # gradients are computed; at most one written block is pending at a time.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lca-writer")
        self._pending: Future | None = None

    def submit(self, result: BlockResult, then: Callable[[BlockResult], None] | None = None):
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

    def compute(self, block: int, on_iteration: Callable[[int], None] | None = None) -> BlockResult:
        """Allocate the iterations of block ``block`` (nothing is written here).

        Every iteration's float32 LCA row is kept until the block is done; then the store
        level (``allocate.store``) decides what of it is written: the rows, or their sums.
        """
        T = self.trajectory.num_iterations
        c = self.settings.block_iterations
        start, stop = block * c, min(block * c + c, T)
        thetas = self.trajectory.theta[start : stop + 1]
        if not np.isfinite(thetas).all():
            raise RunError(f"{self.run_dir}: θ between steps {start} and {stop} is not finite")
        splits = self.settings.splits
        n = stop - start
        out = {s: block_buffers(self.sizes, n, "split", "quadrature") for s in splits}
        lca = {s: np.empty((n, thetas.shape[1]), spec("lca").dtype) for s in splits}
        result = BlockResult(block, start, stop, out)
        causes = None
        if self.causes is not None:
            store = self._open_store()
            causes = self.causes.block(store, block, start, n, splits, self.settings.store)
        here = self.objective(thetas[0])
        evaluations_before = self.objective.evaluations
        per_class = self.settings.per_class
        for s in splits:
            out[s]["loss"][0] = here[s].loss
            if "grad" in out[s]:
                out[s]["grad"][0] = here[s].gradient
            if per_class:
                out[s]["class_loss"][0] = here[s].class_loss

        def nodes(values):  # what the quadrature integrates at one point
            found = {s: values[s].gradient for s in splits}
            found.update({f"{s}/class": values[s].class_gradient for s in splits if per_class})
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
                lca[s][k] = step.lca[s]
                out[s]["loss"][k + 1] = there[s].loss
                if "grad" in out[s]:
                    out[s]["grad"][k + 1] = there[s].gradient
                if per_class:
                    self._per_class(out[s], k, step.components[f"{s}/class"], here[s], there[s])
                out[s]["intervals"][k] = step.intervals
                out[s]["error"][k] = step.error[s]
                out[s]["error_fo"][k] = step.error_first_order[s]
                if "fallback" in out[s]:
                    out[s]["fallback"][k] = fallback
            result.halvings += step.halvings
            if causes is not None:
                self._add_causes(causes, k, thetas, start_values, step)
            if self.settings.checked(start + k):
                self._check(result, k, thetas[k], thetas[k + 1], step.intervals, lca["train"][k])
            here = there
            if on_iteration is not None:
                on_iteration(step.halvings)
        result.evaluations += self.objective.evaluations - evaluations_before + 1
        for s in splits:  # the float32 rows, as stored, are what the sums add up
            out[s].update(self.sums.arrays(lca[s], self.settings.store))
        if causes is not None:
            for s, arrays in causes.arrays().items():
                out[s].update(arrays)
            result.root["replay_residual"] = causes.residual
        return result

    def _add_causes(
        self, causes, k: int, thetas, start_values: dict[str, LossAndGradient], step
    ) -> None:
        """Row k of the block's cause sums: the step's terms and every split's shares."""
        t = causes.start + k
        batch_grad = None
        if self.causes.batch_gradient is not None:
            batch_grad = self.causes.batch_gradient(t, thetas[k])
        # what the optimiser followed: the train split's gradient
        train_grad = start_values["train"].gradient
        terms = causes.terms(k, thetas[k], thetas[k + 1], train_grad, batch_grad)
        grads = {s: start_values[s].gradient for s in self.settings.splits}
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
            {s: there[s].loss - here[s].loss for s in splits},
            nodes(here),
            nodes(there),
            threshold=self.settings.threshold,
            max_intervals=self.settings.max_intervals,
            rule=self.settings.rule,
            trapezoid_threshold=self.settings.trapezoid_threshold,
            components=tuple(f"{s}/class" for s in splits) if self.settings.per_class else (),
            stop_when_stalled=self.settings.reduced_precision if reduced is None else reduced,
        )

    def exact_objective(self):
        """The float32 objective for fall-backs, built on first use from the same data."""
        if self._exact is None:
            self._exact = self.objective.with_precision("float32")
        return self._exact

    def _per_class(
        self,
        out: dict,
        k: int,
        lca: np.ndarray,
        here: ClassLossAndGradient,
        there: ClassLossAndGradient,
    ) -> None:
        """Row k of the per-class arrays from the (C, K) per-class LCA of one iteration."""
        out["class_loss"][k + 1] = there.class_loss
        out["class_error"][k] = (there.class_loss - here.class_loss) - lca.sum(
            axis=1, dtype=np.float64
        )
        out["class_layer_lca"][k] = self.sums.layer_rows(lca)
        for layer in self.sums.units:
            out[f"class_unit_lca/{layer}"][k] = self.sums.unit_rows(lca, layer)
        if "class_lca" in out:
            out["class_lca"][k] = lca

    def _check(self, result: BlockResult, k: int, theta0, theta1, n: int, a_subset) -> None:
        """Full-set LCA of row ``k`` by the subset's rule on its n sub-intervals; compare.

        Using the subset's n (not an adaptive rule of its own) keeps the two LCAs on the same
        quadrature, so their difference is the subset's sampling error alone; the full set's
        own conservation error is stored beside it as ``full_error``.
        """
        objective = self.full_objective
        if "subset_check/iteration" not in result.root:
            rows = result.stop - result.start
            result.root.update(block_buffers(self.sizes, rows, "root", "check"))
        here, there = objective(theta0)["train"], objective(theta1)["train"]
        delta = theta1.astype(np.float64) - theta0
        step = integrate_step(
            lambda fraction: {
                "train": objective.between(theta0, theta1, fraction)["train"].gradient
            },
            delta,
            {"train": there.loss - here.loss},
            {"train": here.gradient},
            {"train": there.gradient},
            threshold=0.0,  # never accept early: refine up to exactly n sub-intervals
            max_intervals=n,
            rule="adaptive" if n == 1 else "simpson",  # n = 1: the trapezoid
        )
        check = result.root
        check["subset_check/iteration"][k] = result.start + k
        for name, value in compare_lca(
            a_subset, step.lca["train"], self.sums.layer_index, self.num_layers
        ).items():
            check[f"subset_check/{name}"][k] = value
        check["subset_check/full_loss_change"][k] = there.loss - here.loss
        check["subset_check/full_error"][k] = step.error["train"]

    def write(self, result: BlockResult) -> None:
        """Write a block's own chunks, then (and only then) mark it done.

        A write that fails (disk full, read-only, no permission) raises a one-line
        `WriteFailed`; the block stays not done (each chunk is replaced
        atomically, so what was written before is intact) and a rerun recomputes it.
        """
        block = f"(block {result.block}, iterations {result.start}–{result.stop - 1})"
        with writing_to(
            f"{self.run_dir / LCA_STORE} {block}",
            "the blocks finished before are kept: free space (or fix the permissions) and "
            f"rerun `lca allocate {self.run_dir}` to resume",
        ):
            self._write(result)

    def _open_store(self) -> zarr.Group:
        if self._store is None:
            self._store = open_group(self.run_dir / LCA_STORE, "r+")
        return self._store

    def _write(self, result: BlockResult) -> None:
        """Every array's rows of the block (`block_rows`)."""
        store = self._open_store()
        T = self.trajectory.num_iterations

        def write(group: zarr.Group, name: str, values: np.ndarray) -> None:
            rows = block_rows(spec(name).per, result.start, result.stop, T, result.block)
            group[name][rows] = values[: rows.stop - rows.start]

        for split, arrays in result.arrays.items():
            for name, values in arrays.items():
                write(store[split], name, values)
        for name, values in result.root.items():
            write(store, name, values)
        store["done"][result.block] = True
