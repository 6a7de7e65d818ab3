"""The run directory: the interface between ``lca train``, ``lca allocate`` and the analyses.

A run directory holds::

    config.yaml        the resolved configuration
    trajectory.zarr/   θ_t for every step, mini-batch metrics, the examples used (lca train)
    lca.zarr/          per split: LCA, losses, gradients, errors (lca allocate)

Both stores are Zarr v3 groups whose arrays carry dimension names (``step`` for the T+1
points θ_t, ``iteration`` for the T updates, ``parameter`` for the K weights), so
``xarray.open_zarr`` opens them, and whose attributes carry the metadata needed to read
them (parameter layout, seed, versions): nothing is encoded in file names.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

CONFIG_FILE = "config.yaml"
TRAJECTORY_STORE = "trajectory.zarr"
LCA_STORE = "lca.zarr"
DATA_STORE = "data.zarr"  # a recorded model.fit's own examples (TrajectoryRecorder(train_data=…))
CHUNK_BYTES = 32 * 2**20  # target size of one (rows, K) float32 chunk


class RunError(RuntimeError):
    """A run directory that is missing, incomplete or corrupt (one-line message)."""


def location(where: str | os.PathLike) -> Path:
    """A run directory or data file: a local ``Path``, or for a URL a ``UPath``.

    URLs are anything fsspec and Zarr understand (``s3://bucket/runs/x``, ``gs://…``,
    ``file:///shared/runs/x``, ``memory://x``); ``UPath`` gives them the ``pathlib`` methods
    the rest of the code uses (``/``, ``exists``, ``read_text``, ``open``). Plain paths stay
    ``pathlib.Path``: nothing changes for local runs.
    """
    if isinstance(where, Path) or hasattr(where, "fs"):  # already a Path or a UPath
        return where
    text = os.fspath(where)
    if "://" not in text:
        return Path(text).expanduser()
    from upath import UPath  # imported on first use: local runs never pay for it

    return UPath(text)


def is_remote(path: Path) -> bool:
    """True for a URL location (anything but a plain local path)."""
    return "://" in str(path)


def _storage_options(path: Path) -> dict[str, Any] | None:
    """fsspec options for Zarr: the URL's own, plus parent directories made on write."""
    if not is_remote(path):
        return None
    options = dict(getattr(path, "storage_options", {}) or {})
    if getattr(path, "protocol", "") in ("file", "local"):
        options.setdefault("auto_mkdir", True)
    return options or None


def remove_tree(path: Path) -> None:
    """Delete a directory (or a store under a URL prefix) and everything in it."""
    if is_remote(path):
        path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path)


def rows_per_chunk(num_params: int, max_rows: int = 64, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of a (rows, K) float32 chunk: big enough to stream well, small enough for memory."""
    return int(max(1, min(max_rows, chunk_bytes // (4 * max(num_params, 1)))))


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open a Zarr v3 group, turning a missing or unreadable store into a RunError."""
    path = location(path)
    try:
        return zarr.open_group(
            store=str(path), mode=mode, zarr_format=3, storage_options=_storage_options(path)
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError) as exc:
        raise RunError(f"cannot open {path}: {exc.__class__.__name__} ({exc})") from None


# --- trajectory (written by lca train) ---------------------------------------------------


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
            compressors=None,
            # Zarr would otherwise compare every chunk with the fill value before writing it
            # (to skip empty ones): a full extra pass that doubled the writer's CPU time.
            config={"write_empty_chunks": True},
        )
        # Metric chunks hold as many iterations as a θ chunk holds steps, and are written only
        # whole: no chunk is ever read back, decompressed and rewritten while training runs.
        metric = {"chunks": (self.rows,), "dimension_names": ("iteration",)}
        shape = (num_iterations,)
        self.loss = group.create_array(
            "loss", shape=shape, dtype="float64", fill_value=np.nan, **metric
        )
        self.accuracy = group.create_array(
            "accuracy", shape=shape, dtype="float64", fill_value=np.nan, **metric
        )
        self.batch_indices = group.create_array(
            "batch_indices",
            shape=(num_iterations, batch_size),
            chunks=(self.rows, batch_size),
            dtype="int64",
            dimension_names=("iteration", "batch_position"),
        )
        for name, values in (("train_indices", train_indices), ("val_indices", val_indices)):
            arr = group.create_array(
                name,
                shape=values.shape,
                dtype="int64",
                dimension_names=(name.replace("_indices", "_example"),),
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
        self.data = {
            name: np.empty((self.rows, *arr.shape[1:]), dtype=arr.dtype)
            for name, arr in self.arrays.items()
        }

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

    For a chunk stored as plain little-endian bytes, the encoded chunk *is* the C-ordered
    array, and handing it straight to the store is about 5x faster than ``array[a:b] = rows``
    (which copies and scans it several times): that difference is most of the cost of
    recording θ every iteration. Returns False, having written nothing, when the fast path
    does not apply (compressed array, partial or edge chunk, other zarr internals).
    """
    try:
        from zarr.codecs import BytesCodec
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        meta = array.metadata
        chunk_rows = array.chunks[0]
        if (
            len(meta.codecs) != 1
            or not isinstance(meta.codecs[0], BytesCodec)
            or rows.shape != (chunk_rows, *array.shape[1:])
            or start % chunk_rows
            or rows.dtype != array.dtype
            or rows.dtype.byteorder == ">"
            or array.chunks[1:] != array.shape[1:]
        ):
            return False
        key = meta.encode_chunk_key((start // chunk_rows,) + (0,) * (rows.ndim - 1))
        data = memoryview(np.ascontiguousarray(rows)).cast("B")
        sync((array.store_path / key).set(default_buffer_prototype().buffer.from_bytes(data)))
        return True
    except (ImportError, AttributeError, TypeError):
        return False


def prepare_run_dir(run_dir: str | Path, overwrite: bool) -> Path:
    """Create a fresh run directory; refuse to clobber an existing one without ``overwrite``."""
    run_dir = location(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(f"{run_dir} already exists; pass --overwrite to replace it")
        remove_tree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON so numpy scalars and tuples become plain attributes."""
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )


# --- a whole run, for analyses and notebooks --------------------------------------------


@dataclass
class Run:
    """An opened run directory: its config, layout, trajectory and (once allocated) LCA.

    Arrays are returned as Zarr arrays, which slice like numpy arrays but read only the rows
    asked for, so analyses can stream a (T, K) array that does not fit in memory.
    """

    path: Path
    config: Any  # lca.config.Config
    layout: Any  # lca.layout.ParameterLayout
    trajectory: Trajectory
    lca_store: zarr.Group | None

    @property
    def num_iterations(self) -> int:
        return self.trajectory.num_iterations

    @property
    def theta(self) -> zarr.Array:
        return self.trajectory.theta

    @property
    def allocated_with(self) -> str:
        """How the LCA arrays were computed: the rule and the gradients' arithmetic."""
        if self.lca_store is None:
            return "not allocated"
        attrs = self.lca_store.attrs
        rule = attrs.get("rule", "simpson")
        rule = "simpson (the paper's RK4)" if rule == "simpson" else rule
        return f"rule {rule}, gradients in {attrs.get('precision', 'float32')}"

    @property
    def splits(self) -> list[str]:
        """The allocated splits (empty before ``lca allocate``)."""
        return list(self.lca_store.attrs["settings"]["splits"]) if self.lca_store else []

    def _group(self, split: str) -> zarr.Group:
        if self.lca_store is None:
            raise RunError(f"{self.path}: not allocated yet; run `lca allocate {self.path}`")
        if split not in self.splits:
            raise RunError(f"{self.path}: split {split!r} not allocated (have {self.splits})")
        return self.lca_store[split]

    def lca(self, split: str = "train") -> zarr.Array:
        """A[t, i], shape (T, K)."""
        return self._group(split)["lca"]

    def grad(self, split: str = "train") -> zarr.Array:
        """Full-set gradient at every θ_t, shape (T+1, K)."""
        return self._group(split)["grad"]

    def loss(self, split: str = "train") -> np.ndarray:
        """Full-set loss L(θ_t), shape (T+1,)."""
        return self._group(split)["loss"][:]

    def error(self, split: str = "train", first_order: bool = False) -> np.ndarray:
        return self._group(split)["error_fo" if first_order else "error"][:]

    def done(self) -> np.ndarray:
        """Per-iteration mask of what ``lca allocate`` has finished."""
        if self.lca_store is None:
            return np.zeros(self.num_iterations, dtype=bool)
        c = int(self.lca_store.attrs["settings"]["chunk_iterations"])
        mask = np.repeat(self.lca_store["done"][:], c)[: self.num_iterations]
        return mask.astype(bool)

    def require_allocated(self) -> None:
        done = self.done()
        if not done.all():
            raise RunError(
                f"{self.path}: allocation incomplete ({int(done.sum())} of {done.size} "
                f"iterations); finish it with `lca allocate {self.path}`"
            )

    def to_xarray(self, split: str | None = None):
        """The trajectory (``split=None``) or one split's LCA group as an ``xarray.Dataset``."""
        import xarray as xr

        if split is None:
            return xr.open_zarr(
                str(self.trajectory.path),
                consolidated=False,
                storage_options=_storage_options(self.trajectory.path),
            )
        self._group(split)
        store = self.path / LCA_STORE
        return xr.open_zarr(
            str(store), group=split, consolidated=False, storage_options=_storage_options(store)
        )


def open_run(run_dir: str | Path) -> Run:
    """Open a run directory written by ``lca train`` (and possibly ``lca allocate``)."""
    from .config import load_config
    from .layout import ParameterLayout

    run_dir = location(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: no {CONFIG_FILE}; is this a run directory of `lca train`?")
    trajectory = open_trajectory(run_dir)
    store = open_group(run_dir / LCA_STORE, "r") if (run_dir / LCA_STORE).exists() else None
    return Run(
        path=run_dir,
        config=load_config(run_dir / CONFIG_FILE),
        layout=ParameterLayout.from_json(trajectory.layout_json),
        trajectory=trajectory,
        lca_store=store,
    )


# --- non-trainable weights (a user's model) ------------------------------------------------

FIXED_WEIGHTS_GROUP = "non_trainable"


def write_fixed_weights(group: zarr.Group, weights: Sequence[tuple[str, np.ndarray]]) -> None:
    """Store a model's non-trainable weights (not in θ, but part of the loss) in a trajectory."""
    sub = group.create_group(FIXED_WEIGHTS_GROUP)
    sub.attrs["names"] = [name for name, _ in weights]
    for i, (_, value) in enumerate(weights):
        value = np.asarray(value)
        sub.create_array(str(i), shape=value.shape, dtype=value.dtype)[...] = value


def read_fixed_weights(group: zarr.Group) -> list[tuple[str, np.ndarray]] | None:
    """The stored non-trainable weights, or None for a run that has none stored."""
    if FIXED_WEIGHTS_GROUP not in group:
        return None
    sub = group[FIXED_WEIGHTS_GROUP]
    return [(name, sub[str(i)][...]) for i, name in enumerate(sub.attrs["names"])]
