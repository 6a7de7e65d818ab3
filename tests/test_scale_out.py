"""Scale-out: runs at fsspec URLs, and allocation on a (local, 2-CPU) Ray cluster."""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import SLOW, assert_one_line_error, assert_same_arrays, cli, cli_in_process, lca_arrays
from test_data import cifar_sources  # noqa: F401  (the fixture, shared)

from lca.allocation import allocate
from lca.analysis.diagnostics import verify_error
from lca.storage import open_run


@pytest.fixture(scope="module")
def one_thread(allocated_runs):
    """tiny_fc allocated in one process on one TensorFlow thread: the reference (read-only)."""
    return allocated_runs("tiny_fc", threads=1)


# --- run directories at URLs --------------------------------------------------------------


def test_a_run_at_a_memory_url_is_trained_allocated_and_reported_through_fsspec(
    trained_runs, one_thread
):
    import fsspec
    from click.testing import CliRunner

    from lca.cli import main
    from lca.config import load_config
    from lca.report import make_report
    from lca.training import train

    config = load_config(trained_runs("tiny_fc") / "config.yaml")
    url = "memory://lca-tests/tiny_fc"
    memory = fsspec.filesystem("memory")
    train(config, url, progress=False, overwrite=True)
    try:
        runner = CliRunner()
        result = runner.invoke(main, ["allocate", url])  # TensorFlow runs here already
        assert result.exit_code == 0, result.output
        assert "memory://lca-tests/tiny_fc/lca.zarr" in result.output
        # everything went through the URL: the stores exist in fsspec's memory filesystem
        assert {Path(p).name for p in memory.ls("/lca-tests/tiny_fc", detail=False)} == {
            "config.yaml",
            "trajectory.zarr",
            "lca.zarr",
        }
        assert memory.exists("/lca-tests/tiny_fc/lca.zarr/train/lca/zarr.json")
        assert not Path("memory:").exists() and not Path("lca-tests").exists()
        # bitwise the same run on a local path: this process's TensorFlow runs on one thread
        # (tests/conftest.py), as the reference's did
        assert_same_arrays(lca_arrays(url), lca_arrays(one_thread))
        assert verify_error(url).passed
        verdict = runner.invoke(main, ["verify-error", url])
        assert verdict.exit_code == 0 and "PASS" in verdict.output
        run = open_run(url)
        assert run.to_xarray("train")["lca"].dims == ("iteration", "parameter")
        report = make_report([url], frames=2)
        assert str(report.out_dir) == f"{url}/report"
        assert memory.exists("/lca-tests/tiny_fc/report/report.md")
        assert memory.exists("/lca-tests/tiny_fc/report/fig3a_percent_helped.png")
    finally:
        memory.rm("/lca-tests", recursive=True)


def test_worker_processes_write_through_a_file_url(trained_runs, one_thread, tmp_path):
    """``--workers 2`` on a ``file://`` URL: separate processes each write their own chunks."""
    shared = tmp_path / "shared" / "run"
    shutil.copytree(trained_runs("tiny_fc"), shared)
    url = shared.as_uri()
    result = cli_in_process("allocate", url, "--workers", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert (shared / "lca.zarr" / "done").is_dir()
    assert_same_arrays(lca_arrays(url), lca_arrays(one_thread))


def test_datasets_load_from_urls_as_from_paths(tmp_path, cifar_sources):  # noqa: F811
    """data.path may be a URL: mnist.npz and a CIFAR tar.gz read through fsspec agree."""
    import fsspec
    from test_data import write_fake_mnist

    from lca.config import DataConfig
    from lca.data import load_dataset

    memory = fsspec.filesystem("memory")
    write_fake_mnist(tmp_path / "mnist.npz")
    sources = cifar_sources
    memory.put(str(tmp_path / "mnist.npz"), "/lca-data/mnist.npz")
    memory.put(str(sources["archive"]), "/lca-data/cifar-10-python.tar.gz")
    try:
        for name, local, url in (
            ("mnist", tmp_path / "mnist.npz", "memory://lca-data/mnist.npz"),
            ("cifar10", sources["archive"], "memory://lca-data/cifar-10-python.tar.gz"),
            ("cifar10", sources["plain"], (tmp_path / "plain").as_uri()),
        ):
            a = load_dataset(DataConfig(name=name, path=str(local), val_size=30))
            b = load_dataset(DataConfig(name=name, path=url, val_size=30))
            for field in ("x_train", "y_train", "x_val", "y_val"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    finally:
        memory.rm("/lca-data", recursive=True)


def test_a_missing_run_at_a_url_is_a_one_line_error(tmp_path):
    result = cli_in_process("allocate", (tmp_path / "nothing").as_uri())
    assert_one_line_error(result, "no config.yaml", alone=True)


# --- Ray ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ray", "auto", "--workers", "2"], "--gpus, --workers and --ray are exclusive"),
        (["--ray", "auto", "--gpus", "0"], "--gpus, --workers and --ray are exclusive"),
        (["--gpus-per-task", "1"], "--gpus-per-task and --cpus-per-task need --ray"),
        (["--cpus-per-task", "4"], "--gpus-per-task and --cpus-per-task need --ray"),
    ],
)
def test_ray_options_are_checked_before_anything_runs(args, message, tmp_path):
    from click.testing import CliRunner

    from lca.cli import main

    result = CliRunner().invoke(main, ["allocate", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output


def test_worker_count_follows_the_cluster_resources():
    from lca.allocation.cluster import worker_count
    from lca.storage import RunError

    two_nodes = [{"CPU": 32.0, "GPU": 4.0}, {"CPU": 32.0, "GPU": 4.0}]
    assert worker_count(two_nodes, 1, 1, chunks=100) == 8  # one per GPU
    assert worker_count(two_nodes, 0.5, 1, chunks=100) == 16  # two per GPU
    assert worker_count(two_nodes, 1, 16, chunks=100) == 4  # CPUs run out first
    assert worker_count(two_nodes, 0, 8, chunks=100) == 8  # CPU-only tasks
    assert worker_count(two_nodes, 1, 1, chunks=3) == 3  # no idle workers
    assert worker_count([{"CPU": 3.0}, {"CPU": 3.0}], 0, 2, chunks=10) == 2  # per node, not 6 // 2
    with pytest.raises(RunError, match="no node of the Ray cluster"):
        worker_count([{"CPU": 2.0}, {"CPU": 2.0}], 0, 4, chunks=10)  # would wait forever
    with pytest.raises(RunError, match="no node of the Ray cluster"):
        worker_count([{"CPU": 8.0}], 1, 1, chunks=10)  # no GPU anywhere


# Ray's own clocks, which a busy machine (the workers start TensorFlow, other processes load
# the CPUs) must not run out: a worker has long to register, the node to answer health
# checks; and Ray's memory monitor, which kills workers when other processes fill the
# machine's memory, is off.
RAY_PATIENCE = {
    "RAY_worker_register_timeout_seconds": "600",
    "RAY_health_check_timeout_ms": "60000",
    "RAY_health_check_failure_threshold": "20",
    "RAY_memory_monitor_refresh_ms": "0",
}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs and no dashboard, shared by this module's tests."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in RAY_PATIENCE.items():  # read by the cluster's processes at start
            patch.setenv(name, value)
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def test_ray_allocation_is_bitwise_the_local_single_worker_one(
    ray_cluster, trained_runs, one_thread, tmp_path
):
    on_ray = tmp_path / "on_ray"
    shutil.copytree(trained_runs("tiny_fc"), on_ray)
    # the real command line, joining the running cluster by its address: first a part of the
    # run (as if the cluster had gone away), then the rest, resumed from the finished chunks
    # (by this process, already connected to the cluster). One Ray worker holds the cluster's
    # two CPUs and runs TensorFlow on one thread, as the reference (several workers at once:
    # the killed-worker test below).
    ray_args = ("--ray", ray_cluster, "--cpus-per-task", "2", "--threads", "1")
    part = cli("allocate", str(on_ray), "--iterations", "8:24", *ray_args)
    assert part.returncode == 0, part.stderr
    assert "allocated 16 iterations" in part.stdout and "16 of 40 done" in part.stdout
    rest = cli_in_process("allocate", str(on_ray), *ray_args)
    assert rest.returncode == 0, rest.stderr
    assert "allocated 24 iterations" in rest.stdout and "40 of 40 done" in rest.stdout
    assert_same_arrays(lca_arrays(on_ray), lca_arrays(one_thread))
    assert verify_error(on_ray).passed


def _chunk_worker_pids(busy: bool) -> list[int]:
    """Ray names its actor processes after what they run: ``ray::_BlockWorker.run`` mid-chunk."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if title.startswith("ray::_BlockWorker") and (not busy or ".run" in title):
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_a_ray_worker_killed_mid_chunk_is_retried_and_the_result_is_unchanged(
    ray_cluster, fresh_run, allocated_runs
):
    killed_run = fresh_run("tiny_fc", SLOW)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = allocate(killed_run, ray="auto", cpus_per_task=1, progress=False)
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    victim = None
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline and victim is None:
        busy = _chunk_worker_pids(busy=True)
        if busy:
            time.sleep(0.3)  # well inside the chunk
            if busy[0] in _chunk_worker_pids(busy=True):
                victim = busy[0]
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.02)
    thread.join(timeout=900)  # however busy the machine: the rest of the run, retried
    assert not thread.is_alive(), "the allocation did not finish"
    assert victim is not None, "no chunk worker was caught mid-chunk"
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary.iterations_done == summary.iterations_total == 20
    assert victim not in _chunk_worker_pids(busy=False)  # gone (or a zombie with no title)
    clean = allocated_runs("tiny_fc", SLOW, threads=1)  # one thread, as each Ray worker
    assert_same_arrays(lca_arrays(killed_run), lca_arrays(clean))


def test_a_run_the_ray_workers_cannot_read_is_a_one_line_error(ray_cluster, tmp_path):
    from lca.allocation import AllocationSettings, Execution
    from lca.allocation.cluster import run_on_ray
    from lca.storage import RunError

    settings = AllocationSettings(
        splits=["train"], eval_batch_size=64, precision="float32", block_iterations=8
    )
    execution = Execution(ray="auto", cpus_per_task=1)
    with pytest.raises(RunError) as excinfo:
        list(run_on_ray(tmp_path / "not_here", [0], settings, execution, print))
    assert_one_line_error(excinfo, "no trajectory.zarr", "filesystem every node sees")
