"""``trajectory.zarr``: the stored θ of a training run, written by ``lca train``, a recorder or
``lca import`` through `TrajectoryWriter`, with the trajectory's metadata (`trajectory_attrs`),
the ``steps`` array of θ stored every k steps, and a model's non-trainable weights.

Reading a store back is `lca.storage.trajectory_read`'s job; its names import from here too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .base import (
    TRAJECTORY_STORE,
    RunError,
    WriteFailed,
    _json_safe,
    location,
    os_error_cause,
    rows_per_chunk,
)
from .checkpoint import (
    METRICS,
    Checkpoint,
    Packer,
    commit_attrs,
    discard_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from .groups import checksummed, open_group
from .raw_chunks import write_whole_raw_chunk
from .trajectory_read import (  # noqa: F401 (the read side's names are re-exported)
    FIXED_WEIGHTS_GROUP,
    IMPORTED_BY,
    STEPS_ARRAY,
    RecordedBatches,
    Trajectory,
    open_trajectory,
    read_fixed_weights,
    refuse_existing_recording,
    refuse_segments,
    segment_attrs,
    segment_note,
    stored_steps,
)


def trajectory_attrs(
    name: str, layout, seed: int, dataset, *, recorded_by: str, versions: dict[str, str]
) -> dict:
    """The trajectory's metadata: what ``lca allocate`` and the analyses read back.

    ``versions``: the framework's packages (``{"torch": "2.13.0"}``); lca's, numpy's and
    Python's are added here.
    """
    import platform

    from .._version import __version__

    return {
        "config_name": name,
        "layout": layout.to_json(),
        "seed": seed,
        "dataset": dataset.name,
        "input_shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes,
        "num_train": len(dataset.y_train),
        "num_val": len(dataset.y_val),
        "recorded_by": recorded_by,
        "versions": {
            "lca": __version__,
            **versions,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


class TrajectoryWriter:
    """Buffered, asynchronous writer of θ rows: training never waits for the disk.

    Rows are collected into a chunk-sized buffer; a full buffer is handed to a background
    thread that writes it while training goes on. ``steps_recorded`` in the attributes only
    counts rows whose write has finished, so a killed run stays readable up to there.

    With ``snapshot`` (a function returning the training state as ``(name, array)`` pairs),
    every full θ chunk except the last is followed by a resume checkpoint matching its last
    row (`lca.storage.checkpoint`); `reopen` continues such a store. A write that
    fails (disk full, read-only, no permission) surfaces as a one-line
    `WriteFailed` at the next ``append`` or at ``close``; from then on nothing more
    is written, so the last committed checkpoint stays the one a rerun resumes from.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        num_iterations: int,
        num_params: int,
        batch_size: int | None,
        train_indices: np.ndarray,
        val_indices: np.ndarray,
        attrs: dict[str, Any],
        rows: int | None = None,
        snapshot: Callable[[], list[tuple[str, np.ndarray]]] | None = None,
        steps: np.ndarray | None = None,
    ) -> None:
        """``steps``: the optimizer step of each θ row to come, for θ stored every k steps
        (``num_iterations`` is then the number of segments, ``len(steps) - 1``); None: θ of
        every step, and no ``steps`` array is written."""
        self.path = location(run_dir) / TRAJECTORY_STORE
        self.snapshot = snapshot
        self._committed = self._steps = 0  # steps of the last checkpoint (0: none), of θ rows
        self._broken: BaseException | None = None
        rows = rows or rows_per_chunk(num_params)
        with self.writing():
            group = open_group(self.path, "w")
            group.attrs.update(
                {
                    **_json_safe(attrs),
                    "num_iterations": num_iterations,
                    "steps_recorded": 0,
                    "complete": False,
                    "status": "training",
                }
            )
            group.create_array(
                "theta",
                shape=(num_iterations + 1, num_params),
                chunks=(rows, num_params),
                dtype="float32",
                dimension_names=("step", "parameter"),
                compressors=checksummed(compress=False),
                # Zarr would otherwise compare every chunk with the fill value before writing
                # it (to skip empty ones): a full extra pass that doubled the writer's CPU time.
                config={"write_empty_chunks": True},
            )
            # Metric chunks hold as many iterations as a θ chunk holds steps, and are written
            # only whole: no chunk is read back, decompressed and rewritten while training runs.
            metric = {"chunks": (rows,), "dimension_names": ("iteration",)}
            # val_accuracy: of θ after the update, at the iterations training evaluates it
            for name in ("loss", "accuracy", "val_accuracy"):
                group.create_array(
                    name,
                    shape=(num_iterations,),
                    dtype="float64",
                    fill_value=np.nan,
                    **metric,
                    compressors=checksummed(),
                )
            if batch_size is not None:  # None: full-batch steps, every example every time
                group.create_array(
                    "batch_indices",
                    shape=(num_iterations, batch_size),
                    chunks=(rows, batch_size),
                    dtype="int64",
                    dimension_names=("iteration", "batch_position"),
                    compressors=checksummed(),
                )
            if steps is not None:
                write_steps(group, steps, num_iterations)
            for name, values in (("train_indices", train_indices), ("val_indices", val_indices)):
                arr = group.create_array(
                    name,
                    shape=values.shape,
                    dtype="int64",
                    dimension_names=(name.replace("_indices", "_example"),),
                    compressors=checksummed(),
                )
                arr[:] = values
        self._start(group)

    @classmethod
    def reopen(
        cls, run_dir: str | Path, *, snapshot: Callable[[], list[tuple[str, np.ndarray]]]
    ) -> tuple[TrajectoryWriter, Checkpoint]:
        """Continue a store from its last checkpoint (the caller restores the state it returns).

        The buffers are refilled as they were when the checkpoint was taken: θ goes on at row
        ``steps``, and the metric rows of the chunk being filled are put back, so every chunk
        written from here on is byte for byte what an uninterrupted run writes.
        """
        self = cls.__new__(cls)
        self.path = location(run_dir) / TRAJECTORY_STORE
        self.snapshot = snapshot
        self._committed, self._steps = -1, 0  # -1: the checkpoint is not read yet
        self._broken = None
        with self.writing():
            group = open_group(self.path, "r+")
        found = read_checkpoint(group)
        if found is None:
            raise RunError(f"{self.path}: no resume checkpoint was written; start it over")
        checkpoint, slot = found
        self._start(group)
        self._slot, self._committed = slot, checkpoint.steps
        self._steps = checkpoint.steps
        self._theta_rows.start = checkpoint.steps
        self._metric_rows.restore(checkpoint.metric_start, checkpoint.metrics)
        resumed = [*group.attrs.get("resumed_at", []), checkpoint.steps]
        with self.writing():  # rows after the checkpoint are rewritten: not counted any more
            group.update_attributes(
                {
                    "steps_recorded": checkpoint.steps,
                    "status": "training",
                    "complete": False,
                    "resumed_at": resumed,
                }
            )
        return self, checkpoint

    def _start(self, group: zarr.Group) -> None:
        self.group = group
        self.theta = group["theta"]
        self.num_steps = int(group.attrs["num_iterations"]) + 1
        self.rows = self.theta.chunks[0]
        self._theta_rows = _RowBuffer({"theta": self.theta}, self.rows)
        # the metrics this store has (stores made before val_accuracy lack it)
        self._metric_rows = _RowBuffer(
            {name: group[name] for name in METRICS if name in group}, self.rows
        )
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="lca-writer", initializer=_lower_priority
        )
        self._pending: list[Future] = []
        self._packer: Packer | None = None
        self._slot: int | None = None  # the committed checkpoint's slot (writer thread only)
        self._steps = 0  # θ rows written (writer thread only)
        self._broken: BaseException | None = None  # the first failed write: stop writing

    # --- main thread --------------------------------------------------------------------

    def append(
        self,
        theta: np.ndarray | Sequence[np.ndarray],
        metrics: dict[str, Any] | None,
    ) -> None:
        """Record θ of the next step, with the metrics of the update before it.

        ``metrics``: ``loss`` and ``accuracy`` of the batch, ``batch_indices`` (mini-batch
        runs), ``val_accuracy`` of θ after the update (NaN or absent where not evaluated).

        ``theta`` is the flat vector or the list of per-variable arrays in layout order (then
        each is copied straight into place: no concatenated copy is ever made).
        """
        if not isinstance(theta, np.ndarray):
            theta = _Parts(theta)
        theta_full = self._theta_rows.append({"theta": theta})
        if metrics is not None:
            values = {name: metrics.get(name, np.nan) for name in self._metric_rows.arrays}
            if self._metric_rows.append(values):
                self._submit(self._write_rows, self._metric_rows, *self._metric_rows.take())
        # after the metrics: the checkpoint holds this update's metric row, and its chunk is
        # queued behind every metric chunk before it (one writer thread, in order)
        if theta_full:
            self._submit_theta(checkpoint=self.snapshot is not None)

    def _submit_theta(self, checkpoint: bool) -> None:
        start, rows = self._theta_rows.take()
        if rows is None:
            return
        saved = None
        if checkpoint and start + self.rows < self.num_steps:  # the last chunk needs none
            state = self.snapshot()
            if self._packer is None:
                self._packer = Packer(state, self._metric_rows.data)
            pending = self._metric_rows.pending()
            blob = self._packer.pack(state, pending)
            saved = (blob, self._metric_rows.start, self._metric_rows.filled)
        self._submit(self._write_theta, start, rows, saved)

    def _submit(self, fn: Callable, *args) -> None:
        """Hand a write to the writer thread; wait only if it is still behind."""
        if self._broken is not None:
            self._raise_failure()
        for finished in [f for f in self._pending if f.done()]:
            self._pending.remove(finished)
            self._result(finished)  # a failed write raises here, in the training loop
        if len(self._pending) > 2:  # bound the memory held by unwritten buffers
            self._result(self._pending.pop(0))
        self._pending.append(self._pool.submit(fn, *args))

    def _result(self, future: Future) -> None:
        try:
            future.result()
        except OSError:
            self._raise_failure()

    def _raise_failure(self) -> None:
        exc = self._broken
        if not isinstance(exc, OSError):
            raise exc  # not the disk's fault: a bug, with its traceback
        if self.snapshot is None:
            kept = f"θ_0..θ_{self._steps - 1} stay readable" if self._steps else "nothing kept"
        elif self._committed > 0:
            kept = f"rerun the same command to resume from step {self._committed}"
        elif self._committed == 0:
            kept = "no checkpoint was written yet: a rerun starts over"
        else:
            kept = "the run is left as it was"
        cause = os_error_cause(exc)
        raise WriteFailed(f"cannot write {self.path}: {cause}; {kept}") from exc

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turn an OSError of a write in this block into a one-line WriteFailed."""
        try:
            yield
        except OSError as exc:
            self._broken = exc
            self._raise_failure()

    def close(self, status: str = "complete", attrs: dict[str, Any] | None = None) -> int:
        """Flush every buffered row; mark the trajectory complete only on success.

        Raises WriteFailed if any write failed, having then written nothing more (not
        even the status): the store stays as the last successful write left it.
        """
        try:
            if self._broken is None:
                self._submit_theta(checkpoint=False)
                self._submit(self._write_rows, self._metric_rows, *self._metric_rows.take())
            for future in self._pending:
                self._result(future)
        finally:
            self._pool.shutdown()
        if self._broken is not None:
            self._raise_failure()
        complete = status == "complete" and self._steps == self.num_steps
        with self.writing():
            self.group.update_attributes(
                {**_json_safe(attrs or {}), "status": status, "complete": complete}
            )
        if complete:
            discard_checkpoints(self.group)
        return self._steps

    def abort(self, status: str) -> int:
        """Close after an error elsewhere: keep what can be kept, never mask that error."""
        with contextlib.suppress(Exception):  # a second failure: the first one is reported
            self.close(status)
        return self._steps

    # --- writer thread ------------------------------------------------------------------

    def _write_rows(self, buffer: _RowBuffer, start: int, rows: dict | None) -> None:
        if self._broken is not None or rows is None:
            return  # after a failure nothing is written: the last checkpoint stays valid
        try:
            buffer.write(start, rows)
        except BaseException as exc:
            self._broken = exc
            raise

    def _write_theta(self, start: int, rows: dict, saved: tuple | None) -> None:
        if self._broken is not None:
            return
        try:
            stop = self._theta_rows.write(start, rows)
            attrs: dict[str, Any] = {"steps_recorded": stop}
            if saved is not None:
                blob, metric_start, metric_rows = saved
                first = self._slot is None
                slot = 0 if first else 1 - self._slot
                write_checkpoint(self.group, self._packer, slot, blob, both=first)
                attrs = commit_attrs(stop, slot, metric_start, metric_rows)
            self.group.update_attributes(attrs)  # one metadata write: steps and checkpoint
            self._steps = stop
            if saved is not None:
                self._slot, self._committed = slot, stop
        except BaseException as exc:
            self._broken = exc
            raise


def _lower_priority() -> None:
    """Let the writer thread yield the cores to training (Linux: niceness is per thread)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


@dataclass
class _Parts:
    """A row given as consecutive pieces (per-variable arrays of θ)."""

    arrays: Sequence[np.ndarray]


class _RowBuffer:
    """Rows collected for a set of arrays sharing a first axis, handed over a chunk at a time."""

    def __init__(self, arrays: dict[str, zarr.Array], rows: int) -> None:
        self.arrays = arrays
        self.rows = rows
        self.start = 0
        self.filled = 0
        self._new()

    def _new(self) -> None:
        # each buffer keeps 4 spare bytes after its rows, where a whole chunk's crc32c goes:
        # the checksummed chunk is then written with no copy (write_whole_raw_chunk)
        self.data = {}
        for name, arr in self.arrays.items():
            shape = (self.rows, *arr.shape[1:])
            nbytes = int(np.prod(shape)) * arr.dtype.itemsize
            backing = np.empty(nbytes + 4, np.uint8)
            self.data[name] = backing[:nbytes].view(arr.dtype).reshape(shape)

    def append(self, values: dict[str, Any]) -> bool:
        """Add one row; True when the buffer is full."""
        for name, value in values.items():
            if isinstance(value, _Parts):
                row, offset = self.data[name][self.filled], 0
                for part in value.arrays:
                    row[offset : offset + part.size] = part.reshape(-1)
                    offset += part.size
            else:
                self.data[name][self.filled] = value
        self.filled += 1
        return self.filled == self.rows

    def pending(self) -> dict[str, np.ndarray]:
        """The rows collected so far (views: copy them before the buffer fills further)."""
        return {k: v[: self.filled] for k, v in self.data.items()}

    def restore(self, start: int, rows: dict[str, np.ndarray]) -> None:
        """Put back the rows a checkpoint saved: the buffer continues as it was then."""
        self.start = start
        self.filled = len(next(iter(rows.values()))) if rows else 0
        for name, values in rows.items():
            self.data[name][: self.filled] = values

    def take(self) -> tuple[int, dict[str, np.ndarray] | None]:
        if self.filled == 0:
            return self.start, None
        start, rows = self.start, {k: v[: self.filled] for k, v in self.data.items()}
        self.start += self.filled
        self.filled = 0
        self._new()
        return start, rows

    def write(self, start: int, rows: dict[str, np.ndarray]) -> int:
        stop = start
        for name, values in rows.items():
            stop = start + len(values)
            if not write_whole_raw_chunk(self.arrays[name], start, values):
                self.arrays[name][start:stop] = values
        return stop


def write_steps(group: zarr.Group, steps: np.ndarray, iterations: int | None = None) -> None:
    """Store (or replace) the optimizer step of every θ row, with the segment attributes.

    ``iterations``: the number of segments the store was made for (``len(steps) - 1``).
    """
    steps = np.asarray(steps, np.int64)
    if iterations is not None and len(steps) != iterations + 1:
        raise ValueError(f"{len(steps)} stored steps for {iterations} segments")
    if STEPS_ARRAY in group:
        del group[STEPS_ARRAY]
    group.create_array(
        STEPS_ARRAY,
        shape=steps.shape,
        dtype="int64",
        dimension_names=("step",),
        compressors=checksummed(),
    )[:] = steps
    group.attrs.update(segment_attrs(steps, int(steps[-1]) if len(steps) else 0))


def shorten_recording(group: zarr.Group, rows: int, steps: Sequence[int] | None = None) -> None:
    """Cut a complete recording that stopped early down to its ``rows`` θ rows.

    ``steps``: the optimizer step of each of those rows, for θ stored every k steps.
    """
    iterations = rows - 1
    group["theta"].resize((rows, group["theta"].shape[1]))
    for name in ("loss", "accuracy", "val_accuracy"):
        if name in group:
            group[name].resize((iterations,))
    if "batch_indices" in group:
        group["batch_indices"].resize((iterations, group["batch_indices"].shape[1]))
    if steps is not None:
        write_steps(group, np.asarray(steps, np.int64), iterations)
    group.attrs.update({"num_iterations": iterations, "steps_recorded": rows, "complete": True})


# --- non-trainable weights (a user's model) ------------------------------------------------


def write_fixed_weights(group: zarr.Group, weights: Sequence[tuple[str, np.ndarray]]) -> None:
    """Store a model's non-trainable weights (not in θ, but part of the loss) in a trajectory."""
    sub = group.create_group(FIXED_WEIGHTS_GROUP)
    sub.attrs["names"] = [name for name, _ in weights]
    for i, (_, value) in enumerate(weights):
        value = np.asarray(value)
        sub.create_array(str(i), shape=value.shape, dtype=value.dtype, compressors=checksummed())[
            ...
        ] = value
