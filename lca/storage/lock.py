"""A run directory's lock: one writer at a time (``lca allocate``, ``lca train``).

``with run_lock(run_dir, "allocate"):`` creates ``RUN/lca.lock``, a small JSON file naming
the holder (host, pid, what it does, since when, lca version), exclusively: a second
``run_lock`` on the same run raises a one-line `RunLocked` that says who holds it and
what to do. The file is removed when the block ends, also on an exception or Ctrl-C.

A lock whose holder died without removing it (``kill -9``, a power cut) is *stale*:

* on the same host, a holder whose pid no longer runs (or runs a different process, told
  apart by its start time on Linux) is detected and the lock taken over, with a warning;
* from another host, lca cannot tell whether the holder still runs: the error says so and
  names the file to delete once you know it does not.

Processes a holder starts (``allocate --workers``' spawned workers, anything else that
inherits the environment) see the holder's token in ``LCA_RUN_LOCKS`` and may enter
``run_lock`` on the same run without being refused; Ray tasks never take the lock.

Limits: on a local file system the exclusive create is ``O_CREAT | O_EXCL``, atomic also on
NFSv3+; for a URL run directory (``s3://…``) it is the best fsspec offers: mode ``"xb"``
where the file system supports it (local, memory, recent s3fs/gcsfs with conditional
writes), else an existence check then a write, which two processes starting within the same
instant can both pass.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .base import LOCK_FILE, RunError, is_remote, location, writing_to

TOKENS_ENV = "LCA_RUN_LOCKS"  # tokens of the locks this process's ancestors hold


class RunLocked(RunError):
    """The run directory is locked by another process (one-line message)."""


@dataclass
class LockHolder:
    """What a lock file says about its holder."""

    host: str
    pid: int
    purpose: str  # what the holder does: "allocate", "train", …
    since: str  # ISO 8601 start time, with time zone
    version: str  # lca's version
    token: str  # tells this lock from any other, also after a takeover
    started: int | None = None  # the pid's start time (Linux clock ticks since boot)

    def describe(self) -> str:
        return f"`lca {self.purpose}` (pid {self.pid} on host {self.host}, since {self.since})"

    @classmethod
    def of_this_process(cls, purpose: str) -> LockHolder:
        from .._version import __version__

        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            purpose=purpose,
            since=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            version=__version__,
            token=uuid.uuid4().hex,
            started=_start_time(os.getpid()),
        )


def _start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: LockHolder) -> bool:
    """Whether the holder (on this host) still runs."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, under another user
        pass
    if holder.started is not None:
        now = _start_time(holder.pid)
        if now is not None and now != holder.started:
            return False  # the pid was reused by a later process
    return True


def _read(path: Path) -> LockHolder | None:
    """The holder a lock file names; None if it vanished; raises ValueError if unreadable."""
    for _ in range(20):  # a lock being created is empty for an instant
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        if text.strip():
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
                raise ValueError("not a lock file")
            return LockHolder(**{k: data.get(k) for k in LockHolder.__dataclass_fields__})
        time.sleep(0.05)
    raise ValueError("empty lock file")


def _create(path: Path, holder: LockHolder) -> bool:
    """Create the lock file exclusively; False if it exists already."""
    text = json.dumps(asdict(holder), indent=1) + "\n"
    if not is_remote(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return True
    fs, where = path.fs, path.path
    try:
        with fs.open(where, "xb") as f:
            f.write(text.encode())
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError, TypeError):  # no exclusive mode: best effort
        if fs.exists(where):
            return False
        with fs.open(where, "wb") as f:
            f.write(text.encode())
        return True


def _remove_if_ours(path: Path, token: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        holder = _read(path)
        if holder is not None and holder.token == token:
            if is_remote(path):
                path.fs.rm(path.path)
            else:
                path.unlink()


def _take_over(path: Path, stale: LockHolder) -> None:
    """Remove a stale lock file, unless it changed meanwhile (another process took over)."""
    if is_remote(path):
        _remove_if_ours(path, stale.token)
        return
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)  # atomic: exactly one taker moves this file
    except FileNotFoundError:
        return
    try:
        moved = _read(aside)
    except ValueError:
        moved = None
    if moved is not None and moved.token != stale.token:  # moved a fresh lock: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def _held_here() -> set[str]:
    return set(filter(None, os.environ.get(TOKENS_ENV, "").split(",")))


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, purpose: str) -> Iterator[LockHolder]:
    """Hold ``RUN/lca.lock`` for the block; raise `RunLocked` if another holds it.

    ``purpose`` names what the holder does (``"allocate"``, ``"train"``); it appears in the
    message a second process gets. The run directory is created if missing. Re-entering a
    lock this process (or an ancestor) holds is allowed and does nothing.
    """
    run_dir = location(run_dir)
    path = run_dir / LOCK_FILE
    me = LockHolder.of_this_process(purpose)
    ancestor: LockHolder | None = None
    with writing_to(path, "a run directory must be writable to be allocated or trained"):
        run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            if _create(path, me):
                break
            try:
                holder = _read(path)
            except ValueError:
                raise RunLocked(
                    f"{run_dir} is locked ({path} exists but is unreadable); if no lca command "
                    f"is working on this run, delete {path} and rerun"
                ) from None
            if holder is None:  # released meanwhile: try again
                continue
            if holder.token in _held_here():  # an ancestor of this process holds it
                ancestor = holder
                break
            if holder.host != me.host:
                raise RunLocked(
                    f"{run_dir} is in use by {holder.describe()}; lca cannot tell from host "
                    f"{me.host} whether that process still runs: wait for it, or if it is "
                    f"gone, delete {path} and rerun"
                )
            if _alive(holder):
                raise RunLocked(
                    f"{run_dir} is in use by {holder.describe()}; wait for it to finish (or "
                    f"stop it: kill {holder.pid}), then rerun"
                )
            warnings.warn(
                f"{run_dir}: taking over the stale lock of {holder.describe()}, which no "
                "longer runs",
                stacklevel=3,
            )
            _take_over(path, holder)
        else:
            raise RunLocked(f"{run_dir}: cannot take {path}: other processes keep taking it")
    if ancestor is not None:
        yield ancestor
        return
    before = os.environ.get(TOKENS_ENV)
    os.environ[TOKENS_ENV] = ",".join(sorted(_held_here() | {me.token}))
    try:
        yield me
    finally:
        if before is None:
            os.environ.pop(TOKENS_ENV, None)
        else:
            os.environ[TOKENS_ENV] = before
        _remove_if_ours(path, me.token)
