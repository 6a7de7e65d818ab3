"""``trajectory.zarr`` read back: `Trajectory` and `open_trajectory`, the optimizer steps
whose θ is stored and what an iteration of such a store is, the examples of each recorded
iteration (`RecordedBatches`), a model's non-trainable weights, and the refusal to record
into a run directory that holds a trajectory already.

θ is stored after every optimizer step, or every k steps (``training.record_every``, a
recorder's ``record_every=``, or saved checkpoints): then the array ``steps`` holds the
optimizer step of each θ row, and each iteration of the allocation is the segment between
two consecutive rows. A store without ``steps`` has θ of every step 0..T.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .base import TRAJECTORY_STORE, RunError, has_contents, location
from .groups import open_group

STEPS_ARRAY = "steps"
#: ``recorded_by`` of a run built from saved checkpoints
IMPORTED_BY = "lca import"


def stored_steps(iterations: int, record_every: int) -> np.ndarray:
    """The optimizer steps whose θ is stored: 0, k, 2k, … and always the last one."""
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    return np.union1d(np.arange(0, iterations, record_every), [iterations]).astype(np.int64)


def segment_attrs(steps: np.ndarray, iterations: int) -> dict[str, Any]:
    """The attributes that say what one iteration of a segmented store is.

    ``record_every``: the spacing of the stored steps when every segment but the last has
    the same length (None for irregular ones); ``optimizer_steps``: the steps trained.
    """
    lengths = np.diff(steps)
    even = len(lengths) > 0 and bool((lengths[:-1] == lengths[0]).all())
    even = even and lengths[-1] <= lengths[0]
    return {
        "record_every": int(lengths[0]) if even else None,
        "optimizer_steps": int(iterations),
    }


@dataclass
class Trajectory:
    """Read side of ``trajectory.zarr``: θ rows, metrics and metadata of one training run."""

    group: zarr.Group
    path: Path

    @property
    def theta(self) -> zarr.Array:
        return self.group["theta"]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def num_iterations(self) -> int:
        return int(self.group.attrs["num_iterations"])

    @property
    def steps_recorded(self) -> int:
        return int(self.group.attrs.get("steps_recorded", 0))

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    @property
    def layout_json(self) -> list[dict]:
        return list(self.group.attrs["layout"])

    @property
    def steps(self) -> np.ndarray:
        """The optimizer step of every θ row (0..T for a store of every step)."""
        if STEPS_ARRAY in self.group:
            return np.asarray(self.group[STEPS_ARRAY][:], np.int64)
        return np.arange(self.num_iterations + 1, dtype=np.int64)

    @property
    def segmented(self) -> bool:
        """Whether an iteration is a segment of several optimizer steps (or of unknown ones:
        θ imported from checkpoints)."""
        return STEPS_ARRAY in self.group

    def segment_note(self) -> str | None:
        """One line saying what an iteration of this run is, or None for single steps."""
        return segment_note(self.attrs, self.steps if self.segmented else None)

    def require_complete(self) -> None:
        """Raise RunError unless training finished and every θ row was written."""
        status = self.group.attrs.get("status", "unknown")
        if not self.complete:
            raise RunError(
                f"{self.path}: trajectory incomplete ({self.steps_recorded} of "
                f"{self.num_iterations + 1} steps recorded, status: {status}); "
                "rerun `lca train` with --overwrite"
            )
        if self.theta.shape[0] != self.num_iterations + 1:
            raise RunError(
                f"{self.path}: theta has {self.theta.shape[0]} rows, expected "
                f"{self.num_iterations + 1}; the store is corrupt"
            )


def segment_note(attrs: dict[str, Any], steps: np.ndarray | None) -> str | None:
    """``θ every k steps: each iteration … is a segment of k optimizer steps`` (None: k=1)."""
    if steps is None:
        return None
    k = attrs.get("record_every")
    lengths = np.diff(steps)
    if k:
        head = f"θ every {k} optimizer steps"
        what = f"a segment of {k} optimizer steps"
        if len(lengths) and lengths[-1] != k:
            what += f" (the last one of {int(lengths[-1])})"
    else:
        head = "θ at irregular steps"
        lo, hi = (int(lengths.min()), int(lengths.max())) if len(lengths) else (0, 0)
        what = f"a segment of {lo} to {hi} optimizer steps"
    source = " (imported checkpoints)" if attrs.get("recorded_by") == IMPORTED_BY else ""
    return (
        f"{head}{source}: each iteration of this run is {what}; its LCA is each parameter's "
        "net move along the straight segment, not the optimizer's path"
    )


def refuse_segments(trajectory: Trajectory, what: str) -> None:
    """A one-line RunError for a measure that needs every optimizer step (``what``)."""
    attrs = trajectory.attrs
    imported = attrs.get("recorded_by") == IMPORTED_BY
    if not trajectory.segmented or (attrs.get("record_every") == 1 and not imported):
        return
    k = attrs.get("record_every")
    stored = f"θ every {k} steps" if k else "θ at irregular steps"
    if imported:
        stored = f"{stored} from saved checkpoints"
    raise RunError(
        f"{trajectory.path.parent}: {what} needs θ of every optimizer step, and this run "
        f"stores {stored}"
    )


def open_trajectory(run_dir: str | Path) -> Trajectory:
    path = location(run_dir) / TRAJECTORY_STORE
    if not path.exists():
        raise RunError(f"{run_dir}: no {TRAJECTORY_STORE}; is this a run directory of `lca train`?")
    group = open_group(path, "r")
    for key in ("theta", "loss", "accuracy"):
        if key not in group:
            raise RunError(f"{path}: array '{key}' is missing; the store is corrupt")
    if "num_iterations" not in group.attrs or "layout" not in group.attrs:
        raise RunError(f"{path}: metadata missing; the store is corrupt")
    from .integrity import warn_if_unchecked

    codecs = tuple(c.to_dict()["name"] for c in group["theta"].metadata.codecs)
    warn_if_unchecked(str(location(run_dir)), codecs)
    return Trajectory(group=group, path=path)


class RecordedBatches:
    """The training examples of each recorded iteration, read a chunk of rows at a time.

    ``batch_indices`` rows (a recorder pads short rows with -1, left out here); a full-batch
    run has no such array, and every iteration used every training example in stored order.
    """

    def __init__(self, trajectory: Trajectory, num_train: int) -> None:
        group = trajectory.group
        self.array = group.get("batch_indices")
        self.everything = np.arange(num_train, dtype=np.int64)
        self._block: tuple[int, np.ndarray] | None = None

    def __call__(self, t: int) -> np.ndarray:
        if self.array is None:
            return self.everything
        rows = self.array.chunks[0]
        first = t - t % rows
        if self._block is None or self._block[0] != first:
            self._block = (first, np.asarray(self.array[first : first + rows], np.int64))
        row = self._block[1][t - first]
        return row if row.size == 0 or row[-1] >= 0 else row[row >= 0]


def refuse_existing_recording(run_dir: Path, recording: str, owner: str, again: str) -> None:
    """A one-line RunError for a run directory that already holds a trajectory.

    A recorder does not own the training loop, so it cannot continue an interrupted
    recording: ``recording`` names what it records ("model.fit recording"), ``owner`` what
    owns the optimizer, data order and random state, ``again`` what to run again.
    """
    store = run_dir / TRAJECTORY_STORE
    if not store.exists():
        if has_contents(run_dir):
            raise RunError(f"{run_dir} already exists; pass overwrite=True to replace it")
        return
    attrs = open_group(store, "r", requirements=False).attrs.asdict()
    steps, total = attrs.get("steps_recorded", 0), attrs.get("num_iterations", -1) + 1
    if attrs.get("complete"):
        what = "a complete recording"
    elif attrs.get("recorded_by") == "lca train":
        what = f"an interrupted `lca train` run ({steps} of {total} steps; rerun it to resume)"
    else:
        what = (
            f"an interrupted {recording} ({steps} of {total} steps), which lca cannot continue "
            f"({owner} owns its optimizer, data order and random state)"
        )
    raise RunError(f"{run_dir} already holds {what}; pass overwrite=True to record {again} again")


# --- non-trainable weights (a user's model) ------------------------------------------------

FIXED_WEIGHTS_GROUP = "non_trainable"


def read_fixed_weights(group: zarr.Group) -> list[tuple[str, np.ndarray]] | None:
    """The stored non-trainable weights, or None for a run that has none stored."""
    if FIXED_WEIGHTS_GROUP not in group:
        return None
    sub = group[FIXED_WEIGHTS_GROUP]
    return [(name, sub[str(i)][...]) for i, name in enumerate(sub.attrs["names"])]
