"""``lca train`` with TensorFlow: the model, the data on the device and the compiled step.

The optimiser is written out here (Keras-style heavy-ball SGD, Adam and AdamW) rather than taken
from ``keras.optimizers`` because LCA experiments need per-layer learning rates, per-layer
momentum and layers frozen from a given iteration on, and because the recorded trajectory
must be exactly what the update rule below did, which the tests re-derive. The torch trainer
(`lca.torch.training`) computes the same rules.
"""

from __future__ import annotations

import numpy as np

from ..config import Config
from ..config.layer_settings import resolve_layer_settings
from ..storage import RunError
from ..storage import trajectory_attrs as run_attrs


class Trainer:
    """Holds the model, data on the device and the compiled training step.

    The torch trainer (`lca.torch.training.TorchTrainer`) has the same methods, so
    `lca.training.train` drives either.
    """

    framework = "tensorflow"

    def __init__(self, config: Config, dataset) -> None:
        import keras
        import tensorflow as tf

        from .models import build_model
        from .parameters import parameter_layout
        from .runtime import per_example_loss

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
        self._step = tf.function(self._make_step(), reduce_retracing=True)
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
        """Set the variables from a checkpoint written by `state` for the same model."""
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
        """``(name, value)`` of the weights outside θ (`parameters.fixed_weights`)."""
        from .parameters import fixed_weights

        return [(name, value) for name, value, _ in fixed_weights(self.model)]

    def changed_state(self, before: list[tuple[str, np.ndarray]]) -> list[str]:
        """Names of the weights outside θ, moving statistics aside, changed since ``before``."""
        from .parameters import fixed_weights

        now = fixed_weights(self.model)
        return [
            name
            for (name, old), (_, new, moving) in zip(before, now)
            if not moving and not np.array_equal(old, new)
        ]

    def theta(self) -> np.ndarray:
        """The current trainable parameters as one flat float32 vector."""
        return np.concatenate([v.numpy().reshape(-1) for v in self.variables])

    def _make_step(self):
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
            # θ after the update: a finiteness probe, then each variable's value
            probe = tf.add_n([tf.reduce_sum(v) for v in self.variables])
            return [loss, accuracy, probe, *(tf.identity(v.value) for v in self.variables)]

        return step

    def _val_accuracy(self, x, y):
        import tensorflow as tf

        logits = self.model(x, training=False)
        return tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.int64)
        )

    def step(self, batch: np.ndarray, iteration: int):
        """One update on the examples ``batch``; returns [loss, accuracy, probe, θ parts after]."""
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


def trajectory_attrs(name: str, layout, seed: int, dataset, *, recorded_by: str) -> dict:
    """The trajectory's metadata (`lca.storage.trajectory_attrs`) of a TensorFlow run."""
    versions = tensorflow_versions()
    return run_attrs(name, layout, seed, dataset, recorded_by=recorded_by, versions=versions)


def tensorflow_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}
