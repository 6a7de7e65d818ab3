"""Replaying Adam/AdamW for ``allocate.causes``: the mini-batch gradients and the moments.

Adam's step depends on its moments m, v, which only the whole history of mini-batch
gradients gives. The framework's ``BatchGradient`` (`lca.tensorflow.replay`,
`lca.torch.replay`, chosen by `lca.allocation.backends.batch_gradient`) recomputes
g_B at a recorded θ_t on the recorded batch with the training model (dropout on, with the
randomness of step t), and `prepare_adam_states` walks the
iterations once, in order, keeping m, v at the first iteration of every block in
``lca.zarr/replay_state`` so that each block (in any worker, or after a resume) replays only
its own steps. torch.optim.SGD with nesterov carries its buffer b the same way, from the
recorded steps alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..config import Config
from ..storage import RunError, Trajectory
from .backends import batch_gradient
from .cause_sums import CauseModel


def read_adam_state(store: zarr.Group, block: int) -> tuple[np.ndarray, np.ndarray]:
    """m, v at the first iteration of block ``block`` (written by the pre-pass)."""
    state = store["replay_state"]
    if int(state.attrs.get("through", 0)) <= block:
        raise RunError(f"lca.zarr/replay_state: no Adam moments for block {block} yet")
    return state["m"][block], state["v"][block]


def prepare_adam_states(
    run_dir: str | Path,
    store: zarr.Group,
    trajectory: Trajectory,
    model: CauseModel,
    config: Config,
    chunk_iterations: int,
    last_block: int,
    progress: bool = True,
) -> int:
    """Store m, v (nesterov SGD: b) at the start of every block up to ``last_block``;
    returns the steps run.

    Continues from the last state stored, so an interrupted or partial pre-pass is resumed.
    """
    state = store["replay_state"]
    through = int(state.attrs.get("through", 0))
    if through > last_block:
        return 0
    c = chunk_iterations
    if through == 0:
        m = v = None
        state["m"][0], state["v"][0] = (np.zeros(trajectory.theta.shape[1], np.float32),) * 2
        through = state.attrs["through"] = 1
        if last_block == 0:
            return 0
    else:
        m, v = read_adam_state(store, through - 1)
    replay = model.adam_replay(m, v)
    gradient = batch_gradient(run_dir, config, trajectory) if model.replays_batches else None
    first, stop = (through - 1) * c, last_block * c
    from tqdm.auto import tqdm

    rows = trajectory.theta.chunks[0]
    cached: tuple[int, np.ndarray] | None = None  # a chunk of θ rows: (first row, rows)

    def row(t: int) -> np.ndarray:
        nonlocal cached
        if cached is None or not cached[0] <= t < cached[0] + len(cached[1]):
            start = t - t % rows
            cached = (start, trajectory.theta[start : start + rows])
        return cached[1][t - cached[0]]

    for t in tqdm(range(first, stop), desc="replay optimiser", unit="it", disable=not progress):
        theta = row(t)
        if gradient is not None:
            g = gradient(t, theta)
            replay.step(t, theta, g, g)
        else:  # from the recorded steps alone
            replay.advance(t, theta, row(t + 1))
        if (t + 1) % c == 0:
            block = (t + 1) // c
            state["m"][block], state["v"][block] = replay.checkpoint()
            state.attrs["through"] = block + 1
    return max(0, stop - first)


class CauseReplay:
    """What a worker needs for the cause terms of its blocks (``allocate.causes``)."""

    def __init__(self, run_dir: str | Path, trajectory: Trajectory, config: Config) -> None:
        from .cause_sums import LevelReducer, check_replayable

        check_replayable(run_dir, trajectory, check_batches=False)  # checked before the units
        self.model = CauseModel.of_run(config, trajectory.layout_json, trajectory.attrs)
        self.reducer = LevelReducer(trajectory.layout_json)
        self.trajectory = trajectory
        self.batch_gradient = (
            batch_gradient(run_dir, config, trajectory) if self.model.replays_batches else None
        )

    def block(self, store: zarr.Group, block: int, start: int, n: int, splits, store_level: str):
        """The `cause_sums.BlockCauses` of block ``block`` (iterations start … start+n−1)."""
        from .cause_sums import BlockCauses

        before = replay = None
        if self.model.carries_state:
            replay = self.model.adam_replay(*read_adam_state(store, block))
        elif start > 0:
            rows = self.trajectory.theta[start - 1 : start + 1]
            before = rows[1].astype(np.float64) - rows[0]
        if replay is None and self.model.torch_optimizer is not None:  # SGD without nesterov
            replay = self.model.torch_optimizer.replay(previous_delta=before)
        return BlockCauses(self.model, self.reducer, splits, store_level, start, n, before, replay)
