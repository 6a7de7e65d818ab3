"""Locations: a local path or a URL as one ``pathlib``-like object (imports nothing of lca)."""

from __future__ import annotations

import os
from pathlib import Path


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
