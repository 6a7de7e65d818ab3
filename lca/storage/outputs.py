"""Result folders written for people (``lca report``, ``lca prune``): whole files, any location.

Each file is written whole or not at all, so a failed write leaves the previous copy; a
folder under a URL (``s3://…``) is drawn in a local temporary folder and uploaded at the end,
since figures and atomic renames need a local file system.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..locations import is_remote


def write_text(path: Path, text: str) -> None:
    """Write a result file whole or not at all: a failed write leaves the previous copy."""
    if is_remote(path):
        path.write_text(text)
        return
    temp = path.with_name(f".{path.name}.partial")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def local_folder(target: Path, prefix: str) -> Iterator[Path]:
    """A local folder to write ``target``'s files into: ``target`` itself, or for a URL a
    temporary folder (named ``prefix…``) uploaded to it when the block succeeds."""
    if not is_remote(target):
        target.mkdir(parents=True, exist_ok=True)
        yield target
        return
    out = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield out
        target.fs.put(str(out) + "/", target.path, recursive=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
