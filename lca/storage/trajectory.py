"""``trajectory.zarr``: θ_t of every step, written by ``lca train`` (or the Keras recorder)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .base import (
    TRAJECTORY_STORE,
    RunError,
    _json_safe,
    checksummed,
    location,
    open_group,
    rows_per_chunk,
)


@dataclass
class Trajectory:
    """Read side of ``trajectory.zarr``: θ rows, metrics and metadata of one training run."""

    group: zarr.Group
    path: Path

    @property
    def theta(self) -> zarr.Array:
        return self.group["theta"]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def num_iterations(self) -> int:
        return int(self.group.attrs["num_iterations"])

    @property
    def steps_recorded(self) -> int:
        return int(self.group.attrs.get("steps_recorded", 0))

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    @property
    def layout_json(self) -> list[dict]:
        return list(self.group.attrs["layout"])

    def require_complete(self) -> None:
        """Raise RunError unless training finished and every θ row was written."""
        status = self.group.attrs.get("status", "unknown")
        if not self.complete:
            raise RunError(
                f"{self.path}: trajectory incomplete ({self.steps_recorded} of "
                f"{self.num_iterations + 1} steps recorded, status: {status}); "
                "rerun `lca train` with --overwrite"
            )
        if self.theta.shape[0] != self.num_iterations + 1:
            raise RunError(
                f"{self.path}: theta has {self.theta.shape[0]} rows, expected "
                f"{self.num_iterations + 1}; the store is corrupt"
            )


def open_trajectory(run_dir: str | Path) -> Trajectory:
    path = location(run_dir) / TRAJECTORY_STORE
    if not path.exists():
        raise RunError(f"{run_dir}: no {TRAJECTORY_STORE}; is this a run directory of `lca train`?")
    group = open_group(path, "r")
    for key in ("theta", "loss", "accuracy"):
        if key not in group:
            raise RunError(f"{path}: array '{key}' is missing; the store is corrupt")
    if "num_iterations" not in group.attrs or "layout" not in group.attrs:
        raise RunError(f"{path}: metadata missing; the store is corrupt")
    from .integrity import warn_if_unchecked

    codecs = tuple(type(c).__name__ for c in group["theta"].metadata.codecs)
    warn_if_unchecked(str(location(run_dir)), ("crc32c",) if "Crc32cCodec" in codecs else codecs)
    return Trajectory(group=group, path=path)


class TrajectoryWriter:
    """Buffered, asynchronous writer of θ rows: training never waits for the disk.

    Rows are collected into a chunk-sized buffer; a full buffer is handed to a background
    thread that writes it while training goes on. ``steps_recorded`` in the attributes only
    counts rows whose write has finished, so a killed run stays readable up to there.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        num_iterations: int,
        num_params: int,
        batch_size: int,
        train_indices: np.ndarray,
        val_indices: np.ndarray,
        attrs: dict[str, Any],
    ) -> None:
        self.path = location(run_dir) / TRAJECTORY_STORE
        self.num_steps = num_iterations + 1
        self.rows = rows_per_chunk(num_params)
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
        self.theta = group.create_array(
            "theta",
            shape=(self.num_steps, num_params),
            chunks=(self.rows, num_params),
            dtype="float32",
            dimension_names=("step", "parameter"),
            compressors=checksummed(compress=False),
            # Zarr would otherwise compare every chunk with the fill value before writing it
            # (to skip empty ones): a full extra pass that doubled the writer's CPU time.
            config={"write_empty_chunks": True},
        )
        # Metric chunks hold as many iterations as a θ chunk holds steps, and are written only
        # whole: no chunk is ever read back, decompressed and rewritten while training runs.
        metric = {"chunks": (self.rows,), "dimension_names": ("iteration",)}
        shape = (num_iterations,)
        self.loss = group.create_array(
            "loss",
            shape=shape,
            dtype="float64",
            fill_value=np.nan,
            **metric,
            compressors=checksummed(),
        )
        self.accuracy = group.create_array(
            "accuracy",
            shape=shape,
            dtype="float64",
            fill_value=np.nan,
            **metric,
            compressors=checksummed(),
        )
        self.batch_indices = group.create_array(
            "batch_indices",
            shape=(num_iterations, batch_size),
            chunks=(self.rows, batch_size),
            dtype="int64",
            dimension_names=("iteration", "batch_position"),
            compressors=checksummed(),
        )
        for name, values in (("train_indices", train_indices), ("val_indices", val_indices)):
            arr = group.create_array(
                name,
                shape=values.shape,
                dtype="int64",
                dimension_names=(name.replace("_indices", "_example"),),
                compressors=checksummed(),
            )
            arr[:] = values
        self.group = group
        self._theta_rows = _RowBuffer({"theta": self.theta}, self.rows)
        self._metric_rows = _RowBuffer(
            {"loss": self.loss, "accuracy": self.accuracy, "batch_indices": self.batch_indices},
            self.rows,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="lca-writer", initializer=_lower_priority
        )
        self._pending: list[Future] = []

    def append(
        self,
        theta: np.ndarray | Sequence[np.ndarray],
        metrics: tuple[float, float, np.ndarray] | None,
    ) -> None:
        """Record θ of the next step, with (loss, accuracy, batch) of the update before it.

        ``theta`` is the flat vector or the list of per-variable arrays in layout order (then
        each is copied straight into place: no concatenated copy is ever made).
        """
        if not isinstance(theta, np.ndarray):
            theta = _Parts(theta)
        if self._theta_rows.append({"theta": theta}):
            self._submit(self._theta_rows, update_steps=True)
        if metrics is not None:
            loss, accuracy, batch = metrics
            values = {"loss": loss, "accuracy": accuracy, "batch_indices": batch}
            if self._metric_rows.append(values):
                self._submit(self._metric_rows)

    def _submit(self, buffer: _RowBuffer, update_steps: bool = False) -> None:
        """Hand a filled buffer to the writer thread; wait only if it is still behind."""
        start, rows = buffer.take()
        if rows is None:
            return
        for finished in [f for f in self._pending if f.done()]:
            finished.result()  # a failed write raises here, in the training loop
            self._pending.remove(finished)
        if len(self._pending) > 2:  # bound the memory held by unwritten buffers
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, buffer, start, rows, update_steps))

    def _write(self, buffer: _RowBuffer, start: int, rows: dict, update_steps: bool) -> None:
        stop = buffer.write(start, rows)
        if update_steps:
            self.group.attrs["steps_recorded"] = stop

    def close(self, status: str = "complete") -> int:
        """Flush every buffered row; mark the trajectory complete only on success."""
        self._submit(self._theta_rows, update_steps=True)
        self._submit(self._metric_rows)
        for future in self._pending:
            future.result()
        self._pool.shutdown()
        steps = int(self.group.attrs["steps_recorded"])
        self.group.attrs.update(
            {"status": status, "complete": status == "complete" and steps == self.num_steps}
        )
        return steps


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


def write_whole_raw_chunk(array: zarr.Array, start: int, rows: np.ndarray) -> bool:
    """Store ``rows`` as one whole chunk of an uncompressed array, bypassing the codec pipeline.

    For a chunk stored as plain little-endian bytes (optionally followed by its crc32c), the
    encoded chunk *is* the C-ordered array, and handing it straight to the store is about 5x
    faster than ``array[a:b] = rows`` (which copies and scans it several times): that
    difference is most of the cost of recording θ every iteration. Returns False, having
    written nothing, when the fast path does not apply (compressed array, partial or edge
    chunk, other zarr internals).
    """
    try:
        import google_crc32c
        from zarr.codecs import BytesCodec, Crc32cCodec
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        meta = array.metadata
        codecs = list(meta.codecs)
        checksum = len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec)
        chunk_rows = array.chunks[0]
        if (
            len(codecs) != 1 + checksum
            or not isinstance(codecs[0], BytesCodec)
            or rows.shape != (chunk_rows, *array.shape[1:])
            or start % chunk_rows
            or rows.dtype != array.dtype
            or rows.dtype.byteorder == ">"
            or array.chunks[1:] != array.shape[1:]
        ):
            return False
        key = meta.encode_chunk_key((start // chunk_rows,) + (0,) * (rows.ndim - 1))
        data = np.ascontiguousarray(rows).reshape(-1).view(np.uint8)
        if checksum:  # the crc32c codec's layout: the bytes, then their crc as uint32 LE
            crc = np.array([google_crc32c.value(data)], "<u4").view(np.uint8)
            encoded = _room_for_checksum(rows)
            if encoded is None:
                encoded = np.empty(data.size + 4, np.uint8)
                encoded[:-4] = data
            encoded[-4:] = crc
            data = encoded
        data = memoryview(data)
        sync((array.store_path / key).set(default_buffer_prototype().buffer.from_bytes(data)))
        return True
    except (ImportError, AttributeError, TypeError):
        return False


def _room_for_checksum(rows: np.ndarray) -> np.ndarray | None:
    """The byte buffer ``rows`` starts, when it has 4 spare bytes after them (see _RowBuffer)."""
    root = rows
    while isinstance(root.base, np.ndarray):
        root = root.base
    fits = (
        root.dtype == np.uint8
        and root.ndim == 1
        and root.size == rows.nbytes + 4
        and rows.flags.c_contiguous
        and root.ctypes.data == rows.ctypes.data
    )
    return root if fits else None


# --- non-trainable weights (a user's model) ------------------------------------------------

FIXED_WEIGHTS_GROUP = "non_trainable"


def write_fixed_weights(group: zarr.Group, weights: Sequence[tuple[str, np.ndarray]]) -> None:
    """Store a model's non-trainable weights (not in θ, but part of the loss) in a trajectory."""
    sub = group.create_group(FIXED_WEIGHTS_GROUP)
    sub.attrs["names"] = [name for name, _ in weights]
    for i, (_, value) in enumerate(weights):
        value = np.asarray(value)
        sub.create_array(str(i), shape=value.shape, dtype=value.dtype, compressors=checksummed())[
            ...
        ] = value


def read_fixed_weights(group: zarr.Group) -> list[tuple[str, np.ndarray]] | None:
    """The stored non-trainable weights, or None for a run that has none stored."""
    if FIXED_WEIGHTS_GROUP not in group:
        return None
    sub = group[FIXED_WEIGHTS_GROUP]
    return [(name, sub[str(i)][...]) for i, name in enumerate(sub.attrs["names"])]
