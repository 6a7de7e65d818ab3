"""Where runs live: the names inside a run directory, run errors, and run-directory upkeep.

Stores are opened and created by `groups`; locations come from `lca.locations`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zarr

from ..locations import is_remote, location

CONFIG_FILE = "config.yaml"
TRAJECTORY_STORE = "trajectory.zarr"
LCA_STORE = "lca.zarr"
DATA_STORE = "data.zarr"  # a recorded model.fit's own examples (TrajectoryRecorder(train_data=…))
LOCK_FILE = "lca.lock"  # who works on a run now (lca.storage.lock)
CHUNK_BYTES = 32 * 2**20  # target size of one (rows, K) float32 chunk


# Zarr skips writing a chunk that equals the fill value, so an absent chunk would be
# ambiguous: lost, or all False / all zero? lca stores every chunk it writes, which is what
# lets a store's openers treat an absent chunk of finished work as an error.
zarr.config.set({"array.write_empty_chunks": True})


class RunError(RuntimeError):
    """A run directory that is missing, incomplete or corrupt (one-line message)."""


class WriteFailed(RunError):
    """Writing into a run failed (disk full, read-only, no permission): one-line message.

    What was written before stays valid; rerunning the same command resumes.
    """


@contextlib.contextmanager
def writing_to(what: object, then: str = "", verb: str = "write") -> Iterator[None]:
    """Turn an OSError in this block into ``cannot write WHAT: CAUSE; THEN`` (WriteFailed).

    ``what`` names what was being written (a store, a file, "the report to DIR");
    ``then`` says what was kept and the command that continues.
    """
    try:
        yield
    except OSError as exc:
        more = f"; {then}" if then else ""
        raise WriteFailed(f"cannot {verb} {what}: {os_error_cause(exc)}{more}") from None


def os_error_cause(exc: BaseException) -> str:
    """The cause of an OSError in words (``No space left on device``), not a repr."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or errno.errorcode.get(exc.errno, str(exc))
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def remove_tree(path: Path) -> None:
    """Delete a directory (or a store under a URL prefix) and everything in it."""
    if is_remote(path):
        path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path)


def rows_per_chunk(num_params: int, max_rows: int = 64, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of a (rows, K) float32 chunk: big enough to stream well, small enough for memory."""
    return int(max(1, min(max_rows, chunk_bytes // (4 * max(num_params, 1)))))


def has_contents(run_dir: Path) -> bool:
    """Whether a directory holds anything but the lock of the process about to fill it."""
    return run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def prepare_run_dir(run_dir: str | Path, overwrite: bool) -> Path:
    """Create a fresh run directory; refuse to clobber an existing one without ``overwrite``.

    Its lock file (held by this process) is neither counted as contents nor removed.
    """
    run_dir = location(run_dir)
    if has_contents(run_dir):
        if not overwrite:
            raise RunError(f"{run_dir} already exists; pass --overwrite to replace it")
        for entry in run_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir():
                remove_tree(entry)
            else:
                entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON so numpy scalars and tuples become plain attributes."""
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )
