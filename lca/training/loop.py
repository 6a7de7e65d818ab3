"""Phase 1: train a network and record θ_t after every iteration, in either framework.

The loop, the batch order, the records, resume checkpoints and the one-line failures are
the same for every framework; the model and its update rules are the framework's trainer
(`lca.tensorflow.training`, `lca.torch.training`), chosen by `make_trainer`.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError
from ..config.layer_settings import LayerSettings, resolve_layer_settings  # noqa: F401 (re-exported)
from ..storage import (
    CONFIG_FILE,
    TrajectoryWriter,
    location,
    prepare_run_dir,
    run_lock,
    write_fixed_weights,
)
from ..storage import trajectory_attrs as run_attrs
from ..storage.base import writing_to
from ..storage.checkpoint import CONTINUE, RESTART, resume_plan
from ..storage.trajectory import stored_steps
from .segments import SegmentMetrics


class TrainingDiverged(RuntimeError):
    """The mini-batch loss became NaN or infinite; what was recorded stays readable."""


@dataclass
class TrainResult:
    run_dir: Path
    steps_recorded: int
    final_loss: float
    final_accuracy: float
    seconds: float


def batch_schedule(num_examples: int, batch_size: int, iterations: int, seed: int) -> np.ndarray:
    """Mini-batch example indices per iteration: a new permutation each epoch, rest dropped."""
    if batch_size > num_examples:
        raise ConfigError(
            f"training.batch_size: {batch_size} is larger than the training set ({num_examples})"
        )
    rng = np.random.default_rng(seed)
    per_epoch = num_examples // batch_size
    epochs = math.ceil(iterations / per_epoch)
    batches = [
        rng.permutation(num_examples)[: per_epoch * batch_size].reshape(per_epoch, batch_size)
        for _ in range(epochs)
    ]
    return np.concatenate(batches)[:iterations].astype(np.int64)


def make_trainer(config: Config, dataset):
    """The trainer of ``config.framework``: `lca.tensorflow.training.Trainer` or
    `lca.torch.training.TorchTrainer` (the same methods, so [`train`][lca.training.loop.train]
    drives
    either)."""
    if config.framework == "torch":
        from ..torch.training import TorchTrainer

        return TorchTrainer(config, dataset)
    from ..tensorflow.training import Trainer

    return Trainer(config, dataset)


def train(
    config: Config,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``config`` and write the run directory, resuming an interrupted run of it.

    ``resume=None`` (the default, as ``lca train``): an incomplete run of the same config in
    ``run_dir`` continues from its last checkpoint, ending bitwise equal to an uninterrupted
    run when ``threads`` is the same (it pins TensorFlow's thread counts, which fix the order
    of its reductions); ``True`` insists on continuing; ``False`` never does. A failed write
    (disk full, read-only) raises a one-line WriteFailed and leaves the run resumable. The
    environment variable ``LCA_CHUNK_ROWS`` sets the θ rows per chunk of a new run (so how
    often a checkpoint is taken; tests use it to checkpoint tiny runs).
    """
    from tqdm.auto import tqdm

    from ..data import load_dataset

    if threads is not None and config.framework == "torch":
        from ..torch.runtime import configure_torch

        configure_torch(threads)
    elif threads is not None:
        from ..tensorflow.runtime import configure_tensorflow

        configure_tensorflow(threads)
    dataset = load_dataset(config.data)
    trainer = make_trainer(config, dataset)
    fixed_before = trainer.fixed_state()
    tcfg = config.training
    full_batch = tcfg.batch_size == "full"
    if full_batch:  # every step on every training example, in their stored order
        everything = np.arange(len(dataset.y_train), dtype=np.int64)
    else:
        schedule = batch_schedule(len(dataset.y_train), tcfg.batch_size, tcfg.iterations, tcfg.seed)

    run_dir = location(run_dir)
    # θ every k steps: one row per segment (segments.py); k = 1 records every step as always
    steps = stored_steps(tcfg.iterations, tcfg.record_every) if tcfg.record_every > 1 else None
    # one writer at a time: a second `lca train` (or an allocate) on this run names the holder
    with run_lock(run_dir, "train"):
        writer, first, note = _open_writer(
            config, run_dir, trainer, dataset, overwrite, resume, threads, steps
        )
        segments = None
        if steps is not None:
            segments = SegmentMetrics(steps, None if full_batch else tcfg.batch_size)
        if note and progress:
            print(note, flush=True)

        start = time.perf_counter()
        loss = acc = float("nan")
        bar = tqdm(
            range(first, tcfg.iterations),
            initial=first,
            total=tcfg.iterations,
            desc=f"train {config.name}",
            unit="it",
            disable=not progress,
        )
        status = "interrupted"
        try:
            for t in bar:
                batch = everything if full_batch else schedule[t]
                outputs = trainer.step(batch, t)
                loss, acc = float(outputs[0]), float(outputs[1])
                bad_theta = not math.isfinite(outputs[2])  # inf or nan anywhere in θ
                if not math.isfinite(loss) or bad_theta:
                    status = f"diverged at iteration {t}"
                    what = "parameters are no longer finite" if bad_theta else f"loss is {loss}"
                    raise TrainingDiverged(
                        f"training diverged at iteration {t} ({what}); "
                        f"θ_0..θ_{t} are recorded in {run_dir}"
                    )
                metrics = {"loss": loss, "accuracy": acc}
                if not full_batch:
                    metrics["batch_indices"] = batch
                logged = tcfg.log_every and (
                    (t + 1) % tcfg.log_every == 0 or t == tcfg.iterations - 1
                )
                printed = (t + 1) % max(tcfg.log_every, 100) == 0 or t == tcfg.iterations - 1
                if segments is not None:  # a row only where a segment ends
                    metrics, logged, printed = segments.add(t, metrics, logged, printed)
                if logged:  # of θ_t+1, recorded with the update that made it
                    metrics["val_accuracy"] = trainer.validation_accuracy()
                if metrics is not None:
                    writer.append(outputs[3:], metrics)
                if t % 10 == 0 or t == tcfg.iterations - 1:
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", refresh=False)
                if logged and progress and printed:
                    val = metrics["val_accuracy"]
                    bar.write(f"iteration {t + 1}: loss {loss:.4f}, val accuracy {val:.4f}")
        except BaseException:
            bar.close()
            writer.abort(status)  # keeps what it safely can; the error raised is this one
            raise
        bar.close()
        changed = trainer.changed_state(fixed_before)
        extra = {"non_trainable_changed": changed} if changed else None
        steps = writer.close("complete", extra)
        return TrainResult(run_dir, steps, loss, acc, time.perf_counter() - start)


def _open_writer(config, run_dir, trainer, dataset, overwrite, resume, threads, steps=None):
    """The writer of a new or continued run, the first iteration left, a line saying which.

    ``steps``: the optimizer steps whose θ is stored, when not every one is.
    """
    tcfg = config.training
    snapshot = trainer.state
    plan = resume_plan(run_dir, config.to_yaml(), resume=resume, overwrite=overwrite)
    if plan == CONTINUE:
        writer, checkpoint = TrajectoryWriter.reopen(run_dir, snapshot=snapshot)
        trainer.restore(checkpoint.state, writer.path)
        before = writer.group.attrs.get("threads")
        if before != threads:
            warnings.warn(
                f"{run_dir} was trained with threads={before}, resumed with threads={threads}: "
                "the result is not bitwise what an uninterrupted run gives",
                stacklevel=3,
            )
        first = checkpoint.next_iteration
        at = checkpoint.steps
        if steps is not None:  # the update after the last stored θ
            first = at = int(steps[checkpoint.steps - 1])
        note = (
            f"resuming {run_dir} from step {at} "
            f"({tcfg.iterations - first} of {tcfg.iterations} iterations left)"
        )
        return writer, first, note
    with writing_to(run_dir):
        run_dir = prepare_run_dir(run_dir, overwrite or plan == RESTART)
        (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    writer = TrajectoryWriter(
        run_dir,
        num_iterations=tcfg.iterations if steps is None else len(steps) - 1,
        num_params=trainer.layout.total,
        batch_size=None if tcfg.batch_size == "full" else tcfg.batch_size * tcfg.record_every,
        train_indices=dataset.train_indices,
        val_indices=dataset.val_indices,
        attrs={
            **run_attrs(
                config.name,
                trainer.layout,
                tcfg.seed,
                dataset,
                recorded_by="lca train",
                versions=trainer.versions,
            ),
            "threads": threads,
        },
        rows=int(os.environ.get("LCA_CHUNK_ROWS") or 0) or None,
        snapshot=snapshot,
        steps=steps,
    )
    # a user's model (and any torch model: buffers) may hold weights outside θ
    if config.model.builder is not None or config.framework == "torch":
        with writer.writing():
            write_fixed_weights(writer.group, trainer.fixed_state())  # as built: no update yet
    writer.append(trainer.theta(), None)
    note = f"starting {run_dir} over: it stopped before its first checkpoint" * (plan == RESTART)
    return writer, 0, note
