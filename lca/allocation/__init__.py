"""Phase 2: replay a recorded trajectory and allocate each iteration's loss change.

The T iterations are cut into work units aligned with the Zarr chunks of ``lca.zarr``
(:mod:`.store`); a unit is computed by :class:`.chunks.ChunkAllocator`, which integrates the
gradient along every step with a rule of :mod:`lca.quadrature`; :mod:`.schedulers` hands the
units to this process, worker processes or a Ray cluster; :mod:`.settings` holds what fixes
the numbers, so that a resumed allocation ends with exactly the arrays of an uninterrupted one.
"""

from ..storage import read_run_config
from .chunks import ChunkAllocator, ChunkResult, compare_lca, load_objective
from .schedulers import AllocationSummary, allocate, chunks_for, parse_gpus
from .settings import AllocationSettings, resolve_settings, subset_indices
from .store import CHECK_SCALARS, open_lca_store, unit_index

__all__ = [
    "CHECK_SCALARS",
    "AllocationSettings",
    "AllocationSummary",
    "ChunkAllocator",
    "ChunkResult",
    "allocate",
    "chunks_for",
    "compare_lca",
    "load_objective",
    "open_lca_store",
    "parse_gpus",
    "read_run_config",
    "resolve_settings",
    "subset_indices",
    "unit_index",
]
