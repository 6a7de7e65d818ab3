"""``lca check RUN --repair``: mark the LCA blocks holding damaged chunks as not done.

`lca.storage.check.check_run` finds the damage; each chunk of ``lca.zarr`` belongs to
one block of the allocation, so the repair removes the bad chunks and resets their blocks,
and ``lca allocate RUN`` recomputes exactly them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zarr.core.sync import sync

from ..storage import LCA_STORE, location, open_group, run_lock
from ..storage.check import RunCheck, check_run
from .settings import subset_indices


@dataclass
class RepairResult:
    blocks_reset: list[int]
    chunks_removed: int
    rewritten: list[str]


def repair_run(run_dir: str | Path, report: RunCheck | None = None) -> RepairResult:
    """Mark the LCA blocks holding damaged chunks as not done, removing those chunks.

    ``lca allocate RUN`` then recomputes exactly those blocks, with the store's own settings,
    so the repaired ``lca.zarr`` equals the original (bitwise, with the same threads). Damage
    outside ``lca.zarr`` is left alone: it cannot be recomputed from the LCA.
    """
    run_dir = location(run_dir)
    report = report or check_run(run_dir)
    result = RepairResult([], 0, [])
    lca_issues = [i for i in report.issues if i.store == LCA_STORE]
    if not lca_issues:
        return result
    with run_lock(run_dir, "check --repair"):  # not while an allocation writes the store
        _repair_lca(run_dir, report, lca_issues, result)
    return result


def _repair_lca(run_dir: Path, report: RunCheck, lca_issues, result: RepairResult) -> None:
    lca = open_group(run_dir / LCA_STORE, "r+", requirements=False)
    inner = lca.store._store
    for issue in lca_issues:
        key = f"{issue.array}/c/" + "/".join(map(str, issue.chunk))
        if issue.problem != "missing":
            sync(inner.delete(key))
            result.chunks_removed += 1
        if issue.array == "train/subset_indices":
            settings = lca.attrs["settings"]
            num_train = int(lca["train"].attrs["num_examples_full"])
            lca[issue.array][:] = subset_indices(
                num_train, settings["subset_size"], settings["subset_seed"]
            )
            result.rewritten.append(issue.array)
    for block in report.bad_blocks:
        lca["done"][block] = False  # written last: the block's other chunks are gone first
    result.blocks_reset = list(report.bad_blocks)
