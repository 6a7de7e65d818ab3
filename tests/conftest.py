"""Shared fixtures: tiny synthetic runs trained once per session and copied per test."""

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """Train each tiny config at most once per test session."""
    from lca.config import load_config
    from lca.training import train

    cache: dict[tuple, Path] = {}

    def get(name: str, overrides: tuple[str, ...] = ()) -> Path:
        key = (name, overrides)
        if key not in cache:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            config = load_config(CONFIGS / f"{name}.yaml", list(overrides))
            train(config, run_dir, progress=False)
            cache[key] = run_dir
        return cache[key]

    return get


@pytest.fixture
def fresh_run(trained_runs, tmp_path):
    """A private copy of a trained tiny run, safe to allocate into."""

    def get(name: str = "tiny_fc", overrides: tuple[str, ...] = ()) -> Path:
        target = tmp_path / name
        shutil.copytree(trained_runs(name, tuple(overrides)), target)
        return target

    return get


@pytest.fixture(scope="session")
def allocated_tiny_run(trained_runs, tmp_path_factory):
    """The tiny_fc run allocated on train and val, once per session (read-only: copy it)."""
    from lca.allocation import allocate

    run_dir = tmp_path_factory.mktemp("tiny_fc_allocated") / "tiny_fc"
    shutil.copytree(trained_runs("tiny_fc"), run_dir)
    allocate(run_dir, progress=False)
    return run_dir
