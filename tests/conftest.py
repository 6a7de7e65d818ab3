"""Shared fixtures: tiny runs trained and allocated once, keyed by their settings.

A run is keyed by its config name, its ``--set`` overrides and (once allocated) the keyword
arguments of :func:`lca.allocate`. Each is computed at most once per test session, and once
for all workers when pytest-xdist runs the suite (a file lock in the session's shared
temporary folder). The cached runs are shared: a test that writes into a run (allocates,
reports into it, damages it) asks for a private copy (``fresh_run``, ``allocated_copy``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import SmallDisk, cli_env

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite runs on two workers on two cores: torch's OpenMP threads spin-wait, and two
# processes of two threads each on two cores are many times slower than one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The same holds for TensorFlow: every process that runs tests runs it on one thread, which is
# also what ``lca ... --threads 1`` runs in a fresh process, so a test may compare its own
# computations with such a process's bit for bit (`_allocate`). Tests of another thread count
# start a process with ``--threads N``.
TENSORFLOW_THREADS = 1


def pytest_configure(config) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ or not getattr(config.option, "numprocesses", 0):
        from lca.tensorflow.runtime import configure_tensorflow

        configure_tensorflow(TENSORFLOW_THREADS)  # before TensorFlow's first operation


CONFIGS = Path(__file__).parents[1] / "configs"

# pytest-xdist hands whole files to its workers (--dist loadfile --no-loadscope-reorder in
# pyproject.toml) in collection order: the longest files first, so that the short ones fill
# the gaps at the end instead of one worker finishing a long file alone. Measured with
# `python3 -m pytest --durations=0` on 2 cores; the other files follow in name order.
LONGEST_FIRST = (
    "test_allocation.py",
    "test_scale_out.py",
    "test_resume.py",
    "test_modes.py",
    "test_report.py",
    "test_own_model.py",
    "test_faults.py",
    "test_examples.py",
    "test_torch_pipeline.py",
    "test_torch_causes.py",
    "test_torch_example.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


class RunCache:
    """Runs computed once under a folder every worker of the session sees."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, key: dict, make) -> Path:
        """The run for ``key``, made by ``make(run_dir)`` unless a finished one is there."""
        text = json.dumps(key, sort_keys=True)
        digest = hashlib.sha1(text.encode()).hexdigest()[:12]
        folder = self.root / f"{key['config']}-{digest}"
        run_dir, finished = folder / key["config"], folder / "finished.json"
        with FileLock(str(folder) + ".lock"):
            if not finished.exists():
                shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
                folder.mkdir()
                make(run_dir)
                finished.write_text(text)
        return run_dir


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory) -> RunCache:
    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's base is a folder in the session's own: share that folder
    return RunCache((base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "lca-runs")


def _train(name: str, overrides: tuple[str, ...]):
    def make(run_dir: Path) -> None:
        from lca.config import load_config
        from lca.training import train

        train(load_config(CONFIGS / f"{name}.yaml", list(overrides)), run_dir, progress=False)

    return make


def _allocate(source: Path, allocate_kwargs: dict):
    """Allocate a copy of ``source``; with another ``threads`` than this process's
    (`TENSORFLOW_THREADS`) in a process of its own, since TensorFlow fixes its thread count
    when it starts (what ``lca allocate --threads`` does)."""

    def make(run_dir: Path) -> None:
        shutil.copytree(source, run_dir)
        if allocate_kwargs.get("threads", TENSORFLOW_THREADS) != TENSORFLOW_THREADS:
            code = (
                "import json, sys; from lca import allocate\n"
                "s = allocate(sys.argv[1], progress=False, **json.loads(sys.argv[2]))\n"
                "assert s.complete, s"
            )
            done = subprocess.run(
                [sys.executable, "-c", code, str(run_dir), json.dumps(allocate_kwargs)],
                capture_output=True,
                text=True,
                env=cli_env(),
            )
            assert done.returncode == 0, done.stderr
            return
        from lca.allocation import allocate

        summary = allocate(run_dir, progress=False, **allocate_kwargs)
        assert summary.complete and summary.iterations_done == summary.iterations_total, summary

    return make


@pytest.fixture(scope="session")
def trained_runs(run_cache):
    """``get(name, overrides)``: the config trained once (read-only: copy it to write)."""

    def get(name: str = "tiny_fc", overrides: tuple[str, ...] = ()) -> Path:
        key = {"config": name, "overrides": list(overrides)}
        return run_cache.get(key, _train(name, tuple(overrides)))

    return get


@pytest.fixture(scope="session")
def allocated_runs(run_cache, trained_runs):
    """``get(name, overrides, **allocate_kwargs)``: the trained run allocated once, to the end,
    with those arguments of :func:`lca.allocate` (read-only: ask for ``allocated_copy``)."""

    def get(name: str = "tiny_fc", overrides: tuple[str, ...] = (), **allocate_kwargs) -> Path:
        key = {"config": name, "overrides": list(overrides), "allocate": allocate_kwargs}
        return run_cache.get(key, _allocate(trained_runs(name, overrides), allocate_kwargs))

    return get


def _private_copy(source: Path, tmp_path: Path, name: str) -> Path:
    target, n = tmp_path / name, 1
    while target.exists():  # a second copy in the same test
        n += 1
        target = tmp_path / f"{name}_{n}"
    shutil.copytree(source, target)
    return target


@pytest.fixture
def fresh_run(trained_runs, tmp_path):
    """``get(name, overrides)``: a private copy of a trained tiny run, safe to allocate into."""

    def get(name: str = "tiny_fc", overrides: tuple[str, ...] = ()) -> Path:
        return _private_copy(trained_runs(name, tuple(overrides)), tmp_path, name)

    return get


@pytest.fixture
def allocated_copy(allocated_runs, tmp_path):
    """``get(name, overrides, **allocate_kwargs)``: a private copy of an allocated run."""

    def get(name: str = "tiny_fc", overrides: tuple[str, ...] = (), **allocate_kwargs) -> Path:
        source = allocated_runs(name, tuple(overrides), **allocate_kwargs)
        return _private_copy(source, tmp_path, name)

    return get


@pytest.fixture(scope="session")
def allocated_tiny_run(allocated_runs) -> Path:
    """tiny_fc allocated on train and val with its config's settings (read-only: copy it)."""
    return allocated_runs("tiny_fc")


@pytest.fixture(scope="session")
def tiny_quick_start(run_cache):
    """``run(commands)``: README's tiny quick start (``commands``: the argument lists of its
    ``lca`` commands) run once per session, each as ``python -m lca.cli ...``, in order until
    one exits non-zero, in a fresh directory holding a copy of ``configs/``. Answers that
    directory (read-only) and, per command run, its ``args``, ``returncode``, ``stdout`` and
    ``stderr``. Shared: test_examples.py checks that each command works, test_quick_start.py
    that what ``verify-error`` and ``report`` print is the quoted figures."""

    def run(commands: list[list[str]]) -> tuple[Path, list[dict]]:
        def make(workdir: Path) -> None:
            workdir.mkdir(parents=True)
            shutil.copytree(CONFIGS, workdir / "configs")
            # a user's environment: no TF_CPP_MIN_LOG_LEVEL, so the terminal is `lca`'s own
            env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
            env["MPLBACKEND"] = "Agg"
            results = []
            for args in commands:
                done = subprocess.run(
                    [sys.executable, "-m", "lca.cli", *args],
                    cwd=workdir,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    env=env,
                )
                results.append(
                    {
                        "args": list(args),
                        "returncode": done.returncode,
                        "stdout": done.stdout,
                        "stderr": done.stderr,
                    }
                )
                if done.returncode != 0:
                    break
            (workdir.parent / "commands.json").write_text(json.dumps(results))

        workdir = run_cache.get({"config": "quick_start", "commands": commands}, make)
        return workdir, json.loads((workdir.parent / "commands.json").read_text())

    return run


@pytest.fixture
def small_disk(tmp_path):
    """A size-limited tmpfs (64 MiB until resized): root's, or another user's in a user
    namespace; skips where neither may mount (then test_resume.py's quota filesystem, an
    fsspec filesystem that raises ENOSPC, is the disk-full test that runs)."""
    disk = SmallDisk(tmp_path / "disk")
    disk.path.mkdir()
    if not disk.mount(64 * 1024):
        pytest.skip(f"cannot mount a size-limited tmpfs here ({getattr(disk, 'why_not', '')})")
    try:
        yield disk
    finally:
        disk.unmount()
