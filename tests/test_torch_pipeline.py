"""The torch path end to end: ``framework: torch`` runs go through every command as
TensorFlow runs do, survive the same faults, and the commands that only read results
import no framework at all.

* `lca train` → `lca allocate` → `lca verify-error` PASS → `lca report` → `lca check` OK.
* Faults: `lca train` killed (SIGKILL) mid-run resumes to a bitwise-uninterrupted run (the
  torch RNG state of dropout included); `lca allocate` killed mid-run resumes to bitwise the
  uninterrupted allocation; damaged lca.zarr chunks are found by `lca check` and restored
  bitwise by `lca check --repair` then `lca allocate`.
* `--workers 2` gives the arrays of one process, bitwise.
* Fresh processes: `import lca`, `lca verify-error/report/check` import neither torch nor
  TensorFlow (a meta-path hook names the import chain if one does); training and allocating
  a torch run import no TensorFlow.
* What torch cannot do is a one-line error: TensorFlow-only networks, bfloat16/TF32.

The tiny runs: tiny_fc with ``framework: torch``, 16 iterations in 4 blocks of 4.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

torch = pytest.importorskip("torch")

from helpers import (  # noqa: E402
    assert_one_line_error,
    assert_same_arrays,
    cli_env,
    cli_in_process,
    lca_arrays,
)

from lca.storage import LCA_STORE, TRAJECTORY_STORE, open_trajectory, read_run_config  # noqa: E402

CONFIGS = Path(__file__).parents[1] / "configs"
TORCH_FC = ("framework=torch", "training.iterations=16", "allocate.block_iterations=4")
UNITS = 4


@contextlib.contextmanager
def torch_threads_kept():
    """Run `lca ... --threads 1` in this process and put torch's thread count back after it
    (the option sets it for the whole process: the tests after this one keep theirs)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_config(tmp_path: Path, name: str = "tiny_fc", extra: str = "") -> Path:
    """``configs/NAME.yaml`` with ``framework: torch`` (and ``extra`` YAML) in ``tmp_path``."""
    path = tmp_path / f"{name}.yaml"
    path.write_text((CONFIGS / f"{name}.yaml").read_text() + "framework: torch\n" + extra)
    return path


# --- the pipeline, and what each command imports ------------------------------------------

# Runs `lca ARGS` for each ARGS of argv[1] (JSON) in this fresh process, as click runs them
# from a shell, after `import lca`; exits 3 as soon as a module of argv[2] is imported, naming
# the chain: a meta-path hook keeps the lca frames of the stack of the import statement that
# loaded it (the last lookup before it was loaded: libraries also merely probe with find_spec).
WATCHED = """
import json, sys, traceback
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")
chain = {}
class Watch:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in FRAMEWORKS and top not in sys.modules:
            stack = traceback.extract_stack()[:-1]
            chain[top] = [f"{f.filename}:{f.lineno} {f.line}" for f in stack if "lca" in f.filename]
        return None
sys.meta_path.insert(0, Watch())
forbidden = set(json.loads(sys.argv[2]))

def imported(after):
    found = {m for m in forbidden if m in sys.modules}
    if found:
        print(json.dumps({"after": after, "imported": sorted(found),
                          "chains": {m: chain.get(m) for m in found}}, indent=1))
        sys.exit(3)

import lca
imported("import lca")
from lca.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
    imported(" ".join(args))
"""
NO_FRAMEWORK = ["torch", "tensorflow", "keras", "jax"]


def _watched(commands: list[list[str]], forbidden: list[str]) -> subprocess.CompletedProcess:
    commands = [[str(a) for a in args] for args in commands]
    return subprocess.run(
        [sys.executable, "-c", WATCHED, json.dumps(commands), json.dumps(forbidden)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )


def test_train_allocate_verify_report_check(tmp_path):
    """A torch run on the command line, as a user runs it: `lca train` and `lca allocate` in
    a process that never imports TensorFlow (nor Keras, JAX); `lca verify-error`, `lca report`
    and `lca check` of the result in one that imports no framework at all."""
    run = tmp_path / "run"
    commands = [
        ["train", torch_config(tmp_path), "--out", run, "--iterations", "16",
         "--set", "allocate.block_iterations=4", "--set", "allocate.precision=auto"],
        ["allocate", run],
    ]  # fmt: skip
    done = _watched(commands, ["tensorflow", "keras", "jax"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"recorded 17 steps in {run}" in done.stdout
    assert f"16 of 16 done in {run / LCA_STORE}" in done.stdout
    assert read_run_config(run).framework == "torch"
    trajectory = open_trajectory(run)
    assert trajectory.complete and trajectory.theta.shape == (17, 1210)
    versions = trajectory.attrs["versions"]
    assert versions["torch"] == torch.__version__ and "tensorflow" not in versions
    first = trajectory.layout_json[0]
    assert (first["name"], first["shape"]) == ("dense_1/weight", [16, 64])  # torch's (out, in)
    # precision auto: float32 for torch (TensorFlow picks bfloat16 on CPUs with bf16 units)
    assert zarr.open_group(str(run / LCA_STORE), mode="r").attrs["precision"] == "float32"

    done = _watched(
        [["verify-error", run], ["report", run, "--frames", "1"], ["check", run]], NO_FRAMEWORK
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS: every iteration within the threshold" in done.stdout
    assert f"report written to {run / 'report'}" in done.stdout
    assert f"all {UNITS} blocks done" in done.stdout
    assert done.stdout.strip().endswith(f"{run}: every chunk is present and checks out")
    markdown = (run / "report" / "report.md").read_text()
    assert "dense_1" in markdown and "dense_2" in markdown


def test_reading_a_tensorflow_run_imports_no_framework(allocated_copy):
    """`lca verify-error` and `lca check` of a TensorFlow run (the shared tiny_fc run) import
    no framework either."""
    run = allocated_copy("tiny_fc")
    done = _watched([["verify-error", run], ["check", run]], NO_FRAMEWORK)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS: every iteration within the threshold" in done.stdout


# --- resumable training ---------------------------------------------------------------------

# `lca ARGS` (argv[3:]) in a process that kills itself (SIGKILL: no cleanup, no flush) when
# the torch trainer is asked for iteration argv[1], once a resume checkpoint of the run
# argv[2] is committed: tiny torch runs train in a fraction of a second, too fast to be hit
# reliably from outside, so the kill lands mid-run, after a checkpoint, every time
TRAIN_KILLED_AT = """
import json, os, signal, sys, time
from pathlib import Path
from lca.torch.training import TorchTrainer
kill_at, meta = int(sys.argv[1]), Path(sys.argv[2]) / "trajectory.zarr" / "zarr.json"
step = TorchTrainer.step
def committed():
    try:
        return bool(json.loads(meta.read_text())["attributes"].get("resume"))
    except (OSError, ValueError, KeyError):  # not there yet, or being replaced
        return False
def step_or_die(self, batch, iteration):
    if iteration == kill_at:
        deadline = time.monotonic() + 60
        while not committed() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch, iteration)
TorchTrainer.step = step_or_die
from lca.cli import main
main(sys.argv[3:])
"""

TRAJECTORY_ARRAYS = (
    "theta", "loss", "accuracy", "val_accuracy", "batch_indices", "train_indices", "val_indices"
)  # fmt: skip
BOOKKEEPING = {"resumed_at", "status", "steps_recorded", "complete"}


def _trajectory(run_dir: Path) -> tuple[dict, dict, list]:
    """What a resumed run must reproduce bit for bit: arrays, attributes, stored weights."""
    trajectory = open_trajectory(run_dir)
    trajectory.require_complete()
    group = trajectory.group
    arrays = {name: group[name][...] for name in TRAJECTORY_ARRAYS}
    attrs = {k: v for k, v in trajectory.attrs.items() if k not in BOOKKEEPING}
    return arrays, attrs, sorted(group.group_keys())


def test_training_killed_mid_run_resumes_bitwise_uninterrupted(tmp_path, monkeypatch):
    """tiny_lenet (dropout: the torch RNG state is part of the checkpoint), a checkpoint every
    4 steps, killed at iteration 14 (the last checkpoint: step 12, or an earlier one whose
    successor's write was still under way);
    one thread in every run, so that the reductions run in one order. The uninterrupted and
    the resumed run are trained in this process, the killed one in a process of its own."""
    monkeypatch.setenv("LCA_CHUNK_ROWS", "4")
    config = torch_config(tmp_path, "tiny_lenet")

    def args(out: Path) -> list[str]:
        return ["train", str(config), "--out", str(out), "--threads", "1"]

    with torch_threads_kept():
        reference = cli_in_process(*args(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "-c", TRAIN_KILLED_AT, "14", str(out), *args(out)],
        capture_output=True,
        env=cli_env(),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = open_trajectory(out)
    assert not partial.complete and partial.steps_recorded < 25

    with torch_threads_kept(), pytest.warns(UserWarning, match="stale lock of `lca train`"):
        resumed = cli_in_process(*args(out))  # the killed process held the run's lock
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} from step" in resumed.stdout
    assert open_trajectory(out).attrs["resumed_at"][0] in (4, 8, 12)
    (arrays, attrs, groups), (want, want_attrs, want_groups) = (
        _trajectory(out),
        _trajectory(tmp_path / "reference"),
    )
    for name, value in want.items():
        assert arrays[name].dtype == value.dtype and arrays[name].shape == value.shape, name
        assert arrays[name].tobytes() == value.tobytes(), f"{name} differs from the reference"
    assert attrs == want_attrs
    assert groups == want_groups == ["non_trainable"]  # no resume checkpoint left behind


# --- resumable allocation, damaged stores, workers ------------------------------------------

# `lca allocate RUN --threads 1` in a process that kills itself (SIGKILL) at its first
# gradient evaluation after two blocks are marked done (the criterion of the TensorFlow
# test in test_allocation.py, checked from inside: a torch unit lasts a fraction of a second)
ALLOCATE_KILLED = """
import os, signal, sys
from pathlib import Path
from lca.torch.objective import TorchObjective
done, call = Path(sys.argv[1]) / "lca.zarr" / "done" / "c", TorchObjective.__call__
def call_or_die(self, theta):
    if done.is_dir() and len(list(done.iterdir())) >= 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return call(self, theta)
TorchObjective.__call__ = call_or_die
from lca.cli import main
main(["allocate", sys.argv[1], "--threads", "1"])
"""


@pytest.fixture(scope="module")
def one_thread(allocated_runs) -> Path:
    """The torch run allocated in a process of its own on one thread (read only)."""
    return allocated_runs("tiny_fc", TORCH_FC, threads=1)


def test_allocation_killed_mid_run_resumes_bitwise_uninterrupted(fresh_run, one_thread):
    run = fresh_run("tiny_fc", TORCH_FC)
    killed = subprocess.run(
        [sys.executable, "-c", ALLOCATE_KILLED, str(run)], capture_output=True, env=cli_env()
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = zarr.open_group(str(run / LCA_STORE), mode="r")["done"][:]
    assert 2 <= done.sum() < UNITS, done
    with torch_threads_kept(), pytest.warns(UserWarning, match="stale lock of `lca allocate`"):
        resumed = cli_in_process("allocate", run, "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    left = 4 * (UNITS - int(done.sum()))
    assert f"allocated {left} iterations" in resumed.stdout  # the done units are kept
    assert_same_arrays(lca_arrays(run), lca_arrays(one_thread))


def test_two_workers_match_one_process_bitwise(fresh_run, one_thread):
    run = fresh_run("tiny_fc", TORCH_FC)
    result = cli_in_process("allocate", run, "--workers", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert_same_arrays(lca_arrays(run), lca_arrays(one_thread))


def _chunks(run: Path, array: str) -> list[Path]:
    return sorted(p for p in (run / LCA_STORE / array / "c").rglob("*") if p.is_file())


def test_damaged_chunks_are_found_repaired_and_restored_bitwise(allocated_copy, one_thread):
    original = lca_arrays(one_thread)
    run = allocated_copy("tiny_fc", TORCH_FC, threads=1)
    _chunks(run, "train/lca")[-1].unlink()  # unit 3: deleted
    grad = _chunks(run, "val/grad")[2]  # unit 2: truncated
    grad.write_bytes(grad.read_bytes()[:-3])
    error = _chunks(run, "train/error")[1]  # unit 1: one bit flipped
    flipped = bytearray(error.read_bytes())
    flipped[len(flipped) // 2] ^= 0x10
    error.write_bytes(bytes(flipped))

    checked = cli_in_process("check", run)
    assert checked.returncode == 1
    assert f"{LCA_STORE}/train/lca chunk 3" in checked.stdout
    assert "3 block(s) hold damaged chunks" in checked.stdout
    refused = cli_in_process("allocate", run)  # a done unit's chunk is missing: repair first
    assert refused.returncode == 2 and "--repair" in refused.stderr
    repaired = cli_in_process("check", run, "--repair")
    assert repaired.returncode == 1 and "3 block(s) marked not done" in repaired.stdout
    with torch_threads_kept():
        again = cli_in_process("allocate", run, "--threads", "1")  # as the original
    assert again.returncode == 0, again.stderr
    assert "allocated 12 iterations" in again.stdout  # units 1, 2 and 3 of 4
    assert cli_in_process("check", run).returncode == 0
    assert_same_arrays(lca_arrays(run), original)


# --- what torch cannot do -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_line", "needles"),
    [
        (
            "model: {name: resnet20}",
            ("model.name: resnet20 is built in TensorFlow only", "fc or lenet"),
        ),
        (
            "allocate: {precision: bfloat16}",
            ("allocate.precision", "torch runs are allocated in float32"),
        ),
    ],
    ids=["resnet20", "bfloat16"],
)
def test_a_torch_config_torch_cannot_run_is_one_line(tmp_path, yaml_line, needles):
    from lca.config import ConfigError, load_config

    config = tmp_path / "bad.yaml"
    config.write_text(f"framework: torch\n{yaml_line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert_one_line_error(info, *needles)
    out = tmp_path / "run"
    result = cli_in_process("train", config, "--out", out)
    assert_one_line_error(result, *needles, str(config), alone=True)
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "needles"),
    [
        (["--precision", "bfloat16"], ("--precision", "bfloat16 is TensorFlow only")),
        (["--per-class"], ("--per-class", "torch")),
    ],
    ids=["bfloat16", "per-class"],
)
def test_allocating_a_torch_run_the_tensorflow_way_is_one_line(fresh_run, option, needles):
    run = fresh_run("tiny_fc", TORCH_FC)
    result = cli_in_process("allocate", run, *option)
    assert_one_line_error(result, *needles, alone=True)
    assert not (run / LCA_STORE).exists()
    assert (run / TRAJECTORY_STORE).is_dir()
