"""Phase 1: train a network and record θ_t after every iteration.

The optimiser is written out here (Keras-style heavy-ball SGD, Adam and AdamW) rather than taken
from ``keras.optimizers`` because LCA experiments need per-layer learning rates, per-layer
momentum and layers frozen from a given iteration on, and because the recorded trajectory
must be exactly what the update rule below did, which the tests re-derive.
"""

from __future__ import annotations

import contextlib
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
    RunError,
    TrajectoryWriter,
    location,
    prepare_run_dir,
    run_lock,
    write_fixed_weights,
)
from ..storage import trajectory_attrs as run_attrs
from ..storage.base import writing_to
from ..storage.checkpoint import CONTINUE, RESTART, resume_plan


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


class Trainer:
    """Holds the model, data on the device and the compiled training step.

    The torch trainer (:class:`lca.torch.training.TorchTrainer`) has the same methods, so
    :func:`train` drives either.
    """

    framework = "tensorflow"

    def __init__(self, config: Config, dataset, *, record: bool = True) -> None:
        import keras
        import tensorflow as tf

        from ..models import build_model, parameter_layout
        from ..models.runtime import per_example_loss

        self.config = config
        self.dataset = dataset
        keras.utils.set_random_seed(config.training.seed)
        self.model = build_model(config.model, dataset.input_shape, dataset.num_classes)
        self.layout = parameter_layout(self.model)
        self.settings = resolve_layer_settings(config, self.layout)
        self.variables = list(self.model.trainable_variables)
        self.per_example = per_example_loss(config.model.loss, config.model.from_logits)
        self.classification = config.model.classification
        self.x_train = tf.constant(dataset.x_train)
        self.y_train = tf.constant(dataset.y_train)
        self.x_val = tf.constant(dataset.x_val)
        self.y_val = tf.constant(dataset.y_val)
        opt = config.optimizer
        self.slots = [
            [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
            for _ in range(1 if opt.name == "sgd" else 2)
        ]
        self._step = tf.function(self._make_step(record), reduce_retracing=True)
        self._evaluate = tf.function(
            self._val_accuracy,
            input_signature=[
                tf.TensorSpec([None, *dataset.input_shape], dataset.x_val.dtype),
                tf.TensorSpec([None, *dataset.y_val.shape[1:]], dataset.y_val.dtype),
            ],
        )

    def state(self) -> list[tuple[str, np.ndarray]]:
        """What the next update depends on besides the batch order, for resume checkpoints.

        Every model variable (θ, batch-norm moving statistics, the seed-generator states
        that drive dropout) and the optimiser's slots; the iteration is the checkpoint's.
        """
        parts = [(f"model/{v.path}", v.numpy()) for v in self.model.variables]
        parts += [
            (f"slot/{k}/{i}", s.numpy())
            for k, kind in enumerate(self.slots)
            for i, s in enumerate(kind)
        ]
        return parts

    def restore(self, state: list[tuple[str, np.ndarray]], where) -> None:
        """Set the variables from a checkpoint written by :meth:`state` for the same model."""
        targets = [*self.model.variables, *(s for kind in self.slots for s in kind)]
        # by position, shape and dtype: Keras numbers the names of a process's later models
        expected = [(value.shape, value.dtype) for _, value in self.state()]
        if [(value.shape, value.dtype) for _, value in state] != expected:
            raise RunError(f"{where}: the resume checkpoint does not match the model's variables")
        for var, (_, value) in zip(targets, state, strict=True):
            var.assign(value)

    @property
    def versions(self) -> dict[str, str]:
        return tensorflow_versions()

    def fixed_state(self) -> list[tuple[str, np.ndarray]]:
        """``(name, value)`` of the weights outside θ (:func:`lca.models.fixed_weights`)."""
        from ..models import fixed_weights

        return [(name, value) for name, value, _ in fixed_weights(self.model)]

    def changed_state(self, before: list[tuple[str, np.ndarray]]) -> list[str]:
        """Names of the weights outside θ, moving statistics aside, changed since ``before``."""
        from ..models import fixed_weights

        now = fixed_weights(self.model)
        return [
            name
            for (name, old), (_, new, moving) in zip(before, now)
            if not moving and not np.array_equal(old, new)
        ]

    def theta(self) -> np.ndarray:
        """The current trainable parameters as one flat float32 vector."""
        return np.concatenate([v.numpy().reshape(-1) for v in self.variables])

    def _make_step(self, record: bool):
        import tensorflow as tf

        opt = self.config.optimizer
        momentum = [float(m) for m in self.settings.momentum]

        lr = tf.constant(self.settings.lr)
        freeze_from = tf.constant(self.settings.freeze_from)

        def step(idx, t):
            # per-variable 1/0: still trained at iteration t, or frozen from an earlier one on
            active = tf.cast(t < freeze_from, tf.float32)
            x = tf.gather(self.x_train, idx)
            y = tf.gather(self.y_train, idx)
            with tf.GradientTape() as tape:
                logits = self.model(x, training=True)
                loss = tf.reduce_mean(self.per_example(y, logits))
            grads = tape.gradient(loss, self.variables)
            if opt.name == "sgd":
                for i, (var, g) in enumerate(zip(self.variables, grads)):
                    vel = self.slots[0][i]
                    vel.assign(active[i] * (momentum[i] * vel - lr[i] * g))
                    var.assign_add(vel)
            else:  # Adam or AdamW, as keras.optimizers.Adam/AdamW compute them
                if opt.name == "adamw" and opt.weight_decay:  # decoupled, before the step
                    for i, var in enumerate(self.variables):
                        var.assign_sub(active[i] * (var * opt.weight_decay * lr[i]))
                b1, b2 = opt.beta_1, opt.beta_2
                step_f = tf.cast(t + 1, tf.float32)
                scale = tf.sqrt(1.0 - tf.pow(b2, step_f)) / (1.0 - tf.pow(b1, step_f))
                for i, (var, g) in enumerate(zip(self.variables, grads)):
                    m, v = self.slots[0][i], self.slots[1][i]
                    m.assign_add(active[i] * (g - m) * (1.0 - b1))
                    v.assign_add(active[i] * (tf.square(g) - v) * (1.0 - b2))
                    var.assign_sub(active[i] * lr[i] * scale * m / (tf.sqrt(v) + opt.epsilon))
            if self.classification:
                hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32)
                accuracy = tf.reduce_mean(hits)
            else:  # a regressor has no accuracy
                accuracy = tf.constant(float("nan"))
            outputs = [loss, accuracy]
            if record:  # θ after the update: a finiteness probe, then each variable's value
                outputs.append(tf.add_n([tf.reduce_sum(v) for v in self.variables]))
                outputs.extend(tf.identity(v.value) for v in self.variables)
            return outputs

        return step

    def _val_accuracy(self, x, y):
        import tensorflow as tf

        logits = self.model(x, training=False)
        return tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.int64)
        )

    def step(self, batch: np.ndarray, iteration: int):
        """One update on the examples ``batch``; returns (loss, accuracy[, θ after])."""
        outputs = self._step(batch, np.int64(iteration))
        # np.asarray shares each tensor's buffer: θ is copied once, into the writer's buffer
        return [np.asarray(o) for o in outputs]

    def validation_accuracy(self, batch_size: int = 2500) -> float:
        """Accuracy on the validation split in inference mode (moving BN statistics).

        NaN for a regressor or without a validation split.
        """
        n = int(self.y_val.shape[0])
        if not self.classification or n == 0:
            return float("nan")
        hits = sum(
            int(self._evaluate(self.x_val[i : i + batch_size], self.y_val[i : i + batch_size]))
            for i in range(0, n, batch_size)
        )
        return hits / n


def make_trainer(config: Config, dataset, *, record: bool = True):
    """The trainer of ``config.framework``: :class:`Trainer` or the torch one."""
    if config.framework == "torch":
        from ..torch.training import TorchTrainer

        return TorchTrainer(config, dataset, record=record)
    return Trainer(config, dataset, record=record)


def trajectory_attrs(name: str, layout, seed: int, dataset, *, recorded_by: str) -> dict:
    """The trajectory's metadata (:func:`lca.storage.trajectory_attrs`) of a TensorFlow run."""
    versions = tensorflow_versions()
    return run_attrs(name, layout, seed, dataset, recorded_by=recorded_by, versions=versions)


def tensorflow_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def train(
    config: Config,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool | None = None,
    threads: int | None = None,
    progress: bool = True,
    record: bool = True,
    checkpoints: bool = True,
) -> TrainResult:
    """Train ``config`` and write the run directory, resuming an interrupted run of it.

    ``resume=None`` (the default, as ``lca train``): an incomplete run of the same config in
    ``run_dir`` continues from its last checkpoint, ending bitwise equal to an uninterrupted
    run when ``threads`` is the same (it pins TensorFlow's thread counts, which fix the order
    of its reductions); ``True`` insists on continuing; ``False`` never does. A failed write
    (disk full, read-only) raises a one-line WriteFailed and leaves the run resumable.
    ``record=False`` and ``checkpoints=False`` are for benchmarks. The environment variable
    ``LCA_CHUNK_ROWS`` sets the θ rows per chunk of a new run (so how often a checkpoint is
    taken; tests use it to checkpoint tiny runs).
    """
    from tqdm.auto import tqdm

    from ..data import load_dataset

    if threads is not None and config.framework == "torch":
        from ..torch.runtime import configure_torch

        configure_torch(threads)
    elif threads is not None:
        from ..models.runtime import configure_tensorflow

        configure_tensorflow(threads)
    dataset = load_dataset(config.data)
    trainer = make_trainer(config, dataset, record=record)
    fixed_before = trainer.fixed_state()
    tcfg = config.training
    full_batch = tcfg.batch_size == "full"
    if full_batch:  # every step on every training example, in their stored order
        everything = np.arange(len(dataset.y_train), dtype=np.int64)
    else:
        schedule = batch_schedule(len(dataset.y_train), tcfg.batch_size, tcfg.iterations, tcfg.seed)

    run_dir = location(run_dir)
    # one writer at a time: a second `lca train` (or an allocate) on this run names the holder
    with run_lock(run_dir, "train") if record else contextlib.nullcontext():
        writer, first = None, 0
        if record:
            writer, first, note = _open_writer(
                config, run_dir, trainer, dataset, overwrite, resume, threads, checkpoints
            )
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
                bad_theta = record and not math.isfinite(outputs[2])  # inf or nan anywhere in θ
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
                if logged:  # of θ_t+1, recorded with the update that made it
                    metrics["val_accuracy"] = trainer.validation_accuracy()
                if writer is not None:
                    writer.append(outputs[3:], metrics)
                if t % 10 == 0 or t == tcfg.iterations - 1:
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", refresh=False)
                printed = (t + 1) % max(tcfg.log_every, 100) == 0 or t == tcfg.iterations - 1
                if logged and progress and printed:
                    val = metrics["val_accuracy"]
                    bar.write(f"iteration {t + 1}: loss {loss:.4f}, val accuracy {val:.4f}")
        except BaseException:
            bar.close()
            if writer is not None:  # keeps what it safely can; the error raised is this one
                writer.abort(status)
            raise
        bar.close()
        steps = tcfg.iterations + 1
        if writer is not None:
            changed = trainer.changed_state(fixed_before)
            extra = {"non_trainable_changed": changed} if changed else None
            steps = writer.close("complete", extra)
        return TrainResult(run_dir, steps, loss, acc, time.perf_counter() - start)


def _open_writer(config, run_dir, trainer, dataset, overwrite, resume, threads, checkpoints):
    """The writer of a new or continued run, the first iteration left, a line saying which."""
    tcfg = config.training
    snapshot = trainer.state if checkpoints else None
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
        note = (
            f"resuming {run_dir} from step {checkpoint.steps} "
            f"({tcfg.iterations - first} of {tcfg.iterations} iterations left)"
        )
        return writer, first, note
    with writing_to(run_dir):
        run_dir = prepare_run_dir(run_dir, overwrite or plan == RESTART)
        (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    writer = TrajectoryWriter(
        run_dir,
        num_iterations=tcfg.iterations,
        num_params=trainer.layout.total,
        batch_size=None if tcfg.batch_size == "full" else tcfg.batch_size,
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
    )
    # a user's model (and any torch model: buffers) may hold weights outside θ
    if config.model.builder is not None or config.framework == "torch":
        with writer.writing():
            write_fixed_weights(writer.group, trainer.fixed_state())  # as built: no update yet
    writer.append(trainer.theta(), None)
    note = f"starting {run_dir} over: it stopped before its first checkpoint" * (plan == RESTART)
    return writer, 0, note
