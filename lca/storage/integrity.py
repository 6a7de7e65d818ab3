"""Stores that prove their own integrity: every chunk read is checked before it is decoded.

Every array lca writes carries Zarr v3's per-chunk ``crc32c`` (see ``checksummed``). Reads
go through `CheckedStore`, which verifies a chunk's checksum (or, for arrays written
before checksums, its size or that it decompresses) and turns a failure into a one-line
`ChunkError` naming the run, the array and the chunk. A chunk that a store *must*
have (a θ row of a finished trajectory, any array of a done LCA block) but that is
absent is an error too: Zarr would otherwise return its fill value, silently.

Which chunks are required is the store's own business, given by a ``required(info, chunk)``
predicate the openers attach (``open_trajectory``, the LCA store's openers); the walk over a
whole run (``lca check``) lives in `lca.storage.check`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.abc.store import ByteRequest, Store
from zarr.codecs import Crc32cCodec
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from .base import DATA_STORE, LCA_STORE, TRAJECTORY_STORE, RunError

ITERATION_AXES = ("step", "iteration")  # first axes whose chunks belong to training steps


class ChunkError(RunError):
    """A chunk that is missing, cut short or fails its checksum (one-line message)."""


@dataclass(frozen=True)
class ArrayInfo:
    """What checking one array's chunks needs, read from its ``zarr.json``."""

    path: str  # inside the store, e.g. "theta" or "train/lca"
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dims: tuple[str | None, ...]
    codecs: tuple[str, ...]
    itemsize: int

    @property
    def checksum(self) -> bool:
        return bool(self.codecs) and self.codecs[-1] == "crc32c"

    @property
    def raw_chunk_bytes(self) -> int:
        return math.prod(self.chunks) * self.itemsize

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks))

    def rows(self, chunk: tuple[int, ...]) -> str:
        """The training steps or iterations a chunk holds, for messages ('' if none)."""
        if not self.dims or self.dims[0] not in ITERATION_AXES or not chunk:
            return ""
        first = chunk[0] * self.chunks[0]
        last = min(first + self.chunks[0], self.shape[0]) - 1
        return f" ({self.dims[0]}s {first}–{last})"

    @classmethod
    def from_metadata(cls, path: str, meta: dict[str, Any]) -> ArrayInfo:
        dtype = meta.get("data_type")
        itemsize = np.dtype(dtype).itemsize if isinstance(dtype, str) else 0
        return cls(
            path=path,
            shape=tuple(meta["shape"]),
            chunks=tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]),
            dims=tuple(meta.get("dimension_names") or ()),
            codecs=tuple(c["name"] if isinstance(c, dict) else str(c) for c in meta["codecs"]),
            itemsize=itemsize,
        )


Required = Callable[[ArrayInfo, tuple[int, ...]], bool]


def chunk_problem(info: ArrayInfo, data: bytes | np.ndarray) -> str | None:
    """Why a stored chunk is bad (``None`` if it checks out), without decoding its values."""
    raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    if info.checksum:
        if raw.size < 4:
            return f"is cut short ({raw.size} bytes)"
        stored = raw[-4:].view("<u4")[0]
        if crc32c(raw[:-4]) != stored:
            return "fails its checksum (its bytes were changed or cut short)"
        return None
    if info.codecs == ("bytes",):  # written before checksums, uncompressed: the size is known
        if raw.size != info.raw_chunk_bytes:
            return f"is cut short ({raw.size} of {info.raw_chunk_bytes} bytes)"
        return None
    if info.codecs == ("bytes", "zstd"):  # before checksums, compressed: it must decompress
        from numcodecs import Zstd

        try:
            size = len(Zstd().decode(raw))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means a damaged chunk
            return f"cannot be decompressed ({exc})"
        if size != info.raw_chunk_bytes:
            return f"decompresses to {size} of {info.raw_chunk_bytes} bytes"
    return None


def crc32c(data: np.ndarray, block: int = 1 << 20) -> int:
    """The crc32c of a uint8 array, without copying it whole.

    google-crc32c copies a read-only buffer (as chunks read from a store are) before
    hashing it; hashing it a block at a time bounds that copy to one block.
    """
    import google_crc32c

    data = np.ascontiguousarray(data)
    if data.flags.writeable:
        return google_crc32c.value(data)
    crc = 0
    for start in range(0, data.size, block):
        crc = google_crc32c.extend(crc, data[start : start + block])
    return crc


class BlockwiseCrc32c(Crc32cCodec):
    """Zarr's ``crc32c`` codec, the same bytes on disk, hashing without a whole-chunk copy.

    Registered (``use_blockwise_crc32c``) as the implementation Zarr picks for ``crc32c``:
    Zarr's own copies every read-only chunk it verifies, which adds a chunk per concurrent
    read to the peak memory of streaming analyses.
    """

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer:
        data = chunk_bytes.as_numpy_array()
        if data.size < 4 or crc32c(data[:-4]) != data[-4:].view("<u4")[0]:
            raise ValueError("Stored and computed checksum do not match")
        return chunk_spec.prototype.buffer.from_array_like(data[:-4])

    def _encode_sync(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer:
        data = chunk_bytes.as_numpy_array()
        encoded = np.empty(data.size + 4, np.uint8)
        encoded[:-4] = data.reshape(-1).view(np.uint8)
        encoded[-4:] = np.array([crc32c(encoded[:-4])], "<u4").view(np.uint8)
        return chunk_spec.prototype.buffer.from_array_like(encoded)


def use_blockwise_crc32c() -> None:
    """Make Zarr decode and encode ``crc32c`` with `BlockwiseCrc32c` in this process."""
    from zarr import config
    from zarr.registry import register_codec

    name = f"{BlockwiseCrc32c.__module__}.{BlockwiseCrc32c.__qualname__}"
    register_codec("crc32c", BlockwiseCrc32c, qualname=name)
    config.set({"codecs.crc32c": name})


class CheckedStore(WrapperStore):
    """A Zarr store whose chunk reads are verified before Zarr decodes them.

    ``label`` names the store in messages (``RUN/trajectory.zarr``); ``required`` says which
    absent chunks are errors rather than "not written yet".
    """

    def __init__(self, store: Store, label: str = "", required: Required | None = None):
        super().__init__(store)
        self.label = label or str(store)
        self.required = required
        self._infos: dict[str, ArrayInfo | None] = {}

    def _with_store(self, store: Store) -> CheckedStore:
        return type(self)(store, self.label, self.required)

    async def info(self, path: str) -> ArrayInfo | None:
        """The array at ``path`` (cached), or None when there is none."""
        if path not in self._infos:
            meta = await self._store.get(f"{path}/zarr.json", default_buffer_prototype())
            parsed = json.loads(meta.to_bytes()) if meta is not None else None
            ok = parsed is not None and parsed.get("node_type") == "array"
            self._infos[path] = ArrayInfo.from_metadata(path, parsed) if ok else None
        return self._infos[path]

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = await self._store.get(key, prototype, byte_range)
        path, sep, coords = key.rpartition("/c/")
        if not sep or byte_range is not None or not coords.replace("/", "").isdigit():
            return value  # metadata, or a partial read zarr does not make for our arrays
        info = await self.info(path)
        if info is None:
            return value
        chunk = tuple(int(i) for i in coords.split("/"))
        if value is None:
            if self.required is not None and self.required(info, chunk):
                raise ChunkError(self.message(info, chunk, "is missing"))
            return value
        problem = chunk_problem(info, value.as_numpy_array())
        if problem is not None:
            raise ChunkError(self.message(info, chunk, problem))
        return value

    def message(self, info: ArrayInfo, chunk: tuple[int, ...], problem: str) -> str:
        run = self.label.rsplit("/", 1)[0] if "/" in self.label else self.label
        return (
            f"{self.label}: chunk {','.join(map(str, chunk))} of {info.path}{info.rows(chunk)} "
            f"{problem}; `lca check {run}` lists every damaged chunk and what can be redone"
        )


_warned: set[str] = set()


def warn_if_unchecked(label: str, codecs: tuple[str, ...]) -> None:
    """Say once per store that it was written before checksums (damage shows only on decode)."""
    if "crc32c" in codecs or label in _warned:
        return
    _warned.add(label)
    warnings.warn(
        f"{label} was written without checksums (by an older lca): a damaged chunk is found "
        "only where it fails to decode; `lca check` reads every chunk",
        stacklevel=3,
    )


def block_of_chunk(info: ArrayInfo, chunk: tuple[int, ...], block_iterations: int, blocks: int):
    """The LCA block that writes ``chunk`` of an array of ``lca.zarr`` (None: no block).

    Arrays along iterations or steps are chunked by the block's length; the extra row T of a
    (T+1)-row array belongs to the last block.
    """
    if not info.dims or info.dims[0] not in ITERATION_AXES or info.chunks[0] != block_iterations:
        return None
    return min(chunk[0], blocks - 1)


def lca_required(done: np.ndarray, block_iterations: int) -> Required:
    """In ``lca.zarr``: every chunk of a done block, and the arrays written at creation."""

    def required(info: ArrayInfo, chunk: tuple[int, ...]) -> bool:
        if info.path == "done":
            return False  # an absent flag reads "not done": the block is simply recomputed
        block = block_of_chunk(info, chunk, block_iterations, len(done))
        return True if block is None else bool(done[block])

    return required


def trajectory_required(steps_recorded: int, complete: bool) -> Required:
    """In ``trajectory.zarr``: rows of recorded steps, and the arrays written at creation."""

    def required(info: ArrayInfo, chunk: tuple[int, ...]) -> bool:
        if complete or not info.dims or info.dims[0] not in ITERATION_AXES:
            return True
        stop = (chunk[0] + 1) * info.chunks[0]  # rows of this chunk end before `stop`
        recorded = steps_recorded if info.dims[0] == "step" else steps_recorded - 1
        return stop <= recorded

    return required


def attach_requirements(group, name: str) -> None:
    """Tell an opened store's ``CheckedStore`` which absent chunks are errors, from its attrs.

    Called by ``open_group`` for stores opened to read or update: every reader, not only
    those that remember to ask, gets an error instead of a fill value for a lost chunk.
    """
    store = group.store
    if not isinstance(store, CheckedStore):
        return
    attrs = group.attrs
    if name == TRAJECTORY_STORE and "num_iterations" in attrs:
        steps = int(attrs.get("steps_recorded", 0))
        store.required = trajectory_required(steps, bool(attrs.get("complete", False)))
    elif name == LCA_STORE and "settings" in attrs and "done" in group:
        block = int(attrs["settings"]["chunk_iterations"])
        store.required = lca_required(np.asarray(group["done"][:], bool), block)
    elif name == DATA_STORE:
        store.required = lambda info, chunk: True


def listed_keys(store: Store, prefix: str = "") -> set[str]:
    """The keys a store holds under ``prefix`` (one listing; nothing is read)."""
    from zarr.core.sync import sync

    inner = store._store if isinstance(store, CheckedStore) else store

    async def collect() -> set[str]:
        return {key async for key in inner.list_prefix(prefix)}

    return sync(collect())


def missing_chunks(group) -> list[tuple[str, tuple[int, ...]]]:
    """Chunks the store must have but does not (by listing keys: nothing is read or decoded)."""
    import zarr

    store = group.store
    if not isinstance(store, CheckedStore) or store.required is None:
        return []
    present = listed_keys(store)
    root = group.path.strip("/")
    missing = []
    for _, node in group.members(max_depth=None):
        if not isinstance(node, zarr.Array):
            continue
        info = ArrayInfo.from_metadata(node.path, node.metadata.to_dict())
        for chunk in np.ndindex(*info.grid):
            key = f"{node.path}/c/" + "/".join(map(str, chunk))
            key = f"{root}/{key}" if root and not key.startswith(root) else key
            if key not in present and store.required(info, chunk):
                missing.append((node.path, chunk))
    return missing
