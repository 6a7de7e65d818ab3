"""What every benchmark shares: the run it measures ("a config or a run") and side-by-side timing.

A shared machine drifts (other load, frequency scaling, caches), so a comparison never times
one candidate after the other: :func:`interleave` runs every candidate once per round, the
order rotating from round to round, and :func:`median_ratio` gives the median over the
rounds of the per-round ratio, the figure least moved by that drift.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


# --- the run a benchmark measures ---------------------------------------------------------


def add_target_arguments(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """The positional target(s) and ``--set``, spelled the same by every subcommand."""
    help_ = "a config file (a run is trained first) or a run directory"
    if many:
        parser.add_argument("targets", nargs="+", help=help_ + "; several are measured in turn")
    else:
        parser.add_argument("target", help=help_)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override, key=value"
    )


def run_from_target(
    target: str | Path,
    overrides: list[str],
    scratch: Path,
    *,
    name: str | None = None,
    adjust: Callable | None = None,
    private: bool = False,
) -> Path:
    """The run directory to measure: ``target`` itself if it is a run, else a config trained.

    A config is loaded with its ``--set`` overrides, changed by ``adjust(config)`` (say, to
    train as many iterations as the benchmark allocates) and trained into
    ``scratch/<name or config name>``. ``private``: a run directory given is copied into
    ``scratch`` (without its allocation) so that the benchmark may write into it.
    """
    from lca.config import load_config
    from lca.training import train

    path = Path(target)
    if path.is_dir():
        return copy_run(path, scratch / (name or path.name)) if private else path
    config = load_config(path, overrides)
    if adjust is not None:
        adjust(config)
    run_dir = scratch / (name or config.name)
    train(config, run_dir, progress=False)
    return run_dir


def copy_run(run_dir: Path, into: Path, *, link: bool = False) -> Path:
    """A run directory holding what ``run_dir`` holds but its allocation and report.

    ``link``: its items are symbolic links to ``run_dir``'s (nothing copied; only for
    benchmarks that write nothing but ``lca.zarr`` into it).
    """
    from lca.storage import LCA_STORE

    left_out = (LCA_STORE, "report")
    if not link:
        shutil.copytree(run_dir, into, ignore=shutil.ignore_patterns(*left_out))
        return into
    into.mkdir(parents=True)
    for item in run_dir.iterdir():
        if item.name not in left_out:
            (into / item.name).symlink_to(item.resolve())
    return into


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder for runs and allocations, removed at the end; under
    ``$LCA_BENCH_TMP`` when set (an allocation of MNIST-FC's 880 steps is about 4 GB)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("LCA_BENCH_TMP")) as tmp:
        yield Path(tmp)


# --- side-by-side timing ------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes."""
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def interleave(
    candidates: dict[K, Callable[[int], T]], rounds: int, *, warmup: int = 0
) -> dict[K, list[T]]:
    """Each candidate's results over ``rounds`` rounds, every candidate run once a round.

    The order rotates each round (two candidates: A B, B A, A B, …), so that drift of the
    machine hits all alike. A candidate is called with the round's number (negative for the
    ``warmup`` rounds first run, whose results are not kept: tracing, caches).
    """
    order = list(candidates)
    results: dict[K, list[T]] = {key: [] for key in order}
    for r in range(warmup + rounds):
        shift = r % len(order)
        for key in order[shift:] + order[:shift]:
            result = candidates[key](r - warmup)
            if r >= warmup:
                results[key].append(result)
    return results


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of numerator / denominator, each pair measured side by side."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def overheads(measured: list[float], base: list[float]) -> tuple[float, float, float]:
    """How much more ``measured`` took than ``base``, as fractions: best against best, median
    against median, and the median of the rounds' ratios (the figure to quote)."""
    best = min(measured) / min(base) - 1
    median = statistics.median(measured) / statistics.median(base) - 1
    return best, median, median_ratio(measured, base) - 1


# --- options -------------------------------------------------------------------------------


class Renamed(argparse.Action):
    """An option's old spelling: one line ``note: OLD is now NEW``, then the new behaviour."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"note: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)
