"""Opening and creating a run's Zarr stores: checksummed codecs, verified chunk reads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zarr

from ..locations import is_remote, location
from .base import RunError
from .integrity import BlockwiseCrc32c, CheckedStore

_checksums = True  # every new array carries per-chunk crc32c (benchmarks turn it off)


def _storage_options(path: Path) -> dict[str, Any] | None:
    """fsspec options for Zarr: the URL's own, plus parent directories made on write."""
    if not is_remote(path):
        return None
    options = dict(getattr(path, "storage_options", {}) or {})
    if getattr(path, "protocol", "") in ("file", "local"):
        options.setdefault("auto_mkdir", True)
    return options or None


def checksummed(compress: bool = True) -> list:
    """The compressors of a new array: Zstd (unless ``compress=False``), then Zarr v3's crc32c.

    The checksum is the last bytes-to-bytes codec, so it covers the stored (compressed) bytes:
    a truncated or flipped chunk fails before it is decompressed, and any Zarr v3 reader
    checks it too.
    """
    from zarr.codecs import ZstdCodec

    codecs = [ZstdCodec(level=0)] if compress else []
    return [*codecs, BlockwiseCrc32c()] if _checksums else codecs


@contextlib.contextmanager
def without_checksums() -> Iterator[None]:
    """Create arrays without crc32c inside this block: for benchmarks measuring their cost."""
    global _checksums
    before, _checksums = _checksums, False
    try:
        yield
    finally:
        _checksums = before


def open_group(path: str | Path, mode: str = "r", *, requirements: bool = True) -> zarr.Group:
    """Open a Zarr v3 group whose chunk reads are verified (``integrity.CheckedStore``).

    A missing or unreadable store becomes a RunError. Which absent chunks are errors is
    attached here from the store's own attributes (``integrity.attach_requirements``) unless
    ``requirements=False`` (``lca check``, which reports absent chunks instead of raising).
    """

    path = location(path)
    try:
        if is_remote(path):
            from zarr.storage import FsspecStore

            inner = FsspecStore.from_url(
                str(path), storage_options=_storage_options(path), read_only=mode == "r"
            )
        else:
            from zarr.storage import LocalStore

            if mode == "r" and not path.exists():
                raise FileNotFoundError(f"no such directory: {path}")
            inner = LocalStore(path, read_only=mode == "r")
        group = zarr.open_group(store=CheckedStore(inner, str(path)), mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError) as exc:
        raise RunError(f"cannot open {path}: {exc.__class__.__name__} ({exc})") from None
    if mode != "w" and requirements:
        from .integrity import attach_requirements

        attach_requirements(group, path.name)
    return group
