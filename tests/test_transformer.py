"""The grokking set-up in small: a transformer on modular addition, full-batch AdamW.

Its LCA must conserve the loss on both splits, its per-head and per-neuron sums must be the
parameters' LCA summed over each head's and neuron's own weights, and full-batch AdamW must
be Keras' AdamW on the whole training split, step for step.
"""

import numpy as np
import pytest
from helpers import model_at

from lca.analysis.diagnostics import verify_error
from lca.storage import open_run, open_trajectory


@pytest.fixture(scope="module")
def allocated(allocated_runs):
    """tiny_transformer allocated per parameter and per unit, without gradients (read-only)."""
    return {
        "parameters": allocated_runs("tiny_transformer", store="parameters", store_grad=False),
        "units": allocated_runs("tiny_transformer", store="units", store_grad=False),
    }


def test_full_batch_adamw_is_keras_adamw_on_the_whole_training_split(trained_runs):
    import keras
    import tensorflow as tf

    from lca.config import load_config

    run_dir = trained_runs("tiny_transformer")
    traj = open_trajectory(run_dir)
    assert "batch_indices" not in traj.group  # nothing per iteration to say: every example
    config = load_config(run_dir / "config.yaml")
    assert config.training.batch_size == "full"
    model, layout, data = model_at(config, traj.theta[0])
    opt = config.optimizer
    keras_adamw = keras.optimizers.AdamW(
        opt.lr, weight_decay=opt.weight_decay, beta_2=opt.beta_2, epsilon=opt.epsilon
    )
    for t in range(4):
        with tf.GradientTape() as tape:
            logits = model(data.x_train, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(data.y_train, logits, from_logits=True)
            )
        assert float(loss) == pytest.approx(traj.group["loss"][t], rel=1e-5)
        # dense gradients: on the embedding's IndexedSlices Keras squares each example's row
        # before summing duplicates (Σ g² for v, not (Σ g)²); lca's Adam is the textbook one
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        keras_adamw.apply(grads, model.trainable_variables)
        theta = layout.flatten([v.numpy() for v in model.trainable_variables])
        np.testing.assert_allclose(traj.theta[t + 1], theta, atol=2e-6)


def test_validation_accuracy_is_recorded_every_log_every_iterations(trained_runs):
    import keras

    from lca.config import load_config

    run_dir = trained_runs("tiny_transformer")
    traj = open_trajectory(run_dir)
    config = load_config(run_dir / "config.yaml")
    recorded = traj.group["val_accuracy"][:]
    every = config.training.log_every
    logged = np.flatnonzero(np.isfinite(recorded))
    assert list(logged) == list(range(every - 1, config.training.iterations, every))
    t = int(logged[-1])  # recorded with update t: the accuracy of θ_{t+1}
    model, _, data = model_at(config, traj.theta[t + 1], evaluation=True)
    predicted = keras.ops.argmax(model(data.x_val), axis=-1)
    assert recorded[t] == pytest.approx(float(np.mean(np.asarray(predicted) == data.y_val)))


def test_the_transformer_conserves_the_loss_on_both_splits(allocated):
    for level, run_dir in allocated.items():
        report = verify_error(run_dir)
        assert report.passed, (level, report.failures())
        for split in ("train", "val"):
            s = report.splits[split]
            assert s.iterations_done == 40
            assert abs(s.lca_total - s.loss_change) < 1e-3 * abs(s.loss_change), (level, split)
    # the two levels measured the same losses
    a, b = open_run(allocated["parameters"]), open_run(allocated["units"])
    for split in ("train", "val"):
        assert np.array_equal(a.loss(split), b.loss(split))


def test_head_and_neuron_sums_are_the_lca_of_their_own_weights(allocated):
    """Sliced by hand from the variables (no unit index involved), not by bincount."""
    per_param, per_unit = open_run(allocated["parameters"]), open_run(allocated["units"])
    layout = per_param.layout
    entries = {e.name: e for e in layout.entries}

    def variable(lca: np.ndarray, name: str) -> np.ndarray:
        e = entries[name]
        return lca[:, e.offset : e.offset + e.size].reshape(-1, *e.shape).astype(np.float64)

    for split in ("train", "val"):
        lca = per_param.lca(split)[:]
        heads = per_unit.unit_lca(split, "block1_attn")
        assert heads.shape == (40, 2)
        for h in range(2):
            expected = sum(
                variable(lca, f"block1_attn/{v}/kernel")[:, :, h, :].sum(axis=(1, 2))
                for v in ("query", "key", "value")
            ) + variable(lca, "block1_attn/attention_output/kernel")[:, h].sum(axis=(1, 2))
            np.testing.assert_allclose(heads[:, h], expected, rtol=1e-9, atol=1e-12)
        neurons = per_unit.unit_lca(split, "block1_mlp")
        assert neurons.shape == (40, 16 + 1)  # 16 neurons and the shared output bias
        for j in (0, 7, 15):
            expected = (
                variable(lca, "block1_mlp_in/kernel")[:, :, j].sum(axis=1)
                + variable(lca, "block1_mlp_in/bias")[:, j]
                + variable(lca, "block1_mlp_out/kernel")[:, j].sum(axis=1)
            )
            np.testing.assert_allclose(neurons[:, j], expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            neurons[:, 16], variable(lca, "block1_mlp_out/bias").sum(axis=1), rtol=1e-9
        )
        # units add up to their layer, layers to the whole allocation
        layers = per_unit.layer_lca(split)
        for i, layer in enumerate(per_unit.layer_names):
            np.testing.assert_allclose(
                per_unit.unit_lca(split, layer).sum(axis=1), layers[:, i], rtol=1e-9, atol=1e-13
            )
        np.testing.assert_allclose(
            layers.sum(axis=1), lca.sum(axis=1, dtype=np.float64), rtol=1e-9, atol=1e-12
        )
