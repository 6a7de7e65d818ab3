"""`lca train`: the trajectory store holds exactly what the optimiser did."""

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, model_at

from lca.config import ConfigError, load_config
from lca.storage import RunError, open_trajectory
from lca.training import TrainingDiverged, train

CONFIGS = Path(__file__).parents[1] / "configs"


def tiny(overrides=(), name="tiny_fc"):
    return load_config(CONFIGS / f"{name}.yaml", list(overrides))


def run(tmp_path, overrides=(), name="tiny_fc", sub="run"):
    config = tiny(overrides, name)
    train(config, tmp_path / sub, progress=False)
    return config, open_trajectory(tmp_path / sub)


def minibatch_gradient(config, theta, batch):
    """Gradient of the mini-batch loss at θ, recomputed independently of training.py."""
    import keras
    import tensorflow as tf

    model, layout, data = model_at(config, theta)
    x, y = data.x_train[batch], data.y_train[batch]
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    return layout.flatten([g.numpy() for g in grads])


def test_tiny_run_records_every_step_with_metadata(tmp_path):
    config, traj = run(tmp_path)
    T = config.training.iterations
    assert traj.theta.shape == (T + 1, traj.theta.shape[1])
    assert traj.complete and traj.steps_recorded == T + 1
    theta = traj.theta[:]
    assert np.isfinite(theta).all()
    assert (np.abs(np.diff(theta, axis=0)).sum(axis=1) > 0).all()  # every update moved θ
    assert traj.group["loss"].shape == (T,) and np.isfinite(traj.group["loss"][:]).all()
    assert traj.group["batch_indices"].shape == (T, config.training.batch_size)
    attrs = traj.attrs
    assert attrs["seed"] == 0 and "tensorflow" in attrs["versions"]
    assert sum(e["size"] for e in attrs["layout"]) == theta.shape[1]
    assert traj.group["train_indices"].shape[0] + traj.group["val_indices"].shape[0] == 2000
    assert (tmp_path / "run" / "config.yaml").is_file()
    # the loss goes down on this learnable synthetic task
    loss = traj.group["loss"][:]
    assert loss[-5:].mean() < loss[:5].mean()


def test_xarray_opens_the_trajectory(tmp_path):
    xr = pytest.importorskip("xarray")
    config, traj = run(tmp_path)
    ds = xr.open_zarr(traj.path, consolidated=False)
    assert ds["theta"].dims == ("step", "parameter")
    assert ds["loss"].dims == ("iteration",)
    assert ds.sizes["step"] == ds.sizes["iteration"] + 1


def test_sgd_momentum_update_is_recomputable_from_the_store(tmp_path):
    config, traj = run(tmp_path)
    theta = traj.theta[:].astype(np.float64)
    batches = traj.group["batch_indices"][:]
    lr, m = config.optimizer.lr, config.optimizer.momentum
    delta = np.diff(theta, axis=0)
    for t in (0, 1, 7, 20, config.training.iterations - 1):
        g = minibatch_gradient(config, traj.theta[t], batches[t])
        previous = delta[t - 1] if t > 0 else 0.0
        expected = m * previous - lr * g
        np.testing.assert_allclose(delta[t], expected, atol=2e-6, rtol=1e-4)


def test_frozen_layer_rows_are_constant_from_the_given_iteration(tmp_path):
    config, traj = run(tmp_path, ["optimizer.layers.dense_1.freeze_from=5"])
    layout = traj.layout_json
    theta = traj.theta[:]
    cols = np.concatenate(
        [np.arange(e["offset"], e["offset"] + e["size"]) for e in layout if e["layer"] == "dense_1"]
    )
    others = np.setdiff1d(np.arange(theta.shape[1]), cols)
    assert not np.array_equal(theta[5][cols], theta[0][cols])  # trained before iteration 5
    assert (theta[5:, cols] == theta[5, cols]).all()  # no update at all afterwards
    assert not np.array_equal(theta[-1][others], theta[5][others])


def test_per_layer_learning_rate_changes_only_that_layers_step(tmp_path):
    base = ["optimizer.momentum=0.0", "optimizer.lr=0.05"]
    _, a = run(tmp_path, base, sub="a")
    _, b = run(tmp_path, [*base, "optimizer.layers.dense_2.lr=0.005"], sub="b")
    layout = a.layout_json
    step_a = a.theta[1].astype(np.float64) - a.theta[0]
    step_b = b.theta[1].astype(np.float64) - b.theta[0]
    for e in layout:
        s = slice(e["offset"], e["offset"] + e["size"])
        if e["layer"] == "dense_2":
            np.testing.assert_allclose(step_b[s], 0.1 * step_a[s], rtol=1e-4, atol=1e-7)  # ulp(θ)
        else:
            np.testing.assert_array_equal(step_b[s], step_a[s])


def test_same_seed_gives_a_bitwise_identical_trajectory(tmp_path):
    _, a = run(tmp_path, name="tiny_lenet", sub="a")
    _, b = run(tmp_path, name="tiny_lenet", sub="b")
    _, c = run(tmp_path, ["training.seed=1"], name="tiny_lenet", sub="c")
    assert np.array_equal(a.theta[:], b.theta[:])
    assert not np.array_equal(a.theta[:], c.theta[:])


@pytest.mark.parametrize(
    ("overrides", "keras_optimizer"),
    [
        (["optimizer.name=adam"], lambda keras: keras.optimizers.Adam(0.01, epsilon=1e-7)),
        (  # a large decay, so that it shows in every step
            ["optimizer.name=adamw", "optimizer.weight_decay=2.0"],
            lambda keras: keras.optimizers.AdamW(0.01, weight_decay=2.0, epsilon=1e-7),
        ),
    ],
    ids=["adam", "adamw"],
)
def test_adam_and_adamw_match_keras(tmp_path, overrides, keras_optimizer):
    import keras

    config, traj = run(tmp_path, [*overrides, "optimizer.lr=0.01"])
    model, layout, data = model_at(config, traj.theta[0])
    optimizer = keras_optimizer(keras)
    batches = traj.group["batch_indices"][:]
    import tensorflow as tf

    for t in range(3):
        x, y = data.x_train[batches[t]], data.y_train[batches[t]]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(
                    y, model(x, training=True), from_logits=True
                )
            )
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        theta = layout.flatten([v.numpy() for v in model.trainable_variables])
        np.testing.assert_allclose(traj.theta[t + 1], theta, atol=1e-6)


def test_weight_decay_applies_to_adamw_only_and_shrinks_theta(tmp_path):
    with pytest.raises(ConfigError, match="weight_decay: only applies to adamw"):
        tiny(["optimizer.weight_decay=0.1"])
    with pytest.raises(ConfigError, match="weight_decay: must be >= 0"):
        tiny(["optimizer.name=adamw", "optimizer.weight_decay=-1"])
    adamw = ["optimizer.name=adamw", "optimizer.lr=0.01"]
    _, plain = run(tmp_path, adamw, sub="plain")
    _, decayed = run(tmp_path, [*adamw, "optimizer.weight_decay=5.0"], sub="decayed")
    assert np.array_equal(plain.theta[0], decayed.theta[0])
    assert np.linalg.norm(decayed.theta[-1]) < np.linalg.norm(plain.theta[-1])


def test_existing_run_directory_is_not_overwritten(tmp_path):
    config, traj = run(tmp_path)
    before = traj.theta[:]
    with pytest.raises(RunError, match="--overwrite"):
        train(config, tmp_path / "run", progress=False)
    assert np.array_equal(open_trajectory(tmp_path / "run").theta[:], before)
    train(config, tmp_path / "run", overwrite=True, progress=False)


def test_divergence_stops_with_a_clear_error_and_keeps_the_record(tmp_path):
    config = tiny(["optimizer.lr=1.0e+20"])
    with pytest.raises(TrainingDiverged, match="diverged") as info:
        train(config, tmp_path / "run", progress=False)
    assert_one_line_error(info, "diverged")
    traj = open_trajectory(tmp_path / "run")
    assert not traj.complete
    steps = traj.steps_recorded
    assert 1 <= steps <= config.training.iterations
    assert np.isfinite(traj.theta[:steps]).all()
    with pytest.raises(RunError, match="incomplete"):
        traj.require_complete()


def test_unknown_layer_override_names_the_layers(tmp_path):
    config = tiny(["optimizer.layers.conv_9.lr=0.1"])
    with pytest.raises(ConfigError, match=r"optimizer.layers.conv_9: no such layer .*dense_1"):
        train(config, tmp_path / "run", progress=False)
