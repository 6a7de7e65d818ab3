"""``lca check RUN``: read every chunk of a run and say what is whole and what is not.

Damage in ``lca.zarr`` is recoverable: each chunk belongs to one block of the
allocation, so `lca.allocation.repair.repair_run` marks those blocks not done (and
removes their bad chunks), and ``lca allocate RUN`` recomputes exactly them.
Damage in ``trajectory.zarr`` (or in the recorder's ``data.zarr``) is not: θ cannot be
recomputed from the LCA, so the report names the steps lost and the ``--range``
ranges that avoid them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .base import DATA_STORE, LCA_STORE, TRAJECTORY_STORE, RunError, location, rows_per_chunk
from .groups import open_group
from .integrity import (
    ArrayInfo,
    Required,
    block_of_chunk,
    chunk_problem,
    lca_required,
    listed_keys,
    trajectory_required,
)
from .run import read_run_config


@dataclass
class ChunkIssue:
    store: str
    array: str
    chunk: tuple[int, ...]
    problem: str

    def __str__(self) -> str:
        return f"{self.store}/{self.array} chunk {','.join(map(str, self.chunk))}: {self.problem}"


@dataclass
class ArrayCheck:
    """One array's chunks: how many the grid has, are stored, check out, hold finite values."""

    store: str
    array: str
    chunks: int
    required: int
    present: int
    checksummed: bool
    checksum_ok: int  # present chunks that pass their checksum (or size/decode test, if none)
    finite: int | None  # decodable chunks whose values are all finite (None: not floats)
    issues: list[ChunkIssue] = field(default_factory=list)


@dataclass
class RunCheck:
    """Everything ``lca check`` found in a run directory."""

    run_dir: Path
    arrays: list[ArrayCheck]
    num_iterations: int
    block_iterations: int  # the allocation's block length (for --range advice)
    bad_blocks: list[int]  # lca.zarr blocks holding a bad chunk
    lost_iterations: list[tuple[int, int]]  # [a, b) that cannot be allocated (θ damaged)
    fatal: list[str]  # damage that no allocation can work around
    notes: list[str]

    @property
    def issues(self) -> list[ChunkIssue]:
        return [issue for a in self.arrays for issue in a.issues]

    @property
    def ok(self) -> bool:
        return not self.issues

    def allowed_ranges(self) -> list[tuple[int, int]]:
        """``--range`` ranges, in whole blocks, that avoid every lost iteration."""
        c, T = self.block_iterations, self.num_iterations
        bad = np.zeros(math.ceil(T / c), bool)
        for a, b in self.lost_iterations:
            bad[a // c : math.ceil(b / c)] = True
        ranges, start = [], None
        for k, is_bad in enumerate([*bad, True]):
            if not is_bad and start is None:
                start = k
            elif is_bad and start is not None:
                ranges.append((start * c, min(k * c, T)))
                start = None
        return ranges

    def to_text(self) -> str:
        rows = [("array", "chunks", "required", "present", "checksum OK", "finite", "problems")]
        for a in self.arrays:
            rows.append(
                (
                    f"{a.store}/{a.array}",
                    str(a.chunks),
                    str(a.required),
                    str(a.present),
                    str(a.checksum_ok) if a.checksummed else f"{a.checksum_ok} (no crc)",
                    "—" if a.finite is None else str(a.finite),
                    _problems(a.issues),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines += [""] + [f"note: {n}" for n in self.notes]
        if self.ok:
            lines.append(f"{self.run_dir}: every chunk is present and checks out")
            return "\n".join(lines)
        lines += [f"damaged: {issue}" for issue in self.issues]
        if self.bad_blocks:
            c = self.block_iterations
            spans = ", ".join(
                f"{k * c}:{min(k * c + c, self.num_iterations)}" for k in self.bad_blocks
            )
            lines.append(
                f"lca.zarr: {len(self.bad_blocks)} block(s) hold damaged chunks (iterations "
                f"{spans}); `lca check {self.run_dir} --repair` marks them for recomputation, "
                f"then `lca allocate {self.run_dir}` recomputes exactly them"
            )
        lines += [f"cannot be repaired: {reason}" for reason in self.fatal]
        if self.lost_iterations and not self.fatal:
            lost = ", ".join(f"{a}:{b}" for a, b in self.lost_iterations)
            ranges = [f"`--range {a}:{b}`" for a, b in self.allowed_ranges()]
            avoid = (
                f"{', '.join(ranges[:-1])} and {ranges[-1]} avoid them"
                if len(ranges) > 1
                else f"{ranges[0]} avoids them"
                if ranges
                else "no whole block avoids them"
            )
            lines.append(
                f"trajectory.zarr: θ is damaged, which the LCA cannot restore: iterations {lost} "
                f"cannot be allocated (retrain, or restore the run from a copy); {avoid}"
            )
        return "\n".join(lines)


def _problems(issues: list[ChunkIssue]) -> str:
    if not issues:
        return ""
    counts: dict[str, int] = {}
    for issue in issues:
        kind = "missing" if issue.problem == "missing" else "bad"
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _check_array(
    store_name: str, group: zarr.Group, array: zarr.Array, required: Required
) -> tuple[ArrayCheck, ArrayInfo, np.ndarray | None]:
    """Read every chunk of one array; returns the check, the array and ``done``'s values."""
    meta = array.metadata.to_dict()
    info = ArrayInfo.from_metadata(array.path, meta)
    encoding = meta.get("chunk_key_encoding", {})
    default = (
        encoding.get("name") == "default"
        and encoding.get("configuration", {}).get("separator", "/") == "/"
    )
    present_keys = listed_keys(group.store, f"{array.path}/c/" if default else f"{array.path}/")
    is_float = np.dtype(array.dtype).kind in "fc"
    result = ArrayCheck(store_name, array.path, 0, 0, 0, info.checksum, 0, 0 if is_float else None)
    done = np.zeros(info.grid[0], bool) if array.path == "done" else None
    for chunk in np.ndindex(*info.grid) if info.grid else [()]:
        key = f"{array.path}/c/" + "/".join(map(str, chunk)) if chunk else f"{array.path}/c"
        result.chunks += 1
        needed = required(info, chunk)
        result.required += needed
        if key not in present_keys:
            if needed:
                result.issues.append(ChunkIssue(store_name, array.path, chunk, "missing"))
            continue
        result.present += 1
        raw = sync(group.store._store.get(key, default_buffer_prototype()))
        problem = chunk_problem(info, raw.as_numpy_array()) if raw is not None else "vanished"
        if problem is None:
            try:
                values = np.asarray(array.get_block_selection(chunk))
            except Exception as exc:  # noqa: BLE001 - any decoder failure: a damaged chunk
                problem = f"cannot be decoded ({exc.__class__.__name__}: {exc})"
        if problem is not None:
            result.issues.append(ChunkIssue(store_name, array.path, chunk, problem))
            continue
        result.checksum_ok += 1
        if is_float:
            result.finite += bool(np.isfinite(values).all())
        if done is not None:
            done[chunk[0]] = bool(values.reshape(-1)[0])
    return result, info, done


def _walk(group: zarr.Group) -> list[zarr.Array]:
    arrays = [node for _, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
    # `done` first: the LCA store's requirements depend on it
    return sorted(arrays, key=lambda a: (a.path != "done", a.path))


def check_run(run_dir: str | Path) -> RunCheck:
    """Read every chunk of every store of ``run_dir``; nothing is written."""
    run_dir = location(run_dir)
    path = run_dir / TRAJECTORY_STORE
    if not path.exists():
        raise RunError(f"{run_dir}: no {TRAJECTORY_STORE}; is this a run directory of `lca train`?")
    trajectory = open_group(path, "r", requirements=False)
    attrs = trajectory.attrs
    T = int(attrs["num_iterations"])
    K = int(trajectory["theta"].shape[1])
    lca = (
        open_group(run_dir / LCA_STORE, "r", requirements=False)
        if (run_dir / LCA_STORE).exists()
        else None
    )
    if lca is not None:
        c = int(lca.attrs["settings"]["chunk_iterations"])
    else:
        c = read_run_config(run_dir).allocate.block_iterations or rows_per_chunk(K)
    report = RunCheck(run_dir, [], T, c, [], [], [], [])
    complete = bool(attrs.get("complete", False))
    if not complete:
        report.notes.append(
            f"trajectory incomplete ({attrs.get('steps_recorded', 0)} of {T + 1} steps): only "
            "recorded steps are required"
        )
    required = trajectory_required(int(attrs.get("steps_recorded", 0)), complete)
    for array in _walk(trajectory):
        result, info, _ = _check_array(TRAJECTORY_STORE, trajectory, array, required)
        report.arrays.append(result)
        for issue in result.issues:
            if array.path == "theta":
                first = issue.chunk[0] * info.chunks[0]
                last = min(first + info.chunks[0], T + 1)  # steps first..last-1 are lost
                report.lost_iterations.append((max(first - 1, 0), min(last, T)))
            elif info.dims and info.dims[0] == "iteration":
                report.notes.append(
                    f"{array.path}{info.rows(issue.chunk)}: a training metric; the allocation "
                    "does not need it"
                )
            elif not array.path.startswith("resume"):
                report.fatal.append(
                    f"trajectory.zarr/{array.path} holds what every allocation needs; "
                    "retrain (or restore the run from a copy)"
                )
    report.lost_iterations = _merge(report.lost_iterations)
    if (run_dir / DATA_STORE).exists():
        data = open_group(run_dir / DATA_STORE, "r", requirements=False)
        for array in _walk(data):
            result, _, _ = _check_array(DATA_STORE, data, array, lambda info, chunk: True)
            report.arrays.append(result)
            if result.issues:
                report.fatal.append(
                    f"data.zarr/{array.path}: the recorded examples are damaged; restore the "
                    "run from a copy"
                )
    if lca is not None:
        _check_lca(lca, report)
    else:
        report.notes.append("no lca.zarr: not allocated yet")
    return report


def _check_lca(lca: zarr.Group, report: RunCheck) -> None:
    c = report.block_iterations
    blocks = math.ceil(report.num_iterations / c)
    done = np.zeros(blocks, bool)
    bad: set[int] = set()
    for array in _walk(lca):
        result, info, values = _check_array(LCA_STORE, lca, array, lca_required(done, c))
        report.arrays.append(result)
        if values is not None:
            done[:] = values[:blocks]
        for issue in result.issues:
            block = block_of_chunk(info, issue.chunk, c, blocks)
            if array.path == "done":
                bad.add(issue.chunk[0])
            elif block is not None:
                bad.add(block)
    report.bad_blocks = sorted(bad)
    if done.all() and not bad:
        report.notes.append(f"lca.zarr: all {blocks} blocks done")
    else:
        report.notes.append(f"lca.zarr: {int(done.sum())} of {blocks} blocks done")


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged
