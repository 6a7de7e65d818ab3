"""Who computes which work units: this process, N worker processes (CPUs or GPUs), or Ray.

Units are handed out dynamically and each writes only its own chunks, then marks itself
done; a rerun skips the done units, so a killed allocation resumes and ends with exactly the
arrays of an uninterrupted run.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
from .chunks import ChunkAllocator, ChunkResult
from .settings import resolve_settings
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


def chunks_for(num_iterations: int, chunk: int, iterations: tuple[int, int] | None) -> list[int]:
    """Work units covering ``iterations`` (a half-open range), rounded out to whole chunks."""
    start, stop = iterations if iterations else (0, num_iterations)
    start, stop = max(0, start), min(num_iterations, stop)
    if start >= stop:
        raise RunError(f"--iterations {start}:{stop} selects no iteration of {num_iterations}")
    return list(range(start // chunk, math.ceil(stop / chunk)))


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
    rule: str | None = None,
    trapezoid_threshold: float | None = None,
    precision: str | None = None,
    store: str | None = None,
    store_grad: bool | None = None,
    causes: bool | None = None,
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
    (see ``lca.allocation.cluster``); by default the work runs in this process. ``threads`` pins
    TensorFlow's intra-op threads per worker (bitwise-reproducible results). ``rule``,
    ``trapezoid_threshold`` and ``precision`` override the run's ``allocate`` settings, and
    so do ``store`` (what is kept per iteration: ``parameters``, ``units``, ``layers``) and
    ``store_grad``; a resumed allocation continues with its store's choices of all five.
    ``causes`` also splits every LCA by the terms of the optimiser's step
    (:mod:`lca.allocation.cause_sums`); a store made without them is not resumed with them.

    The run is locked for the whole allocation (``RUN/lca.lock``, :func:`lca.storage.run_lock`):
    a second allocation of the same run raises :class:`lca.storage.RunLocked` naming this one.
    A write that fails (disk full, read-only, no permission) raises
    :class:`lca.storage.WriteFailed`; the units finished before stay done and a rerun resumes.
    """
    run_dir = location(run_dir)
    read_run_config(run_dir)  # a RunError for what is not a run, before a lock is made there
    with run_lock(run_dir, "allocate"):
        return _allocate(run_dir, **{k: v for k, v in locals().items() if k != "run_dir"})


def _allocate(
    run_dir: Path,
    *,
    splits,
    threshold,
    max_splits,
    subset_size,
    check_every,
    per_class,
    rule,
    trapezoid_threshold,
    precision,
    store,
    store_grad,
    causes,
    iterations,
    workers,
    gpus,
    threads,
    ray,
    gpus_per_task,
    cpus_per_task,
    restart,
    progress,
) -> AllocationSummary:
    """``allocate``'s work, with the run locked."""
    from tqdm.auto import tqdm

    config = read_run_config(run_dir)
    trajectory = open_trajectory(run_dir)
    trajectory.require_complete()
    K = trajectory.theta.shape[1]
    if per_class and not config.model.classification:
        raise RunError(f"--per-class: needs a classification loss, not {config.model.loss}")
    resuming = not restart and (run_dir / LCA_STORE).exists()
    made_with = _made_with(run_dir) if resuming else None
    if made_with is not None:
        # resuming: what is not chosen explicitly continues as the store was made
        rule = rule or made_with.get("rule", "simpson")
        if trapezoid_threshold is None and rule == made_with.get("rule", "simpson"):
            trapezoid_threshold = made_with.get("trapezoid_threshold")
        precision = precision or made_with.get("precision", "float32")
        store = store or made_with.get("store", "parameters")
        store_grad = made_with.get("store_grad", True) if store_grad is None else store_grad
        causes = made_with.get("causes", False) if causes is None else causes
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
        rule=rule,
        trapezoid_threshold=trapezoid_threshold,
        precision=precision,
        store=store,
        store_grad=store_grad,
        causes=causes,
        on_gpu=lambda: _on_gpu(run_dir, gpus, ray, gpus_per_task),
        framework=config.framework,
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
    if settings.causes and todo:
        _prepare_causes(run_dir, store, trajectory, config, settings, max(todo), progress)
    bar = tqdm(
        total=sum(size[k] for k in todo),
        desc=f"allocate {run_dir.name}",
        unit="it",
        disable=not progress,
    )

    def on_iteration(halvings: int) -> None:
        summary.halvings += halvings
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


def _prepare_causes(run_dir, store, trajectory, config, settings, last_unit, progress) -> None:
    """Adam/AdamW: replay the optimiser in order up to ``last_unit``, keeping its moments at
    every work unit's start, so that each unit replays only its own steps."""
    from .cause_sums import CauseModel
    from .replay import prepare_adam_states

    model = CauseModel.of_run(config, trajectory.layout_json, trajectory.attrs)
    if model.carries_state:
        c = settings.chunk_iterations
        with writing_to(run_dir / LCA_STORE, "rerun the same command to resume"):
            prepare_adam_states(run_dir, store, trajectory, model, config, c, last_unit, progress)


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


def _on_gpu(run_dir, gpus, ray, gpus_per_task) -> bool:
    """Whether the allocation will run on GPUs (for ``precision: auto``)."""
    if gpus is not None or (ray is not None and gpus_per_task > 0):
        return True
    if ray is not None or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return bool(visible_gpus(framework_of(run_dir)))


def _run_here(run_dir, settings, todo, threads, on_iteration):
    """Compute the work units in this process, writing each while the next is computed."""
    if threads is not None:
        configure(framework_of(run_dir), threads)
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
        framework = framework_of(run_dir)
        configure(framework, threads)
        if device and not visible_gpus(framework):
            raise RunError(f"--gpus: GPU {device} is not visible to {FRAMEWORKS[framework]} here")
        allocator = ChunkAllocator(run_dir, settings)

        def report(result: ChunkResult) -> None:
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
