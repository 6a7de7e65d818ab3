"""Faults of the stores and of operation: nothing lost, nothing silently wrong.

* Damaged stores: for every array of both stores, a deleted or truncated chunk is one line
  naming the run, the array and the chunk; ``lca check --repair`` then ``lca allocate``
  restores ``lca.zarr`` bitwise; damaged θ names what cannot be allocated.
* Operation: the run lock (a second allocation names the holder), a full disk during
  allocate, verify-error on partial or zero loss changes, and a run from someone else
  (safe-mode Keras JSON, ``lca describe RUN`` that imports nothing).

Resumable training (killed, out of disk, rerun) is tested in test_resume.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from click.testing import CliRunner
from helpers import (
    assert_one_line_error,
    assert_same_arrays,
    cli,
    cli_command,
    cli_env,
    cli_in_process,
    lca_arrays,
)

from lca.cli import main
from lca.storage import (
    LCA_STORE,
    LOCK_FILE,
    TRAJECTORY_STORE,
    RunError,
    RunLocked,
    open_run,
    run_lock,
)
from lca.storage.check import check_run

CONFIGS = Path(__file__).parents[1] / "configs"


# --- damaged stores ------------------------------------------------------------------------

# Which command reads each array of a tiny_fc run (train and val allocated). The arrays no
# command reads (training metrics, gradients) are reported by `lca check`.
READER = {
    (TRAJECTORY_STORE, "theta"): ["allocate", "--overwrite"],
    (TRAJECTORY_STORE, "train_indices"): ["allocate", "--overwrite"],
    (TRAJECTORY_STORE, "val_indices"): ["allocate", "--overwrite"],
    (TRAJECTORY_STORE, "loss"): ["check"],
    (TRAJECTORY_STORE, "accuracy"): ["check"],
    (TRAJECTORY_STORE, "val_accuracy"): ["check"],
    (TRAJECTORY_STORE, "batch_indices"): ["check"],
    (LCA_STORE, "done"): ["verify-error"],
    **{
        (LCA_STORE, f"{split}/{name}"): ["verify-error"]
        for split in ("train", "val")
        for name in ("lca", "loss", "error", "error_fo", "intervals")
    },
    **{(LCA_STORE, f"{split}/grad"): ["check"] for split in ("train", "val")},
}


@pytest.fixture(scope="module")
def allocated_here(allocated_tiny_run):
    """The tiny_fc run allocated with its config's settings (never modified: copy it)."""
    return allocated_tiny_run


def _arrays(run: Path) -> list[tuple[str, str]]:
    found = []
    for store in (TRAJECTORY_STORE, LCA_STORE):
        for node in (run / store).rglob("zarr.json"):
            if (node.parent / "c").is_dir():
                found.append((store, node.parent.relative_to(run / store).as_posix()))
    return sorted(found)


def _chunk_files(run: Path, store: str, array: str) -> list[Path]:
    return sorted(p for p in (run / store / array / "c").rglob("*") if p.is_file())


def _first_chunk(run: Path, store: str, array: str) -> Path:
    return _chunk_files(run, store, array)[0]


def _damage(chunk: Path, how: str) -> None:
    if how == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:-3])


def test_the_reader_table_covers_every_array(allocated_here):
    assert sorted(READER) == _arrays(allocated_here)


@pytest.mark.parametrize("how", ["delete", "truncate"])
@pytest.mark.parametrize(("store", "array"), sorted(READER))
def test_a_damaged_chunk_is_a_one_line_error_naming_run_array_and_chunk(
    allocated_here, tmp_path, store, array, how
):
    run = tmp_path / "run"
    shutil.copytree(allocated_here, run)
    _damage(_first_chunk(run, store, array), how)
    command = READER[(store, array)]
    result = CliRunner().invoke(main, [command[0], str(run), *command[1:]])
    if (array, how) == ("done", "delete"):  # an absent flag reads "not done": redo the unit
        assert result.exit_code == 1 and "allocation incomplete: 32 of 40" in result.output
        return
    assert result.exit_code == (1 if command == ["check"] else 2), result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    problem = "missing" if how == "delete" else "fails its checksum"
    if command == ["check"]:
        assert f"damaged: {store}/{array} chunk 0" in result.output
        assert problem in result.output
    else:
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.output
        assert str(run) in errors[0] and f"of {array}" in errors[0] and problem in errors[0]
        assert "chunk 0" in errors[0] and f"lca check {run}" in errors[0]


def test_reading_a_lost_theta_row_raises_instead_of_returning_zeros(allocated_here, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(allocated_here, run)
    _damage(_first_chunk(run, TRAJECTORY_STORE, "theta"), "delete")
    with pytest.raises(RunError, match=r"chunk 0,0 of theta \(steps 0–40\) is missing"):
        open_run(run).theta[3:5]


def test_check_repair_then_allocate_restores_lca_bitwise(allocated_here, tmp_path):
    original = lca_arrays(allocated_here)
    run = tmp_path / "run"
    shutil.copytree(allocated_here, run)
    chunks = {
        "train/lca": _chunk_files(run, LCA_STORE, "train/lca")[-1],  # unit 4
        "val/grad": _chunk_files(run, LCA_STORE, "val/grad")[2],  # unit 2
        "train/error": _chunk_files(run, LCA_STORE, "train/error")[1],  # unit 1
    }
    _damage(chunks["train/lca"], "delete")
    _damage(chunks["val/grad"], "truncate")
    flipped = bytearray(chunks["train/error"].read_bytes())
    flipped[len(flipped) // 2] ^= 0x10
    chunks["train/error"].write_bytes(bytes(flipped))

    runner = CliRunner()
    checked = runner.invoke(main, ["check", str(run)])
    assert checked.exit_code == 1
    assert "3 block(s) hold damaged chunks" in checked.output
    # resuming the allocation alone notices the missing chunk of a done unit
    refused = runner.invoke(main, ["allocate", str(run)])
    assert refused.exit_code == 2 and "--repair" in refused.output
    repaired = runner.invoke(main, ["check", str(run), "--repair"])
    assert repaired.exit_code == 1 and "3 block(s) marked not done" in repaired.output
    allocated_again = runner.invoke(main, ["allocate", str(run)])
    assert allocated_again.exit_code == 0, allocated_again.output
    assert "allocated 24 iterations" in allocated_again.output  # units 1, 2 and 4 of 5
    assert runner.invoke(main, ["check", str(run)]).exit_code == 0
    assert_same_arrays(lca_arrays(run), original)


def test_damaged_theta_names_lost_iterations_and_ranges_that_avoid_them(tmp_path, monkeypatch):
    from lca import allocate
    from lca.config import load_config
    from lca.training import train

    monkeypatch.setattr("lca.storage.trajectory.rows_per_chunk", lambda num_params: 8)
    run = tmp_path / "run"
    config = CONFIGS / "tiny_fc.yaml"
    train(load_config(config, ["allocate.splits=[train]"]), run, progress=False)
    _damage(run / TRAJECTORY_STORE / "theta/c/2/0", "truncate")  # steps 16–23

    report = check_run(run)
    assert not report.ok and not report.fatal
    assert report.lost_iterations == [(15, 24)]
    assert report.allowed_ranges() == [(0, 8), (24, 40)]  # whole units of 8 iterations
    text = report.to_text()
    assert "iterations 15:24 cannot be allocated" in text
    assert "`--range 0:8` and `--range 24:40` avoid them" in text
    result = CliRunner().invoke(main, ["check", str(run), "--repair"])
    assert result.exit_code == 1 and "cannot be recomputed" in result.output

    summary = allocate(run, iterations=(32, 40), progress=False)
    assert summary.iterations_this_run == 8
    with pytest.raises(RunError, match=r"chunk 2,0 of theta \(steps 16–23\) fails its checksum"):
        allocate(run, iterations=(16, 24), progress=False)


def test_runs_written_before_checksums_still_open_and_say_so(allocated_here, tmp_path):
    from lca.storage import without_checksums
    from lca.storage.integrity import _warned

    run = tmp_path / "old"
    shutil.copytree(allocated_here, run)
    # rewrite θ as an array without the crc32c codec (as lca wrote it before checksums)
    group = zarr.open_group(str(run / TRAJECTORY_STORE), mode="r+")
    theta = group["theta"][...]
    with without_checksums():
        from lca.storage import checksummed

        new = group.create_array(
            "theta",
            shape=theta.shape,
            chunks=group["theta"].chunks,
            dtype="float32",
            dimension_names=("step", "parameter"),
            compressors=checksummed(compress=False),
            overwrite=True,
        )
    new[...] = theta
    _warned.clear()
    with pytest.warns(UserWarning, match="written without checksums"):
        reopened = open_run(run)
    np.testing.assert_array_equal(reopened.theta[...], theta)
    _damage(run / TRAJECTORY_STORE / "theta/c/0/0", "truncate")  # size tells it is cut short
    with pytest.raises(RunError, match="is cut short"):
        open_run(run).theta[0]


# --- operation: locks, a full disk, verify-error, a run from someone else ------------------


@pytest.fixture(scope="module")
def allocated(allocated_runs):
    """tiny_fc allocated with one TensorFlow thread (``lca allocate --threads 1``): the
    reference of the resumed allocations below (never modified: copy it)."""
    return allocated_runs("tiny_fc", threads=1)


# --- (a), (b): the run directory's lock ------------------------------------------------------


def test_second_allocation_of_a_run_names_the_lock_holder(fresh_run):
    run_dir = fresh_run("tiny_fc")
    first = subprocess.Popen(
        cli_command("allocate", run_dir, "--threads", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / LOCK_FILE).exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first allocation never took the lock"
            time.sleep(0.05)
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        assert holder["pid"] == first.pid and holder["purpose"] == "allocate"
        second = cli_in_process("allocate", str(run_dir), "--threads", "1")
        line = assert_one_line_error(second)
        assert f"pid {first.pid} on host {socket.gethostname()}" in line
        assert "lca allocate" in line and "in use" in line
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert "40 of 40 done" in out
    assert not (run_dir / LOCK_FILE).exists()  # released
    verified = cli_in_process("verify-error", str(run_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(run_dir, **fields) -> None:
    holder = {
        "host": socket.gethostname(),
        "pid": _dead_pid(),
        "purpose": "allocate",
        "since": "2024-01-01T00:00:00+00:00",
        "version": "0.1.0",
        "token": uuid.uuid4().hex,
        **fields,
    }
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))


def test_stale_lock_on_this_host_is_taken_over(tmp_path):
    _write_lock(tmp_path)
    with pytest.warns(UserWarning, match="stale lock"), run_lock(tmp_path, "allocate") as me:
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid() == me.pid and held["token"] == me.token
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_of_a_live_or_remote_holder_is_refused(tmp_path):
    _write_lock(tmp_path, pid=os.getppid(), purpose="train")  # alive: our parent
    holder = rf"`lca train` \(pid {os.getppid()} .*kill"
    with pytest.raises(RunLocked, match=holder), run_lock(tmp_path, "allocate"):
        pass
    _write_lock(tmp_path, host="elsewhere.example")  # another host: cannot tell
    with pytest.raises(RunLocked, match="cannot tell") as caught, run_lock(tmp_path, "x"):
        pass
    assert str(tmp_path / LOCK_FILE) in str(caught.value)
    assert (tmp_path / LOCK_FILE).exists()  # someone else's lock is never removed


def test_lock_is_released_on_errors_and_reentrant_for_children(tmp_path):
    with pytest.raises(KeyboardInterrupt), run_lock(tmp_path, "allocate"):
        raise KeyboardInterrupt
    assert not (tmp_path / LOCK_FILE).exists()
    with run_lock(tmp_path, "allocate") as me:
        # a process started by the holder (as allocate's workers are) inherits its token
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from lca.storage import run_lock\n"
                "with run_lock(sys.argv[1], 'allocate') as h: print(h.pid)",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
        )
        assert child.returncode == 0, child.stderr
        assert int(child.stdout) == me.pid
        assert (tmp_path / LOCK_FILE).exists()  # the child did not release the parent's lock
    assert not (tmp_path / LOCK_FILE).exists()


def test_training_and_repair_wait_for_the_lock_holder(allocated, tmp_path):
    """`lca train` and `lca check --repair` write the run too: both name a live holder."""
    from lca.config import load_config
    from lca.training import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write_lock(run_dir, pid=os.getppid(), purpose="allocate")
    with pytest.raises(RunLocked, match=rf"`lca allocate` \(pid {os.getppid()} "):
        train(load_config(CONFIGS / "tiny_fc.yaml"), run_dir, progress=False)
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # nothing was written

    damaged = tmp_path / "damaged"
    shutil.copytree(allocated, damaged)
    (damaged / LCA_STORE / "train/error/c/0").unlink()
    _write_lock(damaged, pid=os.getppid(), purpose="allocate")
    result = CliRunner().invoke(main, ["check", str(damaged), "--repair"])
    assert result.exit_code == 2 and "is in use by `lca allocate`" in result.output
    assert zarr.open_group(str(damaged / LCA_STORE), mode="r")["done"][:].all()


# --- (c): disk full during allocate ----------------------------------------------------------


def test_disk_full_during_allocate_is_one_line_and_resumes_bitwise(
    small_disk, trained_runs, allocated
):
    run_dir = small_disk.path / "run"
    shutil.copytree(trained_runs("tiny_fc"), run_dir)
    small_disk.resize(small_disk.used_kib() + 400)  # the store and about one unit fit, not all

    failed = cli_in_process("allocate", str(run_dir), "--threads", "1")
    assert_one_line_error(
        failed, "No space left on device", str(run_dir / LCA_STORE), f"lca allocate {run_dir}"
    )
    done = zarr.open_group(str(run_dir / LCA_STORE), mode="r")["done"][:]
    assert 0 < done.sum() < done.size, done  # some units finished, the failed one is not done

    partial = cli_in_process("verify-error", str(run_dir))  # (d) a partial allocation: explained
    assert partial.returncode == 1
    assert "nan" not in partial.stdout.lower()
    assert "partial allocation" in partial.stdout and f"lca allocate {run_dir}" in partial.stdout

    small_disk.resize(64 * 1024)  # make room, then the same command resumes
    resumed = cli_in_process("allocate", str(run_dir), "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_arrays(lca_arrays(run_dir), lca_arrays(allocated))


# --- (d): verify-error explains instead of printing nan ---------------------------------------


def test_verify_error_explains_partial_zero_and_nonfinite(allocated, tmp_path):
    from lca import verify_error

    run_dir = tmp_path / "run"
    shutil.copytree(allocated, run_dir)
    group = zarr.open_group(str(run_dir / LCA_STORE), mode="r+")
    c = int(group.attrs["settings"]["chunk_iterations"])

    # partial: units 2.. not done, their rows as an unfinished allocation leaves them (fill)
    group["done"][2:] = False
    for split in ("train", "val"):
        group[split]["loss"][2 * c :] = np.nan
    report = verify_error(run_dir)
    text = report.to_text()
    assert "nan" not in text.lower(), text
    assert "partial allocation" in text and f"lca allocate {run_dir}" in text
    assert report.splits["train"].iterations_measured == 2 * c - 1
    assert np.isfinite(report.splits["train"].total_error_pct)
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON

    # the loss did not change at all: the relative total error is undefined, said so
    group["done"][:] = True
    for split in ("train", "val"):
        g = group[split]
        g["loss"][:] = 1.5
        g["lca"][:] = 0.0
        g["error"][:] = 0.0
        g["error_fo"][:] = 0.0
    report = verify_error(run_dir)
    text = report.to_text()
    assert "nan" not in text.lower(), text
    assert "undefined (ΔL = 0)" in text and "did not change" in text
    assert report.passed, report.failures()

    # a non-finite loss: the steps are named, and the check fails
    group["train"]["loss"][5] = np.inf
    report = verify_error(run_dir)
    assert not report.passed
    assert any("not finite at steps 5" in f for f in report.failures()), report.failures()
    assert "nan %" not in report.to_text()


# --- (e), (f): a run from someone else ------------------------------------------------------


def _lambda_model_json() -> str:
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(keras.layers.Dense(3)(inputs))
    return keras.Model(inputs, outputs).to_json()


def test_keras_json_with_a_lambda_is_refused_in_safe_mode(tmp_path):
    import keras

    from lca.config import ModelError
    from lca.tensorflow.models import from_keras_config

    config = _lambda_model_json()
    keras.config.enable_unsafe_deserialization()  # even then: lca stays in safe mode
    try:
        with pytest.raises(ModelError, match="bytecode"):
            from_keras_config(config)
    finally:
        from keras.src.saving import serialization_lib

        serialization_lib.global_state.set_global_attribute("safe_mode_saving", None)
    path = tmp_path / "lambda.yaml"
    model = {"builder": "lca.models:from_keras_config", "kwargs": {"config": config}}
    path.write_text(yaml.safe_dump({"model": model, "data": {"name": "synthetic"}}))
    assert_one_line_error(cli_in_process("describe", str(path)), "Python bytecode", "safe mode")


def test_describe_run_imports_none_of_its_code(fresh_run, tmp_path):
    run_dir = fresh_run("tiny_fc")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"] = {"builder": "flag_on_import:build", "kwargs": {"width": 3}}
    config["data"] = {"builder": "flag_on_import:data", "kwargs": {}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    marker = tmp_path / "imported"
    (tmp_path / "flag_on_import.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nraise SystemExit('executed')\n"
    )
    result = cli("describe", run_dir, env=cli_env(PYTHONPATH=str(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    out = result.stdout
    assert 'USER CODE: imports and calls flag_on_import:build(**{"width": 3})' in out
    assert "USER CODE: imports and calls flag_on_import:data" in out
    assert "41 of 41 steps recorded, complete" in out
    assert "lca.zarr: absent (not allocated)" in out
    assert "carry per-chunk crc32c" in out
    assert "dense_1" in out  # the stored layout


def test_describe_run_of_an_allocated_run_and_a_stored_keras_model(allocated, tmp_path):
    from lca.report.describe import describe_run

    text = describe_run(allocated).to_text()
    assert "only lca's built-in networks (fc)" in text
    assert "5 of 5 blocks done (40 of 40 iterations; complete)" in text
    assert "rule adaptive" in text and "gradients in float32" in text
    run_dir = tmp_path / "run"
    shutil.copytree(allocated, run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"] = {
        "builder": "lca.models:from_keras_config",
        "kwargs": {"config": _lambda_model_json()},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    text = describe_run(run_dir).to_text()
    assert "rebuilt in Keras safe mode" in text and "Python bytecode" in text


def test_describe_run_states_each_stores_size_on_disk(allocated):
    """``lca describe RUN`` ends the trajectory's and lca.zarr's lines with the bytes of the
    store's files, summed, in decimal units; a file:// URL (fsspec) says the same."""
    from lca.training.segments import _show

    def on_disk(store: str) -> str:
        size = sum(f.stat().st_size for f in (allocated / store).rglob("*") if f.is_file())
        return f", {_show(size)} on disk"

    for where in (str(allocated), f"file://{allocated}"):
        printed = CliRunner().invoke(main, ["describe", where]).output.splitlines()
        stores = [line for line in printed if line.startswith(("trajectory: ", "lca.zarr: "))]
        assert len(stores) == 2, printed
        assert stores[0].endswith(on_disk("trajectory.zarr")), stores
        assert stores[1].endswith(on_disk("lca.zarr")), stores
        assert " kB on disk" in stores[0]  # a tiny run: some hundred kB
