"""Resumable `lca train`: killed, out of disk or rerun, a run ends bitwise as if uninterrupted.

Runs use small θ chunks (``LCA_CHUNK_ROWS``) so that tiny configs take several resume
checkpoints, and ``--threads 1`` so that TensorFlow's reductions run in a fixed order in
every process: a run killed in a process of its own resumes in the test's process, whose
TensorFlow runs on one thread too (tests/conftest.py).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, cli_command, cli_env, cli_in_process

from lca.cli import main
from lca.storage import RunError

CONFIGS = Path(__file__).parents[1] / "configs"
TRAJECTORY_ARRAYS = (
    "theta", "loss", "accuracy", "val_accuracy", "batch_indices", "train_indices", "val_indices"
)  # fmt: skip
BOOKKEEPING = {"resumed_at", "status", "steps_recorded", "complete"}
ROWS = "4"  # θ rows per chunk: a checkpoint every 4 steps

# (config, overrides): dropout, mini-batches and SGD momentum; full batch (no batch_indices),
# AdamW (two slots, bias correction by step, decoupled decay), validation accuracy logged
SETUPS = {
    "lenet_sgd": ("tiny_lenet", ["--iterations", "400"]),
    "transformer_adamw": ("tiny_transformer", ["--iterations", "400"]),
}  # fmt: skip


def train_args(setup: str, out) -> list[str]:
    name, extra = SETUPS[setup]
    return ["train", str(CONFIGS / f"{name}.yaml"), "--out", str(out), "--threads", "1", *extra]


def env() -> dict[str, str]:
    return cli_env(LCA_CHUNK_ROWS=ROWS)


def lca(*args: str) -> subprocess.CompletedProcess:
    """``lca ARGS`` in this process, whose TensorFlow runs on one thread as ``--threads 1``
    runs it in a fresh one (tests/conftest.py): a killed process's run resumes here bitwise."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LCA_CHUNK_ROWS", ROWS)
        return cli_in_process(*args)


def snapshot(run_dir) -> dict:
    """The arrays and attributes a resumed run must reproduce bit for bit."""
    from lca.storage import open_trajectory

    traj = open_trajectory(run_dir)
    traj.require_complete()
    arrays = {name: traj.group[name][...] for name in TRAJECTORY_ARRAYS if name in traj.group}
    attrs = {k: v for k, v in traj.attrs.items() if k not in BOOKKEEPING}
    return {"arrays": arrays, "attrs": attrs, "groups": sorted(traj.group.group_keys())}


def assert_bitwise_equal(got: dict, want: dict) -> None:
    assert got["arrays"].keys() == want["arrays"].keys()
    for name in got["arrays"]:
        a, b = got["arrays"][name], want["arrays"][name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), f"{name} differs from the uninterrupted run"
    assert got["attrs"] == want["attrs"]
    assert got["groups"] == want["groups"] == []  # no resume checkpoints left behind


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Each setup trained once without interruption."""
    cache: dict[str, dict] = {}

    def get(setup: str) -> dict:
        if setup not in cache:
            out = tmp_path_factory.mktemp(setup) / "run"
            done = lca(*train_args(setup, out))
            assert done.returncode == 0, done.stderr
            cache[setup] = snapshot(out)
        return cache[setup]

    return get


def committed_checkpoint(run_dir: Path) -> bool:
    try:
        meta = json.loads((run_dir / "trajectory.zarr" / "zarr.json").read_text())
    except (OSError, ValueError):  # not there yet, or being replaced
        return False
    return bool(meta.get("attributes", {}).get("resume"))


@pytest.mark.parametrize("setup", list(SETUPS))
def test_sigkill_at_a_random_point_then_resume_is_bitwise_uninterrupted(setup, tmp_path, reference):
    out = tmp_path / "run"
    # A point seeded per setup (a failure reruns the same one): 0.12 s (lenet_sgd) and 0.67 s
    # (transformer_adamw) after the first checkpoint. Measured on 2 cores (load ≈ 9), training
    # goes on for 9.9 s (lenet_sgd) and 15.7 s (transformer_adamw) after its first
    # checkpoint: the kill lands mid-run with a margin of several seconds.
    delay = random.Random(setup).uniform(0.0, 1.0)
    proc = subprocess.Popen(
        cli_command(*train_args(setup, out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    try:
        deadline = time.monotonic() + 120
        while not committed_checkpoint(out):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)  # anywhere: between chunks, inside a write, inside a checkpoint
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    from lca.storage import open_trajectory

    killed = open_trajectory(out)
    assert not killed.complete, f"finished within {delay:.3f} s; nothing was interrupted"
    with pytest.warns(UserWarning, match="taking over the stale lock of `lca train`"):
        resumed = lca(*train_args(setup, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_bitwise_equal(snapshot(out), reference(setup))


# --- disk full ------------------------------------------------------------------------------


def test_disk_full_on_a_small_tmpfs_is_one_line_and_resumable(small_disk, reference):
    small_disk.resize(1024)
    out = small_disk.path / "run"
    full = lca(*train_args("lenet_sgd", out))
    assert_one_line_error(
        full, str(out / "trajectory.zarr"), "No space left on device", "resume from step"
    )
    small_disk.resize(64 * 1024)
    resumed = lca(*train_args("lenet_sgd", out))  # the same command, now with room
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_bitwise_equal(snapshot(out), reference("lenet_sgd"))


@pytest.mark.filterwarnings("ignore:UPath 'quota' filesystem not explicitly implemented")
def test_disk_full_on_a_quota_filesystem_is_one_line_and_resumable(reference):
    """An fsspec filesystem that raises ENOSPC past its quota (where no tmpfs can be mounted,
    the disk-full test that runs): train, fail, lift the quota, resume, as on a real disk."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class QuotaFileSystem(MemoryFileSystem):
        """An in-memory filesystem holding at most ``quota`` bytes (what zarr writes)."""

        protocol = "quota"
        store: dict = {}
        pseudo_dirs = [""]
        quota = 1_000_000

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            return super()._strip_protocol(path.removeprefix("quota://"))

        def pipe_file(self, path, value, mode="overwrite", **kwargs):
            path = self._strip_protocol(path)
            used = sum(f.getbuffer().nbytes for p, f in self.store.items() if p != path)
            if used + len(value) > self.quota:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            super().pipe_file(path, value, mode=mode, **kwargs)

    fsspec.register_implementation("quota", QuotaFileSystem, clobber=True)
    args = train_args("lenet_sgd", "quota://run")
    full = lca(*args)
    # UPath spells the URL of a protocol it does not know quota:///run
    assert_one_line_error(
        full, "quota:", "run/trajectory.zarr", "No space left on device", "resume from step"
    )
    QuotaFileSystem.quota = 2**40
    resumed = lca(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_bitwise_equal(snapshot("quota://run"), reference("lenet_sgd"))


# --- reruns -------------------------------------------------------------------------------


def _interrupt_at(monkeypatch, iteration: int) -> None:
    """Make Trainer.step raise KeyboardInterrupt at ``iteration`` (a user's Ctrl-C)."""
    from lca.tensorflow.training import Trainer

    original = Trainer.step

    def step(self, batch, t):
        if t == iteration:
            raise KeyboardInterrupt
        return original(self, batch, t)

    monkeypatch.setattr(Trainer, "step", step)


def test_rerun_resumes_complete_run_and_other_config_refuse(tmp_path, monkeypatch):

    monkeypatch.setenv("LCA_CHUNK_ROWS", ROWS)
    runner = CliRunner()
    config = str(CONFIGS / "tiny_lenet.yaml")
    plain = [config, "--out", str(tmp_path / "plain"), "--iterations", "30"]
    assert runner.invoke(main, ["train", *plain]).exit_code == 0
    want = snapshot(tmp_path / "plain")

    args = [config, "--out", str(tmp_path / "run"), "--iterations", "30"]
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 18)  # after the checkpoint at step 16, two steps into the next
        stopped = runner.invoke(main, ["train", *args])
    assert stopped.exit_code == 130
    again = runner.invoke(main, ["train", *args])  # the same arguments, no --resume
    assert again.exit_code == 0, again.output
    assert "resuming" in again.stdout and "from step 16" in again.stdout
    assert_bitwise_equal(snapshot(tmp_path / "run"), want)

    complete = runner.invoke(main, ["train", *args])
    assert complete.exit_code == 2
    assert_one_line_error(complete.stderr, "already exists; pass --overwrite")

    with monkeypatch.context() as patch:
        _interrupt_at(patch, 9)
        assert runner.invoke(main, ["train", *args, "--overwrite"]).exit_code == 130
    other = runner.invoke(main, ["train", *args, "--set", "optimizer.lr=0.03"])
    assert other.exit_code == 2
    assert_one_line_error(
        other.stderr, "another config", "optimizer.lr: 0.02 in the run, 0.03 now", "--overwrite"
    )
    nothing = runner.invoke(main, ["train", *args[:1], "--out", str(tmp_path / "x"), "--resume"])
    assert nothing.exit_code == 2 and "nothing to resume" in nothing.stderr


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch):
    from lca.config import load_config
    from lca.storage import open_trajectory
    from lca.training import train

    monkeypatch.setenv("LCA_CHUNK_ROWS", ROWS)
    config = load_config(CONFIGS / "tiny_fc.yaml", ["training.iterations=12"])
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path / "run", progress=False)
    assert open_trajectory(tmp_path / "run").steps_recorded == 3  # flushed, no checkpoint
    result = train(config, tmp_path / "run", progress=False)
    assert result.steps_recorded == 13
    train(config, tmp_path / "plain", progress=False)
    assert_bitwise_equal(snapshot(tmp_path / "run"), snapshot(tmp_path / "plain"))


def test_recording_again_into_an_interrupted_model_fit_is_one_line(tmp_path):
    """model.fit cannot be continued by lca: a second recording says so instead of resuming."""
    import keras

    from lca.keras import TrajectoryRecorder
    from lca.storage import open_trajectory

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 5:
                raise RuntimeError("simulated crash")

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = (2 * rng.normal(size=(3, 6))[y] + rng.normal(size=(300, 6))).astype("float32")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def fit(*callbacks):
        recorder = TrajectoryRecorder(tmp_path / "run", train_data=(x, y))
        model.fit(x, y, batch_size=30, epochs=1, verbose=0, callbacks=[recorder, *callbacks])

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(Crash())
    assert not open_trajectory(tmp_path / "run").complete
    with pytest.raises(RunError) as info:
        fit()
    assert_one_line_error(
        info, "interrupted model.fit recording", "lca cannot continue", "overwrite=True"
    )
