"""Bring your own model: model.fit + TrajectoryRecorder, builder configs, honesty checks."""

import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import assert_one_line_error, cli_env

import lca
from lca.cli import main
from lca.config import ConfigError, ModelError, config_from_dict
from lca.data import DatasetError, load_dataset
from lca.keras import TrajectoryRecorder

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "scripts" / "own_model"
sys.path.insert(0, str(EXAMPLE))  # my_model, as a user's module beside their script

import my_model  # noqa: E402
import run_example  # noqa: E402


def _conserved(run_dir: Path, split: str = "train") -> np.ndarray:
    """Assert conservation from the stores themselves; return the per-iteration losses."""
    run = lca.open_run(run_dir)
    threshold = run.lca_store.attrs["settings"]["threshold"]
    loss = run.loss(split)
    sums = run.lca(split)[:].sum(axis=1, dtype=np.float64)
    error = run.error(split)
    assert np.all(np.abs(error) < threshold)
    np.testing.assert_allclose(sums + error, np.diff(loss), rtol=0, atol=1e-9)
    total = sums.sum() - (loss[-1] - loss[0])
    assert abs(total) < 1e-3 * abs(loss[-1] - loss[0])
    assert loss[-1] < loss[0] - 0.1  # it learned: there is a loss change to allocate
    return loss


def test_example_script_fits_records_allocates_and_conserves(tmp_path):
    out = tmp_path / "own"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "run_example.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASS" in done.stdout
    loss = _conserved(out)
    assert (out / "report" / "report.md").is_file()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == {
        "builder": "my_model:build",
        "kwargs": {},
        "loss": "sparse_categorical_crossentropy",
        "from_logits": True,
    }
    assert config["data"] == {"builder": "my_model:load_data", "kwargs": {}}
    # θ_T is the fitted model's weights: L(θ_T) is Keras's own loss of it in inference mode
    run = lca.open_run(out)
    model = my_model.build()
    model.set_weights(run.layout.unflatten(run.theta[-1]))
    (x, y), _ = my_model.load_data()
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, model(x, training=False)
    )
    assert loss[-1] == pytest.approx(float(keras_loss), rel=1e-5)


def test_regression_with_mse_is_allocated_and_conserves(tmp_path):
    out = tmp_path / "reg"
    run_example.fit(out, regression=True)
    runner = CliRunner()
    refused = runner.invoke(main, ["allocate", str(out), "--per-class"])
    assert_one_line_error(refused, "needs a classification loss", alone=True)
    result = runner.invoke(main, ["allocate", str(out)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["verify-error", str(out)]).exit_code == 0
    loss = _conserved(out, "train")
    _conserved(out, "val")
    run = lca.open_run(out)
    model = my_model.build_regressor()
    model.set_weights(run.layout.unflatten(run.theta[0]))
    (x, y), _ = my_model.load_regression()
    mse = np.mean((model(x).numpy()[:, 0].astype(np.float64) - y) ** 2)
    assert loss[0] == pytest.approx(mse, rel=1e-5)
    report = runner.invoke(main, ["report", str(out), "--frames", "2"])
    assert report.exit_code == 0, report.output
    markdown = (out / "report" / "report.md").read_text()
    assert "Not applicable" in markdown
    assert "loss change ΔL (MSE)" in markdown and "nats" not in markdown  # the loss's own unit


def _builder_config(model: str, data: str = "user_models:blobs", **allocate) -> dict:
    return {
        "name": "user",
        "model": {"builder": f"user_models:{model}"},
        "data": {"builder": data},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "training": {"iterations": 12, "batch_size": 40, "log_every": 0},
        "allocate": {"eval_batch_size": 100, "block_iterations": 6, "threshold": 1e-4, **allocate},
    }


def test_lca_train_with_builders_and_batch_norm_conserves(tmp_path):
    """`lca train` on a user's BN + dropout model: deterministic loss, conservation holds."""
    from lca.allocation import load_objective
    from lca.training import train

    config = config_from_dict(_builder_config("batch_norm_net", "user_models:blobs_dataset"))
    run_dir = tmp_path / "bn"
    train(config, run_dir, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objective = load_objective(run_dir, ("train",))
    assert any("layer bn is batch normalization" in str(w.message) for w in caught)
    theta = lca.open_run(run_dir).theta[5]
    first, second = objective(theta)["train"], objective(theta)["train"]
    assert first[0] == second[0] and np.array_equal(first[1], second[1])
    with pytest.warns(UserWarning, match="batch normalization"):
        summary = lca.allocate(run_dir, progress=False)
    assert summary.complete
    report = lca.verify_error(run_dir)
    assert report.passed, report.failures()
    _conserved(run_dir)


def test_nondeterministic_model_is_refused_naming_the_layer(tmp_path):
    from lca.training import train

    run_dir = tmp_path / "noisy"
    train(config_from_dict(_builder_config("noisy_net")), run_dir, progress=False)
    result = CliRunner().invoke(main, ["allocate", str(run_dir)])
    assert result.exit_code == 2
    assert "not a deterministic function" in result.output
    assert "layer noise (AlwaysNoise)" in result.output


def test_shuffled_dataset_is_refused():
    config = config_from_dict(_builder_config("batch_norm_net"))
    config.data.builder, config.data.kwargs = "user_models:blobs_dataset", {"shuffle": True}
    with pytest.raises(DatasetError, match="other examples on a second pass"):
        load_dataset(config.data)


def test_changing_non_trainable_weight_is_reported_and_refused(tmp_path):
    import user_models

    (x, y), _ = user_models.blobs()
    model = user_models.counting_net()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    recorder = TrajectoryRecorder(
        tmp_path / "count", model_fn="user_models:counting_net", data_fn="user_models:blobs"
    )
    with pytest.warns(UserWarning, match="non-trainable weight .*count.* changed"):
        model.fit(x, y, batch_size=50, epochs=1, callbacks=[recorder], verbose=0)
    result = CliRunner().invoke(main, ["allocate", str(tmp_path / "count")])
    assert result.exit_code == 2
    assert "changed during training" in result.output


def test_recorder_truncates_a_fit_stopped_early(tmp_path):
    class StopAfter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.stop_training = True

    (x, y), _ = my_model.load_data()
    model = my_model.build()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    out = tmp_path / "stopped"
    recorder = TrajectoryRecorder(out, model_fn="my_model:build", data_fn="my_model:load_data")
    model.fit(x, y, batch_size=50, epochs=3, callbacks=[recorder, StopAfter()], verbose=0)
    run = lca.open_run(out)
    assert run.num_iterations == 3 and run.trajectory.complete
    assert run.theta.shape[0] == 4 and run.config.training.iterations == 3
    np.testing.assert_array_equal(
        run.theta[-1], np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"builder": "not a path"}}, "model.builder: must be 'module:function'"),
        ({"model": {"kwargs": {"a": 1}}}, "model.kwargs: only applies with model.builder"),
        ({"model": {"loss": "mean_squared_error"}}, "model.loss: the built-in networks"),
        (
            {
                "model": {"builder": "m:f", "loss": "mean_squared_error"},
                "allocate": {"per_class": True},
            },
            "allocate.per_class: needs a classification loss",
        ),
    ],
)
def test_builder_config_errors_are_one_line(change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(change)


def test_missing_builder_module_is_a_one_line_cli_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(_builder_config("nope_net") | {"data": {"builder": "no_such_mod:f"}})
    )
    result = CliRunner().invoke(main, ["train", str(config), "--out", str(tmp_path / "r")])
    assert_one_line_error(result, "data.builder: cannot import no_such_mod", alone=True)
    with pytest.raises(ModelError, match="user_models has no nope_net"):
        from lca.tensorflow.models import build_user_model

        build_user_model(config_from_dict(_builder_config("nope_net")).model)


def test_describe_a_builder_config_needs_no_data(tmp_path):
    config = tmp_path / "c.yaml"
    raw = _builder_config("batch_norm_net") | {"data": {"builder": "no_such_mod:f"}}
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["describe", str(config)])
    assert result.exit_code == 0, result.output
    assert "user_models:batch_norm_net" in result.output
    for layer in ("hidden", "bn", "logits"):
        assert layer in result.output
    assert "total" in result.output and " 99 " in result.output  # 6*8+8 + 2*8 + 8*3+3


def test_recording_does_not_change_training(tmp_path):
    """Same seed, shuffle and dropout: the fit ends bitwise where it ends without the recorder."""

    def fit(recorder):
        keras.utils.set_random_seed(0)
        (x, y), _ = my_model.load_data()
        model = my_model.build()
        model.compile(
            keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(x, y, batch_size=50, epochs=2, verbose=0, callbacks=[recorder] * bool(recorder))
        return np.concatenate([v.numpy().ravel() for v in model.trainable_variables])

    plain = fit(None)
    recorded = fit(TrajectoryRecorder(tmp_path / "r", data_fn="my_model:load_data"))
    np.testing.assert_array_equal(plain, recorded)
    run = lca.open_run(tmp_path / "r")  # without model_fn: the Keras config rebuilds the model
    assert run.config.model.builder == "lca.tensorflow.models:from_keras_config"
    np.testing.assert_array_equal(run.theta[-1], recorded)
    summary = lca.allocate(tmp_path / "r", iterations=(0, 4), progress=False)
    assert summary.iterations_this_run >= 4
    errors = lca.open_run(tmp_path / "r").error("train")[:4]
    assert np.all(np.abs(errors) < 1e-3)


def test_notebook_fit_with_arrays_needs_no_module_and_the_run_is_movable(tmp_path):
    """TrajectoryRecorder(train_data=…): a model made inline, its arrays stored in the run."""
    import shutil

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 360)
    x = (2 * rng.normal(size=(3, 6))[y] + rng.normal(size=(360, 6))).astype("float32")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, "tanh")(inputs)))
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    recorded = tmp_path / "recorded"
    recorder = TrajectoryRecorder(
        recorded,
        train_data=(x[:300], y[:300]),
        validation_data=(x[300:], y[300:]),
        allocate={"eval_batch_size": 150, "threshold": 1e-4},
    )
    model.fit(x[:300], y[:300], batch_size=30, epochs=2, verbose=0, callbacks=[recorder])
    config = yaml.safe_load((recorded / "config.yaml").read_text())
    assert config["data"] == {"builder": "lca.data:run_arrays", "kwargs": {}}
    assert config["model"]["builder"] == "lca.tensorflow.models:from_keras_config"
    moved = tmp_path / "elsewhere" / "run"  # nothing in the run points outside it
    shutil.move(str(recorded), moved)
    lca.allocate(moved, progress=False)
    assert lca.verify_error(moved).passed
    loss = _conserved(moved)
    _conserved(moved, "val")
    assert lca.open_run(moved).theta.shape[0] == 21  # θ_0 and 2 epochs × 10 steps
    keras_loss = model.evaluate(x[:300], y[:300], batch_size=300, verbose=0)
    assert loss[-1] == pytest.approx(keras_loss, rel=1e-5)  # L(θ_T): the fitted model's loss


def test_recorder_needs_exactly_one_data_source():
    with pytest.raises(ConfigError, match="either data_fn"):
        TrajectoryRecorder("unused")
    with pytest.raises(ConfigError, match="either data_fn"):
        TrajectoryRecorder("unused", data_fn="my_model:load_data", train_data=([0], [0]))


class _ReadEveryStep(keras.callbacks.Callback):
    """The obvious reference: θ read from Python after every step."""

    def on_train_begin(self, logs=None):
        self.rows = [np.concatenate([v.numpy().ravel() for v in self.model.trainable_variables])]

    def on_train_batch_end(self, batch, logs=None):
        self.rows.append(
            np.concatenate([v.numpy().ravel() for v in self.model.trainable_variables])
        )


def _fit_recorded(model, x, y, run_dir, *, batch_size: int, epochs: int):
    """Fit with the recorder and the per-step reference: (recorded θ rows, reference rows)."""
    reference = _ReadEveryStep()
    recorder = TrajectoryRecorder(run_dir, train_data=(x, y))
    model.fit(
        x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[reference, recorder]
    )
    return lca.open_run(run_dir).theta[:], np.stack(reference.rows)


@keras.saving.register_keras_serializable(package="lca_tests")
class OwnTrainStep(keras.Model):
    """A custom train_step (the update through optimizer.apply), as research code often has."""

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return {"loss": loss}


@pytest.mark.parametrize("model_class", [keras.Model, OwnTrainStep])
def test_recorded_theta_is_theta_after_every_step(tmp_path, model_class):
    """The stored θ rows are θ read after every step, for Keras' train step and a custom one;
    several writer buffers and a partial last one."""
    keras.utils.set_random_seed(0)
    (x, y), _ = my_model.load_data()
    inputs = keras.Input(x.shape[1:])
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(inputs))
    model = model_class(inputs, keras.layers.Dense(int(y.max()) + 1)(hidden))
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    theta, reference = _fit_recorded(model, x, y, tmp_path / "r", batch_size=7, epochs=3)
    from lca.storage import rows_per_chunk

    steps = len(reference)  # θ_0 and one row per step: several buffers and a partial one
    assert theta.shape[0] == steps and (steps - 1) % rows_per_chunk(theta.shape[1]) != 0
    assert steps - 1 > rows_per_chunk(theta.shape[1])
    np.testing.assert_array_equal(theta, reference)


def test_recorded_last_theta_is_before_the_optimizers_moving_average_replaces_it(tmp_path):
    """With use_ema, fit's last act overwrites the weights with their moving average; the
    trajectory must still end at θ after the last step, the point the steps reached."""
    keras.utils.set_random_seed(0)
    (x, y), _ = my_model.load_data()
    model = my_model.build()
    model.compile(
        keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=0.5),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    theta, reference = _fit_recorded(model, x, y, tmp_path / "ema", batch_size=50, epochs=2)
    np.testing.assert_array_equal(theta, reference)
    final = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    assert not np.array_equal(theta[-1], final)  # the weights fit left are the average


def test_recorder_under_a_distribution_strategy_records_every_step(tmp_path):
    """A model built under a tf.distribute strategy (its variables are MirroredVariables, read
    through a replica's resource): the rows are still θ after every step."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    (x, y), _ = my_model.load_data()
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = my_model.build()
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    theta, reference = _fit_recorded(model, x, y, tmp_path / "mirrored", batch_size=50, epochs=1)
    np.testing.assert_array_equal(theta, reference)


def test_modular_tokens_with_adamw_train_allocate_and_conserve(tmp_path):
    """Token inputs (modular data), an embedding model and AdamW: the pipeline conserves."""
    from lca import allocate, verify_error
    from lca.training import train

    config = config_from_dict(
        {
            "name": "modular",
            "model": {"builder": "user_models:token_mlp", "kwargs": {"p": 7}},
            "data": {"name": "modular", "modular": {"p": 7, "train_fraction": 0.5}},
            "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 1.0},
            "training": {"iterations": 12, "batch_size": 8, "log_every": 0},
            "allocate": {
                "eval_batch_size": 100,
                "block_iterations": 6,
                "threshold": 1e-4,
                "precision": "float32",
            },
        }
    )
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False)
    allocate(run_dir, progress=False)
    report = verify_error(run_dir)
    assert report.passed, report.to_text()
    for split in ("train", "val"):
        assert report.splits[split].iterations_measured == 12
