"""Phase 2: replay a recorded trajectory and allocate each iteration's loss change.

The T iterations are cut into blocks aligned with the Zarr chunks of ``lca.zarr`` (`store`);
a block is computed by `blocks.BlockAllocator`, which integrates the gradient along every
step with a rule of [`lca.quadrature`][lca.quadrature]; `schedulers` hands the blocks to
this process, worker processes or a Ray cluster (one `schedulers.Scheduler` interface,
options in one [`schedulers.Execution`][lca.allocation.schedulers.Execution]); `settings`
resolves what fixes the numbers ([`lca.config.AllocateConfig`][lca.config.schema.AllocateConfig]),
so that a resumed allocation ends with exactly the arrays of an uninterrupted one.
`backends` is the one interface to a framework (a run's objective, threads, GPUs, batch
gradients), `cluster` runs blocks on Ray and `repair` is ``lca check --repair``.
``--causes`` splits each share by the optimiser's step terms (`causes`; torch.optim's in
`causes_torch_optim`), replays Adam/AdamW for them (`replay`) and sums them per layer and
unit (`cause_sums`).
"""

from ..storage import read_run_config
from .blocks import BlockAllocator, BlockResult, compare_lca, load_objective
from .schedulers import (
    AllocationSummary,
    Execution,
    Scheduler,
    allocate,
    blocks_for,
    parse_gpus,
    scheduler_for,
)
from .settings import AllocationSettings, resolve_settings, subset_indices
from .store import CHECK_SCALARS, open_lca_store, unit_index

__all__ = [
    "CHECK_SCALARS",
    "AllocationSettings",
    "AllocationSummary",
    "BlockAllocator",
    "BlockResult",
    "Execution",
    "Scheduler",
    "allocate",
    "blocks_for",
    "compare_lca",
    "load_objective",
    "open_lca_store",
    "parse_gpus",
    "read_run_config",
    "resolve_settings",
    "scheduler_for",
    "subset_indices",
    "unit_index",
]
