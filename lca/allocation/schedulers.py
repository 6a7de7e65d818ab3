"""Who computes which blocks: this process, N worker processes (CPUs or GPUs), or Ray.

Units are handed out dynamically and each writes only its own chunks, then marks itself
done; a rerun skips the done units, so a killed allocation resumes and ends with exactly the
arrays of an uninterrupted run. Every scheduler is a `Scheduler`, called the same way;
`scheduler_for` picks one from the [`Execution`][lca.allocation.schedulers.Execution] options.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import queue
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config import AllocateConfig, note_renamed, quiet_notes
from ..storage import (
    LCA_STORE,
    RunError,
    location,
    open_group,
    open_trajectory,
    read_run_config,
    remove_tree,
    run_lock,
)
from ..storage.base import writing_to
from .backends import FRAMEWORKS, configure, framework_of, visible_gpus
from .blocks import BlockAllocator, BlockResult
from .settings import AllocationSettings, continued_from, resolve_settings
from .store import open_lca_store


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


def blocks_for(num_iterations: int, block: int, iterations: tuple[int, int] | None) -> list[int]:
    """Blocks covering ``iterations`` (a half-open range), rounded out to whole blocks."""
    start, stop = iterations if iterations else (0, num_iterations)
    start, stop = max(0, start), min(num_iterations, stop)
    if start >= stop:
        raise RunError(f"iterations {start}:{stop}: selects no iteration of {num_iterations}")
    return list(range(start // block, math.ceil(stop / block)))


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
        raise RunError(f"execution.gpus {spec!r}: expected a list like 0-3 or 0,2") from None
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise RunError(f"execution.gpus {spec!r}: expected distinct GPU numbers like 0-3 or 0,2")
    return gpus


@dataclass(frozen=True)
class Execution:
    """How an allocation runs, none of which changes its numbers.

    ``gpus`` starts one worker process per listed GPU, each seeing only its GPU; ``workers``
    starts that many CPU worker processes; ``ray`` (``auto``, ``local`` or a cluster address)
    runs each block as a Ray task holding ``gpus_per_task`` GPUs and ``cpus_per_task`` CPUs
    (`lca.allocation.cluster`); by default the work runs in this process. ``threads``
    pins the intra-op threads per worker (bitwise-reproducible results). ``overwrite``
    discards an existing ``lca.zarr`` and starts over.
    """

    workers: int = 1
    gpus: tuple[int, ...] | None = None
    threads: int | None = None
    ray: str | None = None
    gpus_per_task: float = 0.0
    cpus_per_task: float | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.gpus is not None:
            object.__setattr__(self, "gpus", tuple(self.gpus))
        chosen = [self.gpus is not None, self.workers != 1, self.ray is not None]
        if sum(chosen) > 1:
            raise RunError("execution.gpus, execution.workers and execution.ray are exclusive")
        if self.workers < 1:
            raise RunError("execution.workers: must be >= 1")
        if self.ray is None and (self.gpus_per_task or self.cpus_per_task is not None):
            raise RunError("execution.gpus_per_task and execution.cpus_per_task need execution.ray")


#: Names ``lca.allocate`` still takes for an :class:`Execution` option (old: new).
RENAMED_OPTIONS = {"restart": "overwrite"}


class Scheduler(Protocol):
    """Computes the blocks ``blocks`` of a run; yields (iterations, gradient evaluations)
    per finished unit and calls ``on_iteration(halvings)`` for every allocated iteration."""

    def __call__(
        self,
        run_dir: Path,
        blocks: Sequence[int],
        settings: AllocationSettings,
        execution: Execution,
        on_iteration: Callable[[int], None],
    ) -> Iterator[tuple[int, int]]: ...


def scheduler_for(execution: Execution) -> Scheduler:
    """This process, worker processes or Ray: the one place the choice is made."""
    if execution.ray is not None:
        from .cluster import run_on_ray

        return run_on_ray
    if execution.gpus is None and execution.workers <= 1:
        return run_here
    return run_workers


def allocate(
    run_dir: str | Path,
    settings: AllocateConfig | None = None,
    execution: Execution | None = None,
    *,
    iterations: tuple[int, int] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> AllocationSummary:
    """Allocate the loss change of every (selected) iteration of a run; resumable.

    ``settings`` replaces the run's ``allocate`` section whole; ``overrides`` change single
    settings of it (names of [`lca.config.AllocateConfig`][lca.config.schema.AllocateConfig],
    checked as a config file's,
    e.g. ``rule="simpson"``; None leaves a setting as it is) or options of ``execution``
    ([`Execution`][lca.allocation.schedulers.Execution], e.g. ``workers=2``). A resumed allocation
    continues with its store's
    rule, trapezoid threshold, precision, store level, ``store_grad`` and ``causes`` unless
    they are chosen here. ``iterations`` (a half-open range) allocates only those, rounded out
    to whole blocks.

    The run is locked for the whole allocation (``RUN/lca.lock``, `lca.storage.run_lock`):
    a second allocation of the same run raises `lca.storage.RunLocked` naming this one.
    A write that fails (disk full, read-only, no permission) raises
    `lca.storage.WriteFailed`; the units finished before stay done and a rerun resumes.
    """
    chosen, execution = _split_overrides(overrides, execution or Execution())
    run_dir = location(run_dir)
    read_run_config(run_dir)  # a RunError for what is not a run, before a lock is made there
    with run_lock(run_dir, "allocate"):
        return _allocate(run_dir, settings, chosen, execution, iterations, progress)


def _split_overrides(overrides: dict, execution: Execution) -> tuple[dict, Execution]:
    """The settings among ``overrides`` (given ones: not None), and ``execution`` with the
    execution options among them applied."""
    options = {f.name for f in fields(Execution)}
    chosen, changed = {}, {}
    for name, value in overrides.items():
        if name in RENAMED_OPTIONS:
            note_renamed(name, RENAMED_OPTIONS[name])
            name = RENAMED_OPTIONS[name]
        if name in options:
            changed[name] = value
        elif value is not None:
            chosen[name] = value  # checked against AllocateConfig by resolve_settings
    if changed:
        execution = replace(execution, **changed)
    return chosen, execution


def _allocate(
    run_dir: Path,
    base: AllocateConfig | None,
    chosen: dict[str, Any],
    execution: Execution,
    iterations: tuple[int, int] | None,
    progress: bool,
) -> AllocationSummary:
    """``allocate``'s work, with the run locked."""
    from tqdm.auto import tqdm

    config = read_run_config(run_dir)
    trajectory = open_trajectory(run_dir)
    trajectory.require_complete()
    resuming = not execution.overwrite and (run_dir / LCA_STORE).exists()
    made_with = _made_with(run_dir) if resuming else None
    if made_with is not None and base is None:
        chosen = continued_from(made_with, chosen)  # what is not chosen continues as made
    settings = resolve_settings(
        config.allocate if base is None else base,
        trajectory.theta.shape[1],
        num_train=int(trajectory.attrs["num_train"]),
        on_gpu=lambda: _on_gpu(run_dir, execution),
        run=config,
        **chosen,
    )
    if settings.causes:
        from .cause_sums import check_replayable

        check_replayable(run_dir, trajectory)
    with writing_to(
        run_dir / LCA_STORE,
        "nothing was allocated yet: free space (or fix the permissions) and rerun "
        f"`lca allocate {run_dir}`",
        verb="create",
    ):
        if execution.overwrite and (run_dir / LCA_STORE).exists():
            remove_tree(run_dir / LCA_STORE)
        store = open_lca_store(run_dir, trajectory, settings)
    T = trajectory.num_iterations
    c = settings.block_iterations
    wanted = blocks_for(T, c, iterations)
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
    if settings.causes and todo:
        _prepare_causes(run_dir, store, trajectory, config, settings, max(todo), progress)
    bar = tqdm(
        total=sum(size[k] for k in todo),
        desc=f"allocate {run_dir.name}" + (" on Ray" if execution.ray is not None else ""),
        unit="it",
        disable=not progress,
    )

    def on_iteration(halvings: int) -> None:
        summary.halvings += halvings
        bar.update(1)
        bar.set_postfix(halvings=summary.halvings, refresh=False)

    start = time.perf_counter()
    try:
        run = scheduler_for(execution)
        finished = run(run_dir, todo, settings, execution, on_iteration)
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


def _prepare_causes(run_dir, store, trajectory, config, settings, last_block, progress) -> None:
    """Adam/AdamW: replay the optimiser in order up to ``last_block``, keeping its moments at
    every block's start, so that each unit replays only its own steps."""
    from .cause_sums import CauseModel
    from .replay import prepare_adam_states

    model = CauseModel.of_run(config, trajectory.layout_json, trajectory.attrs)
    if model.carries_state:
        c = settings.block_iterations
        with writing_to(run_dir / LCA_STORE, "rerun the same command to resume"):
            prepare_adam_states(run_dir, store, trajectory, model, config, c, last_block, progress)


def _made_with(run_dir: Path) -> dict | None:
    """The settings an existing ``lca.zarr`` was made with; None after removing a store whose
    creation never finished (killed, or its disk full, before it recorded its settings).

    Its settings are the last thing a new store records, and no unit is computed before, so
    such a store holds no work: it is made again. (Called with the run locked, so it cannot
    be a store another allocation is creating right now.)
    """
    path = run_dir / LCA_STORE
    try:
        made_with = open_group(path, "r").attrs.get("settings")
    except RunError:  # not even its group metadata was written
        made_with = None
        if any(path.iterdir()):  # not an empty folder: leave it to the user
            raise
    if made_with is not None:
        return made_with
    warnings.warn(
        f"{path}: its creation was interrupted before it recorded its settings; making it again",
        stacklevel=3,
    )
    remove_tree(path)
    return None


def _on_gpu(run_dir: Path, execution: Execution) -> bool:
    """Whether the allocation will run on GPUs (for ``precision: auto``)."""
    ray = execution.ray
    if execution.gpus is not None or (ray is not None and execution.gpus_per_task > 0):
        return True
    if ray is not None or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return bool(visible_gpus(framework_of(run_dir)))


def run_here(run_dir, blocks, settings, execution, on_iteration):
    """A `Scheduler`: the blocks in this process, each written while the next is
    computed."""
    if execution.threads is not None:
        configure(framework_of(run_dir), execution.threads)
    allocator = BlockAllocator(run_dir, settings)
    try:
        for k in blocks:
            result = allocator.compute(k, on_iteration)
            allocator.submit(result)
            yield result.stop - result.start, result.evaluations
    finally:
        allocator.wait()  # what was computed is written, even on Ctrl-C


def run_workers(run_dir, blocks, settings, execution, on_iteration):
    """A `Scheduler`: blocks handed through a queue to one process per listed GPU
    (``execution.gpus``), or to ``execution.workers`` CPU processes."""
    if execution.gpus is not None:
        devices = [str(g) for g in execution.gpus]
    else:
        devices = [""] * execution.workers
    threads = execution.threads
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for k in blocks:
        tasks.put(k)
    for _ in devices:
        tasks.put(None)
    if threads is None and framework_of(run_dir) == "torch":
        # torch's OpenMP threads spin-wait: workers that together ask for more threads than
        # there are cores slow each other down many times over; share the cores instead
        threads = max(1, (os.cpu_count() or 1) // len(devices))
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
    remaining = len(blocks)
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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet_notes()  # the parent gave them
    try:
        framework = framework_of(run_dir)
        configure(framework, threads)
        if device and not visible_gpus(framework):
            raise RunError(
                f"execution.gpus: GPU {device} is not visible to {FRAMEWORKS[framework]} here"
            )
        allocator = BlockAllocator(run_dir, settings)

        def report(result: BlockResult) -> None:
            results.put(("done", result.stop - result.start, result.evaluations))

        while (chunk := tasks.get()) is not None:
            result = allocator.compute(chunk, lambda n: results.put(("iteration", n)))
            allocator.submit(result, then=report)
        allocator.wait()
    except Exception as exc:  # report to the parent, which stops the others
        from ..config import ConfigError

        if isinstance(exc, (RunError, ConfigError)):  # one-line messages
            results.put(("error", str(exc)))
        else:
            traceback.print_exc()
            results.put(
                (
                    "error",
                    f"worker on device {device or 'cpu'} failed: {exc.__class__.__name__}: {exc}",
                )
            )
