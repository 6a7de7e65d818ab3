"""``lca import``: a run made from saved checkpoints, allocated like a recorded one.

θ of each checkpoint becomes one row of ``trajectory.zarr``, with its optimizer step in
the ``steps`` array; each iteration of the allocation is then the straight segment between
two consecutive checkpoints (docs/checkpoints.md). The model and data are built from the
config as ``lca train`` builds them (``model.builder``/``data.builder`` for one's own code),
so the run allocates, verifies and reports with no further arguments.

The sequence is checked before anything is written, each problem in one line: a file
whose name holds no step number (then ``--steps``), two checkpoints of one step,
checkpoints out of training order, a missing step of an evenly spaced sequence. Each file
is checked against the model as it is read (`lca.tensorflow.checkpoints`,
`lca.torch.checkpoints`); a failed import leaves no run behind.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError
from ..storage import (
    CONFIG_FILE,
    RunError,
    TrajectoryWriter,
    location,
    prepare_run_dir,
    run_lock,
    trajectory_attrs,
    write_fixed_weights,
)
from ..storage.base import has_contents
from ..storage.trajectory import IMPORTED_BY

#: the file names of the checkpoints a folder is searched for (longest suffix first)
CHECKPOINT_SUFFIXES = (".weights.h5", ".safetensors", ".ckpt", ".pth", ".pt", ".bin")

_HEADER = (
    "# Written by lca import: θ from saved checkpoints (trajectory.zarr's steps and\n"
    "# checkpoints say which); `training` and `optimizer` are informational.\n"
)


@dataclass
class CheckpointSequence:
    """Checkpoint files in training order with their optimizer steps."""

    paths: list[Path]
    steps: np.ndarray


@dataclass
class ImportResult:
    run_dir: Path
    checkpoints: int
    first_step: int
    last_step: int
    record_every: int | None
    seconds: float


def step_of(path: Path) -> int | None:
    """The step number in a checkpoint's name: its last number (``ckpt-1200.weights.h5``,
    ``step_300.safetensors``, ``model-00042.pt``); None if it holds none."""
    name = path.name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            name = name.removesuffix(suffix)
            break
    else:
        name = path.stem
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def parse_steps(text: str | None) -> list[int] | None:
    """``--steps 0,100,200`` as a list (None when not given)."""
    if text is None:
        return None
    try:
        return [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ConfigError(f"--steps: {text!r} is not a comma-separated list of steps") from None


def checkpoint_sequence(
    sources: Sequence[str | Path],
    *,
    steps: Sequence[int] | None = None,
    pattern: str | None = None,
    allow_gaps: bool = False,
) -> CheckpointSequence:
    """The checkpoints of ``sources`` (files in training order, or folders, whose checkpoint
    files are taken in step order; ``pattern`` selects a folder's files) with their steps."""
    paths: list[Path] = []
    for source in sources:
        where = location(source)
        if where.is_dir():
            found = [
                f
                for f in where.glob(pattern or "*")
                if f.is_file() and f.name.endswith(CHECKPOINT_SUFFIXES)
            ]
            if not found:
                kinds = ", ".join(CHECKPOINT_SUFFIXES)
                raise RunError(f"{where}: no checkpoint files ({kinds}) match {pattern or '*'}")
            paths += sorted(found, key=lambda f: (_named_step(f) if steps is None else 0, f.name))
        elif where.is_file():
            paths.append(where)
        else:
            raise RunError(f"{where}: no such checkpoint file or folder")
    if steps is None:
        steps = [_named_step(p) for p in paths]
    elif len(steps) != len(paths):
        raise ConfigError(f"--steps gives {len(steps)} steps for {len(paths)} checkpoints")
    if len(paths) < 2:
        raise RunError("one checkpoint has no segment to allocate: give at least two")
    steps = np.asarray(steps, np.int64)
    _check_order(paths, steps, allow_gaps)
    return CheckpointSequence(paths, steps)


def _named_step(path: Path) -> int:
    step = step_of(path)
    if step is None:
        raise RunError(f"{path}: no step number in its name; give them with --steps")
    return step


def _check_order(paths: list[Path], steps: np.ndarray, allow_gaps: bool) -> None:
    """One line for a negative step, a step twice, a step out of order or a missing one."""
    if steps[0] < 0:
        raise RunError(f"{paths[0]}: step {steps[0]} is negative")
    for i in range(1, len(steps)):
        a, b = steps[i - 1], steps[i]
        if b == a:
            raise RunError(f"step {a} twice: {paths[i - 1]} and {paths[i]}")
        if b < a:
            raise RunError(
                f"{paths[i]} (step {b}) comes after {paths[i - 1]} (step {a}): give the "
                "checkpoints in training order (or their folder, read in step order)"
            )
    gap = missing_step(steps)
    if gap is not None and not allow_gaps:
        i, step, every = gap
        raise RunError(
            f"step {step} is missing: the checkpoints are every {every} steps and none is "
            f"between {paths[i].name} and {paths[i + 1].name}; pass --allow-gaps to allocate "
            "the longer segment"
        )


def missing_step(steps: np.ndarray) -> tuple[int, int, int] | None:
    """``(i, step, spacing)`` of the first step missing between checkpoint i and i+1 of an
    evenly spaced sequence, or None.

    The spacing is the smallest one, when at least half the segments have it; a missing
    step is a segment a whole multiple of it long. The last segment may be shorter (training stopped
    between two checkpoints); irregular sequences (log-spaced ones) have no missing step.
    """
    lengths = np.diff(steps)
    if len(lengths) < 2:
        return None
    body = lengths[:-1]
    every = int(body.min())
    if np.count_nonzero(body == every) * 2 < len(body) or (body % every).any():
        return None
    longer = np.flatnonzero((lengths > every) & (lengths % every == 0))
    if not len(longer):
        return None
    i = int(longer[0])
    return i, int(steps[i]) + every, every


def make_reader(config: Config, dataset):
    """The checkpoint reader of ``config.framework`` (the model built as ``lca train`` does)."""
    if config.framework == "torch":
        from ..torch.checkpoints import TorchCheckpoints

        return TorchCheckpoints(config, dataset)
    from ..tensorflow.checkpoints import KerasCheckpoints

    return KerasCheckpoints(config, dataset)


def import_checkpoints(
    config: Config,
    sequence: CheckpointSequence,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Write the run directory of ``config`` with θ of every checkpoint of ``sequence``."""
    from tqdm.auto import tqdm

    from ..data import load_dataset

    start = time.perf_counter()
    run_dir = location(run_dir)
    if has_contents(run_dir) and not overwrite:
        raise RunError(f"{run_dir} already exists; pass --overwrite to replace it")
    dataset = load_dataset(config.data)
    reader = make_reader(config, dataset)
    steps = sequence.steps
    theta, first_fixed = reader.read(sequence.paths[0])  # the model fits: now write
    config = _run_config(config, steps)
    with run_lock(run_dir, "import"):
        run_dir = prepare_run_dir(run_dir, overwrite)
        writer = None
        try:
            (run_dir / CONFIG_FILE).write_text(_HEADER + config.to_yaml())
            attrs = trajectory_attrs(
                config.name,
                reader.layout,
                config.training.seed,
                dataset,
                recorded_by=IMPORTED_BY,
                versions=reader.versions,
            )
            attrs["checkpoints"] = [p.name for p in sequence.paths]
            attrs["metrics"] = "loss, accuracy and batch_indices are not in checkpoints"
            writer = TrajectoryWriter(
                run_dir,
                num_iterations=len(steps) - 1,
                num_params=reader.layout.total,
                batch_size=None,
                train_indices=dataset.train_indices,
                val_indices=dataset.val_indices,
                attrs=attrs,
                steps=steps,
            )
            if config.model.builder is not None or config.framework == "torch":
                with writer.writing():  # as lca train stores them, from the first checkpoint
                    write_fixed_weights(writer.group, first_fixed)
            writer.append(theta, None)
            changed: list[str] = []
            paths = tqdm(sequence.paths[1:], desc="import", unit="ckpt", disable=not progress)
            for path in paths:
                theta, fixed = reader.read(path)
                if not np.isfinite(theta).all():
                    raise RunError(f"{path}: θ is not finite")
                changed += [n for n in reader.changed(first_fixed, fixed) if n not in changed]
                writer.append(theta, {})
            extra = {"non_trainable_changed": changed} if changed else None
            writer.close("complete", extra)
        except BaseException:
            if writer is not None:
                writer.abort("failed")
            shutil.rmtree(run_dir / "trajectory.zarr", ignore_errors=True)
            (run_dir / CONFIG_FILE).unlink(missing_ok=True)
            raise
    spacing = writer.group.attrs.get("record_every")
    return ImportResult(
        run_dir,
        len(steps),
        int(steps[0]),
        int(steps[-1]),
        spacing,
        time.perf_counter() - start,
    )


def _run_config(config: Config, steps: np.ndarray) -> Config:
    """The config as the run's: the steps trained, and θ's spacing where it is even."""
    import dataclasses

    lengths = np.diff(steps)
    even = bool((lengths[:-1] == lengths[0]).all()) and lengths[-1] <= lengths[0]
    training = dataclasses.replace(
        config.training,
        iterations=int(steps[-1]),
        record_every=int(lengths[0]) if even else 1,
    )
    return dataclasses.replace(config, training=training)
