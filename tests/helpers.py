"""Helpers shared by test modules (not fixtures).

The real command line and its environment, every array of a run's ``lca.zarr``, a model at
a stored θ, the one-line error that bad input must give, and a size-limited tmpfs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# --- the command line ------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of ``python -m lca.cli``: this one, TensorFlow's start-up logs off."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def cli_command(*args: str) -> list[str]:
    """``lca ARGS`` as a fresh Python process runs it (for Popen)."""
    return [sys.executable, "-m", "lca.cli", *map(str, args)]


def cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None, cwd=None
) -> subprocess.CompletedProcess:
    """Run ``lca ARGS`` in a fresh Python process, as a user's shell would."""
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env() if env is None else env,
        cwd=cwd,
    )


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """``lca ARGS`` run by click's CliRunner in this process, answered as :func:`cli` answers
    (exit code, stdout, stderr): for tests of what a command prints and returns, where a
    fresh process (seconds of CPU starting TensorFlow) is not what is tested."""
    import warnings

    from click.testing import CliRunner

    from lca.cli import main

    formatwarning = warnings.formatwarning  # lca's group sets its own: keep this process's
    try:
        result = CliRunner().invoke(main, [str(arg) for arg in args])
    finally:
        warnings.formatwarning = formatwarning
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug: its traceback, as the command would print it
    return subprocess.CompletedProcess(
        ["lca", *map(str, args)], result.exit_code, result.stdout, result.stderr
    )


# --- allocations ----------------------------------------------------------------------------

# lca.allocate's arguments for each store level: units without gradients, the others with
# (parameters: the tiny configs' defaults, so that it is the plain allocation)
STORE_LEVELS = {
    "parameters": {},
    "units": {"store": "units", "store_grad": False},
    "layers": {"store": "layers"},
}

# tiny_fc overrides making an allocation of five blocks that lasts seconds (MNIST-sized
# examples), long enough to kill a process inside one: each process's first the longest
# (TensorFlow's tracing)
SLOW = (
    "data.synthetic.num_examples=6000",
    "data.synthetic.image_shape=[28, 28, 1]",
    "model.hidden_units=[64]",
    "training.iterations=20",
    "allocate.block_iterations=4",
    "allocate.eval_batch_size=4000",
)


# --- the arrays of lca.zarr ------------------------------------------------------------------


def lca_arrays(run_dir) -> dict[str, np.ndarray]:
    """Every array of a run's ``lca.zarr`` (path or URL), read whole, keyed by its path in the
    store: ``done``, ``train/lca``, ``val/unit_lca/dense_1``, ``train/subset_check/...``."""
    import zarr

    from lca.storage import open_run

    store = open_run(run_dir).lca_store
    assert store is not None, f"{run_dir} is not allocated"
    return {
        path: node[...]
        for path, node in store.members(max_depth=None)
        if isinstance(node, zarr.Array)
    }


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """The same arrays, bit for bit (dtype and shape included; NaN equals NaN)."""
    assert got and got.keys() == want.keys(), (sorted(got), sorted(want))
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name, strict=True)


# --- a model at a stored θ -------------------------------------------------------------------


def set_theta(model, layout, theta: np.ndarray) -> None:
    """Assign the flat parameter vector θ to the model's trainable variables."""
    for variable, value in zip(model.trainable_variables, layout.unflatten(theta)):
        variable.assign(value)


def model_at(config, theta: np.ndarray, *, evaluation: bool = False, data=None):
    """The config's model, built as ``lca`` builds it and set to θ: (model, layout, dataset)."""
    from lca.data import load_dataset
    from lca.tensorflow.models import build_model
    from lca.tensorflow.parameters import parameter_layout

    data = load_dataset(config.data) if data is None else data
    model = build_model(config.model, data.input_shape, data.num_classes, evaluation=evaluation)
    layout = parameter_layout(model)
    set_theta(model, layout, theta)
    return model, layout, data


# --- bad input is one line -------------------------------------------------------------------


def assert_one_line_error(failure, *needles: str, exit_code: int = 2, alone: bool = False) -> str:
    """The one ``error:`` line of a failed command, or the one-line message of an exception,
    holding every needle; returns it.

    ``failure`` is a finished subprocess (its stderr), a click ``Result`` (its output), a
    ``pytest.ExceptionInfo`` or an exception (its message), or the text a command printed.
    Commands must exit with ``exit_code``, print no traceback, and end on their error line;
    ``alone``: and print nothing else there (no progress bar before it either).
    """
    if isinstance(failure, pytest.ExceptionInfo):
        failure = failure.value
    if isinstance(failure, BaseException):
        line = str(failure)
        assert "\n" not in line and line.strip() == line and line, repr(line)
    else:
        if isinstance(failure, subprocess.CompletedProcess):
            assert failure.returncode == exit_code, (failure.returncode, failure.stderr)
            text = failure.stderr
        elif hasattr(failure, "exit_code"):  # click.testing.Result
            assert failure.exit_code == exit_code, (failure.exit_code, failure.output)
            text = failure.output
        else:
            text = failure
        assert "Traceback" not in text, text
        lines = [part for line in text.splitlines() for part in line.split("\r") if part.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], text  # a progress bar may precede
        assert not alone or text.strip() == errors[0], text
        line = errors[0]
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# --- a small disk ----------------------------------------------------------------------------


class SmallDisk:
    """A size-limited tmpfs at ``path`` (disk-full tests); ``resize`` it at will.

    As root it is mounted at the folder. Another user may not mount, but may in a user and
    mount namespace of its own (``unshare -rm``, where user namespaces are enabled): a process
    there holds the tmpfs, and everyone reaches it as ``/proc/PID/root/<folder>``. Such a
    tmpfs cannot be remounted from outside, so it is made at its largest size and a ballast
    file at its root takes up what a smaller size would not have.
    """

    BALLAST = ".ballast"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.holder: subprocess.Popen | None = None
        self.largest_kib = 0

    def mount(self, size_kib: int) -> bool:
        if os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(self.path)],
                capture_output=True,
                text=True,
            )
            self.why_not = done.stderr.strip()
            return done.returncode == 0
        folder = self.path.resolve()
        script = f"mount -t tmpfs -o size={size_kib}k tmpfs '{folder}' && echo ready && exec cat"
        try:
            self.holder = subprocess.Popen(
                ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            self.why_not = f"not root, and no unshare: {exc}"
            return False
        if self.holder.stdout.readline().strip() != "ready":
            self.why_not = "not root, and no user namespace: " + self.holder.communicate()[1]
            self.holder = None
            return False
        self.path = Path(f"/proc/{self.holder.pid}/root{folder}")
        self.largest_kib = size_kib
        return True

    def resize(self, size_kib: int) -> None:
        if self.holder is None:
            subprocess.run(
                ["mount", "-o", f"remount,size={size_kib}k", str(self.path)],
                check=True,
                capture_output=True,
            )
            return
        assert size_kib <= self.largest_kib, "made at its largest size"
        ballast = self.path / self.BALLAST
        ballast.unlink(missing_ok=True)
        with open(ballast, "wb") as file:
            file.write(bytes(1024 * (self.largest_kib - size_kib)))

    def used_kib(self) -> int:
        du = subprocess.run(
            ["du", "-sk", f"--exclude={self.BALLAST}", str(self.path)],
            capture_output=True,
            text=True,
        )
        return int(du.stdout.split()[0])

    def unmount(self) -> None:
        if self.holder is None:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            return
        self.holder.stdin.close()  # its cat ends: the namespace and its tmpfs go with it
        self.holder.wait()


#: Blocks whose file may be missing because this very run is making them: ``python
#: scripts/make_figures.py suite`` runs the suite with LCA_MEASURING_SUITE=1 to quote its
#: last line, which cannot exist before the run ends. Everywhere else (CI) the set is empty.
MEASURING_NOW = {"suite", "suite_provenance"} if os.environ.get("LCA_MEASURING_SUITE") else set()


def load_make_figures():
    """scripts/make_figures.py as a module (it is a script, not part of the package)."""
    import importlib.util

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("make_figures", root / "scripts/make_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_figures"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
