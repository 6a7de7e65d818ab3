"""What every ``lca`` command shares: the option class, renamed flags, one-line errors and
the filter that keeps native libraries' start-up noise off stderr."""

from __future__ import annotations

import functools
import os
import re
import sys
import typing

import click

from ..config import ConfigError, Precision, StoreLevel, note_renamed
from ..quadrature import RULES
from ..storage import RunError

RULE_NAMES = tuple(RULES)
PRECISION_NAMES: tuple[str, ...] = typing.get_args(Precision)
STORE_NAMES: tuple[str, ...] = typing.get_args(StoreLevel)

#: Old flags that still work (command: {old: new}); each prints ``note: OLD is now NEW``.
RENAMED_FLAGS = {
    "allocate": {
        "--max-splits": "--max-intervals",
        "--restart": "--overwrite",
        "--iterations": "--range",
    },
    "tensorboard": {"--logdir": "--out"},
}


class Option(click.Option):
    """An option whose described default (``show_default="…"``) shows as ``[default: …]``,
    the way click shows a real default, so every default in ``--help`` reads the same."""

    def get_help_extra(self, ctx: click.Context) -> dict:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str) and "default" in extra:
            extra["default"] = self.show_default
        return extra


def option(*names: str, **kwargs):
    """``click.option`` with `Option`: the one way options of ``lca`` are declared."""
    return click.option(*names, cls=Option, **kwargs)


class RenamingCommand(click.Command):
    """A command that still reads its old flag names, noting each new one once."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.renamed = renamed or {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        new_args = []
        for i, arg in enumerate(args):
            if arg == "--":
                new_args += args[i:]
                break
            flag, equals, value = arg.partition("=")
            if flag in self.renamed:
                note_renamed(flag, self.renamed[flag])
                arg = self.renamed[flag] + equals + value
            new_args.append(arg)
        return super().parse_args(ctx, new_args)


#: Where a new run directory goes (``lca train``, ``lca import``).
run_out_option = option(
    "--out",
    type=click.Path(file_okay=False),
    show_default="runs/<config name>",
    help="Run directory.",
)

override_option = option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set optimizer.lr=0.01 (repeatable).",
)


def _known_errors() -> tuple[type[BaseException], ...]:
    from ..data import DatasetError
    from ..training import TrainingDiverged

    return (ConfigError, RunError, DatasetError, TrainingDiverged, FileNotFoundError)


def friendly_errors(func):
    """Print expected failures as one line on stderr and exit 2; keep tracebacks for bugs."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except _known_errors() as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:  # disk full, read-only, no permission: one line, no traceback
            click.echo(f"error: {_os_error_line(exc, func.__name__)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: what was written so far is kept", err=True)
            sys.exit(130)

    return wrapper


def _os_error_line(exc: OSError, command: str) -> str:
    """``cannot write PATH: No space left on device (…)`` for an OSError lca did not expect."""
    import errno

    from ..storage.base import os_error_cause

    where = exc.filename
    if where is not None:  # a file being written atomically: name the file, not its temp copy
        where = re.sub(r"\.[0-9a-f]{32}\.partial$", "", os.fsdecode(where))
    cause = os_error_cause(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES):
        verb = "access" if exc.errno == errno.EACCES else "write"
        what = f"cannot {verb} {where}" if where else f"lca {command} cannot {verb}"
        return (
            f"{what}: {cause} (what was written before is kept; free space or fix the "
            f"permissions, then rerun the same command to resume)"
        )
    return f"{where}: {cause}" if where else f"lca {command}: {cause}"


#: Lines native libraries print on stderr whatever TF_CPP_MIN_LOG_LEVEL says (absl logs
#: before its initialisation): informational, or about a GPU a CPU-only machine lacks.
NATIVE_NOISE = re.compile(
    rb"All log messages before absl::InitializeLog|^[IW]\d{4} [\d:. ]+\d+ \S+:\d+\] "
    rb"|failed call to cuInit|Could not find cuda drivers|Unable to register cu\w+ factory"
    rb"|computation placer already registered"
)


def quiet_native_stderr() -> None:
    """Drop `NATIVE_NOISE` lines written to file descriptor 2 by native code.

    Python's own stderr keeps writing to the terminal directly; only what reaches fd 2
    otherwise (TensorFlow's C++ logs, worker processes) passes a filter thread.
    """
    import threading

    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):  # captured (tests, notebooks): leave it
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding, closefd=False)  # noqa: SIM115
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line + b"\n" for line in lines if not NATIVE_NOISE.search(line)]
            if pending and not re.match(rb"[IWEF]\d|WARNING: All", pending):
                kept.append(pending)  # a progress bar's line: no newline to wait for
                pending = b""
            if kept:
                os.write(terminal, b"".join(kept))

    threading.Thread(target=forward, daemon=True, name="lca-stderr-filter").start()
