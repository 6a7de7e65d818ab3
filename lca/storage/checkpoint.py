"""Resume checkpoints of ``lca train``, kept inside ``trajectory.zarr``.

A killed training continues from its last checkpoint and must end bitwise equal to a run
that was never interrupted, so a checkpoint holds everything the next update depends on that
cannot be recomputed from the config: every model variable (θ, batch-norm moving statistics,
the dropout layers' seed-generator states), the optimiser's slots, and the metric rows
(loss, accuracy, batch indices) of iterations whose metric chunk is not written yet. The
batch order is not saved: ``batch_schedule`` recomputes it from the seed.

A checkpoint is taken at each θ chunk boundary, so it matches the last θ row on disk, and is
written by the writer thread right after that chunk. Layout::

    trajectory.zarr/resume/0, resume/1   uint8 (nbytes,), one chunk each: two alternating slots
    trajectory.zarr/resume  attrs        manifest: name, dtype, shape, byte offset of each part
    trajectory.zarr         attrs        "resume": {slot, steps, metric_start, metric_rows}

A new checkpoint goes into the slot *not* named by ``attrs["resume"]``; then one metadata
write sets ``steps_recorded`` and ``resume`` together. Whatever moment a run is killed at,
the named slot is complete and consistent with the θ and metric chunks before it. On
completion the slots are deleted: a finished run carries no resume state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
import zarr

from .base import CONFIG_FILE, TRAJECTORY_STORE, RunError, has_contents, os_error_cause
from .groups import checksummed, open_group
from .raw_chunks import write_whole_raw_chunk

RESUME_GROUP = "resume"
RESUME_ATTR = "resume"
#: per-iteration metrics a trajectory records (batch_indices only for mini-batch training)
METRICS = ("loss", "accuracy", "batch_indices", "val_accuracy")
_ALIGN = 8  # every part starts on an 8-byte boundary of the packed buffer


@dataclass
class Checkpoint:
    """The state after ``steps`` θ rows (θ_0..θ_{steps-1}) were recorded."""

    steps: int
    state: list[tuple[str, np.ndarray]]  # model variables, then optimiser slots, in order
    metric_start: int  # first iteration of the metric chunk being filled
    metrics: dict[str, np.ndarray]  # its rows so far: iterations metric_start..steps-2

    @property
    def next_iteration(self) -> int:
        """The update that produces θ_steps, i.e. the first one the resumed run does."""
        return self.steps - 1


class Packer:
    """Packs a checkpoint into one fixed-size byte buffer (one chunk, one write).

    The size is fixed by the first state and the metric buffer's capacity, so both slots are
    created once with that size; the metric rows actually pending go in the root attributes.
    """

    def __init__(
        self, state: Sequence[tuple[str, np.ndarray]], metrics: dict[str, np.ndarray]
    ) -> None:
        parts = [(name, np.asarray(value)) for name, value in state]
        self.metric_names = list(metrics)  # the ones this store has, in its buffer's order
        parts += [(f"metric/{name}", metrics[name]) for name in self.metric_names]
        self.manifest, offset = [], 0
        for name, value in parts:
            self.manifest.append(
                {
                    "name": name,
                    "dtype": value.dtype.str,
                    "shape": list(value.shape),
                    "offset": offset,
                }
            )
            offset += -(-value.nbytes // _ALIGN) * _ALIGN
        self.nbytes = max(offset, 1)

    def pack(self, state: Sequence[tuple[str, np.ndarray]], metrics: dict[str, np.ndarray]):
        """The packed bytes, with 4 spare bytes after them for the chunk's crc32c."""
        backing = np.zeros(self.nbytes + 4, np.uint8)
        blob = backing[: self.nbytes]
        values = [np.asarray(v) for _, v in state] + [metrics[n] for n in self.metric_names]
        if len(values) != len(self.manifest):
            raise ValueError("the state changed its number of parts during training")
        for entry, value in zip(self.manifest, values, strict=True):
            n = value.nbytes  # metric parts: only the pending rows, a prefix of the full shape
            raw = np.ascontiguousarray(value, dtype=entry["dtype"]).reshape(-1).view(np.uint8)
            blob[entry["offset"] : entry["offset"] + n] = raw
        return blob


def write_checkpoint(
    group: zarr.Group, packer: Packer, slot: int, blob: np.ndarray, both: bool = False
) -> None:
    """Store ``blob`` in slot 0 or 1 (``both``: in each), creating the slots on first use.

    The first checkpoint fills both slots, so that no slot array ever lacks its chunk (an
    absent chunk of an array is damage to ``lca check``).
    """

    if RESUME_GROUP not in group:
        sub = group.create_group(RESUME_GROUP, attributes={"manifest": packer.manifest})
        for i in (0, 1):
            sub.create_array(
                str(i),
                shape=(packer.nbytes,),
                chunks=(packer.nbytes,),
                dtype="uint8",
                compressors=checksummed(compress=False),
                config={"write_empty_chunks": True},
            )
    for i in (1 - slot, slot) if both else (slot,):
        array = group[RESUME_GROUP][str(i)]
        if not write_whole_raw_chunk(array, 0, blob):
            array[:] = blob


def commit_attrs(steps: int, slot: int, metric_start: int, metric_rows: int) -> dict:
    """The root attributes that make slot ``slot`` the valid checkpoint (written in one go)."""
    return {
        "steps_recorded": steps,
        RESUME_ATTR: {
            "slot": slot,
            "steps": steps,
            "metric_start": metric_start,
            "metric_rows": metric_rows,
        },
    }


def read_checkpoint(group: zarr.Group) -> tuple[Checkpoint, int] | None:
    """The valid checkpoint and its slot, or None when none was committed yet."""
    info = group.attrs.get(RESUME_ATTR)
    if not info:
        return None
    where = f"{group.store_path}/{RESUME_GROUP}/{info['slot']}"
    try:
        sub = group[RESUME_GROUP]
        manifest = sub.attrs["manifest"]
        blob = sub[str(info["slot"])][:]
    except (KeyError, ValueError, OSError) as exc:
        cause = os_error_cause(exc)
        raise RunError(f"{where}: resume checkpoint unreadable ({cause})") from None
    rows = int(info["metric_rows"])
    state, metrics = [], {}
    for entry in manifest:
        shape = tuple(entry["shape"])
        name = entry["name"]
        if name.startswith("metric/"):
            shape = (rows, *shape[1:])
        dtype = np.dtype(entry["dtype"])
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        value = blob[entry["offset"] : entry["offset"] + n].view(dtype).reshape(shape).copy()
        if name.startswith("metric/"):
            metrics[name.removeprefix("metric/")] = value
        else:
            state.append((name, value))
    checkpoint = Checkpoint(
        steps=int(info["steps"]),
        state=state,
        metric_start=int(info["metric_start"]),
        metrics=metrics,
    )
    return checkpoint, int(info["slot"])


def discard_checkpoints(group: zarr.Group) -> None:
    """Delete the resume slots of a finished run (cleanup only: a failure is harmless)."""
    with contextlib.suppress(OSError, KeyError):
        if RESUME_ATTR in group.attrs:
            del group.attrs[RESUME_ATTR]
        if RESUME_GROUP in group:
            del group[RESUME_GROUP]


# --- what a rerun of `lca train` does with an existing run directory -----------------------

NEW, RESTART, CONTINUE = "new", "restart", "continue"


def resume_plan(run_dir: Path, config_yaml: str, *, resume: bool | None, overwrite: bool) -> str:
    """Whether ``lca train`` creates ``run_dir`` (NEW), starts it over (RESTART) or continues.

    ``resume=None`` is a plain rerun: an incomplete run of the same config continues (or
    starts over when it died before its first checkpoint); ``resume=True`` also insists that
    there is such a run; ``resume=False`` never continues. Everything else is a one-line
    RunError that says what to do: a complete run, a diverged one, another config, a run
    recorded by ``model.fit``.
    """
    exists = has_contents(run_dir)
    if resume and overwrite:
        raise RunError("resume and overwrite exclude each other")
    if overwrite or resume is False or not exists:
        if resume:
            raise RunError(f"{run_dir}: nothing to resume (no run there)")
        return NEW  # prepare_run_dir refuses an existing directory without overwrite
    store = run_dir / TRAJECTORY_STORE
    if not (run_dir / CONFIG_FILE).is_file() or not store.exists():
        if resume:
            raise RunError(f"{run_dir}: not a run directory of `lca train`; nothing to resume")
        return NEW
    attrs = open_group(store, "r", requirements=False).attrs.asdict()
    by = attrs.get("recorded_by", "lca train")
    if by != "lca train":
        raise RunError(
            f"{run_dir} was recorded by {by} (model.fit): lca cannot continue it; "
            "pass --overwrite to train it from the start with `lca train`"
        )
    if attrs.get("complete"):
        raise RunError(
            f"{run_dir} already exists; pass --overwrite to replace it "
            "(its training is complete: nothing to resume)"
        )
    status = str(attrs.get("status", ""))
    if status.startswith("diverged"):
        raise RunError(
            f"{run_dir}: training {status}, and would again if resumed; "
            "change the config and pass --overwrite"
        )
    saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    if isinstance(saved.get("allocate"), dict):  # saved before keys were renamed: new names
        from ..config import renamed_keys

        saved["allocate"] = renamed_keys(saved["allocate"], "allocate.", note=False)
    differences = _differences(saved, yaml.safe_load(config_yaml) or {})
    if differences:
        raise RunError(
            f"{run_dir} was trained with another config ({differences}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    return CONTINUE if attrs.get(RESUME_ATTR) else RESTART


def _differences(there: dict, here: dict, limit: int = 3) -> str:
    """``key: A in the run, B now`` for the first few differing settings, as one line."""
    a, b = _flatten(there), _flatten(here)
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
    shown = [
        f"{k}: {_show(a.get(k, _ABSENT))} in the run, {_show(b.get(k, _ABSENT))} now"
        for k in keys[:limit]
    ]
    more = f"; {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


_ABSENT = object()


def _show(value) -> str:
    return "absent" if value is _ABSENT else repr(value)


def _flatten(raw: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
