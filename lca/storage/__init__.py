"""The run directory: the interface between ``lca train``, ``lca allocate`` and the analyses.

A run directory holds::

    config.yaml        the resolved configuration
    trajectory.zarr/   θ_t for every step, mini-batch metrics, the examples used (lca train)
    lca.zarr/          per split: LCA, losses, gradients, errors (lca allocate)

Both stores are Zarr v3 groups whose arrays carry dimension names (``step`` for the T+1
points θ_t, ``iteration`` for the T updates, ``parameter`` for the K weights), so
``xarray.open_zarr`` opens them, and whose attributes carry the metadata needed to read
them (parameter layout, seed, versions): nothing is encoded in file names.

One module per job: `base` (where runs live: paths and URLs), `groups` (opening
stores, checksummed arrays), `integrity` (checked chunk reads), `raw_chunks`
(copy-free chunk writes), `trajectory` (θ's writer), `trajectory_read` (θ read
back), `checkpoint` (training's resume checkpoints), `lca_arrays` (the arrays of
``lca.zarr``, described once), `lock` (the run lock), `run` (a whole run for
analyses), `outputs` (result folders written for people) and `check` (``lca check``).
"""

from .base import (
    CHUNK_BYTES,
    CONFIG_FILE,
    DATA_STORE,
    LCA_STORE,
    TRAJECTORY_STORE,
    RunError,
    WriteFailed,
    is_remote,
    location,
    prepare_run_dir,
    remove_tree,
    rows_per_chunk,
)
from .groups import checksummed, open_group, without_checksums
from .integrity import use_blockwise_crc32c
from .lock import LOCK_FILE, RunLocked, run_lock
from .raw_chunks import write_whole_raw_chunk
from .run import Run, open_run, read_run_config
from .trajectory import TrajectoryWriter, trajectory_attrs, write_fixed_weights
from .trajectory_read import (
    FIXED_WEIGHTS_GROUP,
    RecordedBatches,
    Trajectory,
    open_trajectory,
    read_fixed_weights,
    refuse_existing_recording,
)

__all__ = [
    "CHUNK_BYTES",
    "CONFIG_FILE",
    "DATA_STORE",
    "FIXED_WEIGHTS_GROUP",
    "LCA_STORE",
    "LOCK_FILE",
    "TRAJECTORY_STORE",
    "Run",
    "RunError",
    "RunLocked",
    "Trajectory",
    "TrajectoryWriter",
    "WriteFailed",
    "checksummed",
    "is_remote",
    "location",
    "open_group",
    "open_run",
    "RecordedBatches",
    "open_trajectory",
    "refuse_existing_recording",
    "trajectory_attrs",
    "prepare_run_dir",
    "read_fixed_weights",
    "remove_tree",
    "read_run_config",
    "rows_per_chunk",
    "run_lock",
    "write_fixed_weights",
    "without_checksums",
    "write_whole_raw_chunk",
]

use_blockwise_crc32c()  # Zarr's crc32c, verified without a whole-chunk copy (see integrity.py)
