"""Replaying Adam/AdamW for ``allocate.causes``: the mini-batch gradients and the moments.

Adam's step depends on its moments m, v, which only the whole history of mini-batch
gradients gives. :class:`BatchGradient` recomputes g_B at a recorded θ_t on the recorded
batch with the TensorFlow training model (dropout on, with the randomness of step t; torch
runs: :class:`lca.torch.replay.BatchGradient`, chosen by
:func:`lca.allocation.backends.batch_gradient`), and :func:`prepare_adam_states` walks the
iterations once, in order, keeping m, v at the first iteration of every work unit in
``lca.zarr/replay_state`` so that each unit (in any worker, or after a resume) replays only
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


class BatchGradient:
    """g_B(θ_t) as the training step computed it: training model, recorded batch, step t's
    dropout randomness.

    The model is rebuilt as ``lca train`` built it (same seed, so the same dropout seeds);
    Keras' seed generators hold [seed, calls] and every ``training=True`` call adds one, so
    before iteration t's gradient each generator is set to [seed, t].
    """

    def __init__(self, run_dir: str | Path, config: Config, trajectory: Trajectory) -> None:
        import keras
        import tensorflow as tf

        from ..data import load_dataset
        from ..models import build_model
        from ..models.runtime import per_example_loss

        dataset = load_dataset(config.data, run_dir)
        keras.utils.set_random_seed(config.training.seed)
        self.model = build_model(config.model, dataset.input_shape, dataset.num_classes)
        self.variables = list(self.model.trainable_variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        if sum(self.sizes) != trajectory.theta.shape[1]:
            raise RunError(f"{run_dir}: the training model's parameters differ from the recorded")
        self.seeds = [
            (v, np.array(v.numpy()))
            for v in self.model.non_trainable_variables
            if "seed_generator_state" in v.path
        ]
        self.x = tf.constant(dataset.x_train)
        self.y = tf.constant(dataset.y_train)
        if "batch_indices" in trajectory.group:
            self.batches = trajectory.group["batch_indices"]
        else:  # full batch: every training example, in stored order
            self.batches = None
            self.everything = np.arange(len(dataset.y_train), dtype=np.int64)
        loss_of = per_example_loss(config.model.loss, config.model.from_logits)

        def gradient(idx):
            x = tf.gather(self.x, idx)
            y = tf.gather(self.y, idx)
            with tf.GradientTape() as tape:
                logits = self.model(x, training=True)
                loss = tf.reduce_mean(loss_of(y, logits))
            grads = tape.gradient(loss, self.variables)
            return [tf.reshape(tf.convert_to_tensor(g), [-1]) for g in grads]

        self._gradient = tf.function(gradient, reduce_retracing=True)
        self._block: tuple[int, np.ndarray] | None = None

    def batch(self, t: int) -> np.ndarray:
        if self.batches is None:
            return self.everything
        rows = self.batches.chunks[0]
        first = t - t % rows
        if self._block is None or self._block[0] != first:
            self._block = (first, np.asarray(self.batches[first : first + rows], np.int64))
        return self._block[1][t - first]

    def __call__(self, t: int, theta: np.ndarray) -> np.ndarray:
        """(K,) float32 g_B of iteration t at θ_t (the recorded row)."""
        offset = 0
        for var, shape, size in zip(self.variables, self.shapes, self.sizes, strict=True):
            var.assign(theta[offset : offset + size].reshape(shape))
            offset += size
        for var, initial in self.seeds:
            var.assign(np.array([initial[0], t], dtype=initial.dtype))
        parts = self._gradient(self.batch(t))
        return np.concatenate([np.asarray(p) for p in parts])


def read_adam_state(store: zarr.Group, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """m, v at the first iteration of work unit ``unit`` (written by the pre-pass)."""
    state = store["replay_state"]
    if int(state.attrs.get("through", 0)) <= unit:
        raise RunError(f"lca.zarr/replay_state: no Adam moments for work unit {unit} yet")
    return state["m"][unit], state["v"][unit]


def prepare_adam_states(
    run_dir: str | Path,
    store: zarr.Group,
    trajectory: Trajectory,
    model: CauseModel,
    config: Config,
    chunk_iterations: int,
    last_unit: int,
    progress: bool = True,
) -> int:
    """Store m, v (nesterov SGD: b) at the start of every work unit up to ``last_unit``;
    returns the steps run.

    Continues from the last state stored, so an interrupted or partial pre-pass is resumed.
    """
    state = store["replay_state"]
    through = int(state.attrs.get("through", 0))
    if through > last_unit:
        return 0
    c = chunk_iterations
    if through == 0:
        m = v = None
        state["m"][0], state["v"][0] = (np.zeros(trajectory.theta.shape[1], np.float32),) * 2
        through = state.attrs["through"] = 1
        if last_unit == 0:
            return 0
    else:
        m, v = read_adam_state(store, through - 1)
    replay = model.adam_replay(m, v)
    gradient = batch_gradient(run_dir, config, trajectory) if model.replays_batches else None
    first, stop = (through - 1) * c, last_unit * c
    from tqdm.auto import tqdm

    rows = trajectory.theta.chunks[0]
    block: tuple[int, np.ndarray] | None = None

    def row(t: int) -> np.ndarray:
        nonlocal block
        if block is None or not block[0] <= t < block[0] + len(block[1]):
            start = t - t % rows
            block = (start, trajectory.theta[start : start + rows])
        return block[1][t - block[0]]

    for t in tqdm(range(first, stop), desc="replay optimiser", unit="it", disable=not progress):
        theta = row(t)
        if gradient is not None:
            g = gradient(t, theta)
            replay.step(t, theta, g, g)
        else:  # from the recorded steps alone
            replay.advance(t, theta, row(t + 1))
        if (t + 1) % c == 0:
            unit = (t + 1) // c
            state["m"][unit], state["v"][unit] = replay.checkpoint()
            state.attrs["through"] = unit + 1
    return max(0, stop - first)


class CauseReplay:
    """What a worker needs for the cause terms of its work units (``allocate.causes``)."""

    def __init__(self, run_dir: str | Path, trajectory: Trajectory, config: Config) -> None:
        from .cause_sums import LevelReducer, check_replayable

        check_replayable(run_dir, trajectory, check_batches=False)  # checked before the units
        self.model = CauseModel.of_run(config, trajectory.layout_json, trajectory.attrs)
        self.reducer = LevelReducer(trajectory.layout_json)
        self.trajectory = trajectory
        self.batch_gradient = (
            batch_gradient(run_dir, config, trajectory) if self.model.replays_batches else None
        )

    def unit(self, store: zarr.Group, chunk: int, start: int, n: int, splits, store_level: str):
        """The :class:`UnitCauses` of work unit ``chunk`` (iterations start … start+n−1)."""
        from .cause_sums import UnitCauses

        before = replay = None
        if self.model.carries_state:
            replay = self.model.adam_replay(*read_adam_state(store, chunk))
        elif start > 0:
            rows = self.trajectory.theta[start - 1 : start + 1]
            before = rows[1].astype(np.float64) - rows[0]
        if replay is None and self.model.torch_optimizer is not None:  # SGD without nesterov
            replay = self.model.torch_optimizer.replay(previous_delta=before)
        return UnitCauses(self.model, self.reducer, splits, store_level, start, n, before, replay)
