"""Allocate on a Ray cluster: each block of iterations is one Ray task.

The work is the same as on one machine (``BlockAllocator.compute`` then ``.write``); only
the scheduling differs (`run_on_ray` is a `schedulers.Scheduler`). Ray runs the
blocks on *block workers*, actors that each hold a GPU (``gpus_per_task``) or some CPUs
(``cpus_per_task``) and keep the model, the dataset and the compiled gradient function loaded
between blocks, so a block costs its gradients and nothing else. A block is an actor task: if
its process dies, Ray restarts the actor and retries the task; a block counts as done only
once its rows and its ``done`` flag are written, so a cluster run that is interrupted
altogether resumes, like a local one, with the missing blocks.

Every worker reads θ and writes its own chunks directly in the run directory, which must
therefore be on a filesystem that every node sees, or at a URL (``s3://bucket/runs/x``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..storage import RunError, is_remote

#: Times Ray retries a block whose worker died (then the run stops; rerun to resume).
TASK_RETRIES = 3


class _BlockWorker:
    """One Ray actor: an allocator bound to its GPU or CPUs, reused for many blocks."""

    def __init__(self, run_dir: str, settings: Any, threads: int | None) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from ..config import quiet_notes
        from .backends import configure, framework_of
        from .blocks import BlockAllocator

        quiet_notes()  # the driver gave them
        self.where = socket.gethostname()
        try:
            configure(framework_of(run_dir), threads)
            self.allocator = BlockAllocator(run_dir, settings)
        except RunError as exc:
            raise RunError(
                f"on node {self.where}: {exc} (is the run directory on a filesystem every "
                "node sees, or at a URL such as s3://…?)"
            ) from None

    def run(self, block: int) -> tuple[int, int, list[int]]:
        """Compute and write one block: (iterations, gradient evaluations, halvings of each)."""
        halvings: list[int] = []
        result = self.allocator.compute(block, halvings.append)
        self.allocator.write(result)
        return result.stop - result.start, result.evaluations, halvings


def connect(address: str) -> Any:
    """Join the Ray cluster at ``address`` (``auto``: the one this node belongs to;
    ``local``: a new one on this machine), unless this process is already connected."""
    try:
        import ray
    except ImportError:
        raise RunError("execution.ray needs Ray: pip install 'lca[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(
                address=None if address == "local" else address,
                include_dashboard=False,
                log_to_driver=True,
                configure_logging=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(f"execution.ray {address}: cannot reach the cluster ({first})") from None
    return ray


def worker_count(
    nodes: Sequence[dict[str, float]], gpus_per_task: float, cpus_per_task: float, chunks: int
) -> int:
    """How many block workers the cluster's nodes hold at once (at most ``chunks`` blocks).

    A worker lives on one node, so each node counts for what fits in it; a task that fits
    in no node would wait forever, so that is an error instead.
    """
    fit = 0
    for resources in nodes:
        on_node = resources.get("CPU", 0.0) // cpus_per_task
        if gpus_per_task > 0:
            on_node = min(on_node, resources.get("GPU", 0.0) // gpus_per_task)
        fit += int(on_node)
    if fit == 0:
        raise RunError(
            f"execution.cpus_per_task {cpus_per_task:g}, execution.gpus_per_task "
            f"{gpus_per_task:g}: no node of "
            "the Ray cluster has that many CPUs and GPUs"
        )
    return min(fit, chunks)


def run_on_ray(
    run_dir,
    blocks: Sequence[int],
    settings,
    execution,
    on_iteration: Callable[[int], None],
) -> Iterator[tuple[int, int]]:
    """A `schedulers.Scheduler`: the blocks ``blocks`` on the Ray cluster at
    ``execution.ray``; yield (iterations, evaluations) per block.

    Each worker runs TensorFlow on ``execution.threads`` threads, by default as many as its CPUs.
    """
    ray = connect(execution.ray)
    gpus_per_task = execution.gpus_per_task
    cpus_per_task = 1 if execution.cpus_per_task is None else execution.cpus_per_task
    threads = execution.threads or max(1, int(cpus_per_task))
    where = str(run_dir) if is_remote(run_dir) else str(run_dir.resolve())
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    count = worker_count(nodes, gpus_per_task, cpus_per_task, len(blocks))
    actor = ray.remote(
        num_cpus=cpus_per_task,
        num_gpus=gpus_per_task,
        max_restarts=-1,
        max_task_retries=TASK_RETRIES,
        runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}},
    )(_BlockWorker)
    workers = [actor.remote(where, settings, threads) for _ in range(count)]
    pending = list(blocks)
    running: dict[Any, Any] = {}

    def feed(worker) -> None:
        if pending:
            running[worker.run.remote(pending.pop(0))] = worker

    try:
        for worker in workers:  # two blocks queued per worker: no idle gap between blocks
            feed(worker)
            feed(worker)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            worker = running.pop(ready[0])
            try:
                iterations, evaluations, halvings = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                raise RunError(_one_line_ray_error(exc)) from None
            for n in halvings:
                on_iteration(n)
            yield iterations, evaluations
            feed(worker)
    finally:
        for worker in workers:
            ray.kill(worker)


def _one_line_ray_error(exc: BaseException) -> str:
    """The root cause of a failed Ray task, as one line, with how to resume."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, RunError):
        return str(cause)
    text = str(cause).strip().splitlines()
    for line in reversed(text):  # a worker's RunError, wrapped by Ray in a traceback
        if "RunError: " in line:
            return line.split("RunError: ", 1)[1].strip()
    message = text[-1] if text else type(cause).__name__
    return (
        f"a Ray block worker failed ({type(cause).__name__}: {message}); "
        "rerun the same command to resume from the finished blocks"
    )
