"""``lca allocate --causes``: the LCA split by the optimiser's step terms, on real tiny runs.

The terms × parts sum to the LCA of every iteration and layer; Adam/AdamW's replay reproduces
the recorded steps to float32 rounding (dropout included); frozen layers and layers without
momentum get zero terms; an independent float64 numpy replay of tiny FC runs (SGD with and
without momentum, Adam, AdamW) gives every stored sum, term by term, first order and
curvature, per layer, per unit and over the hurting entries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from independent_causes import CauseCheck, independent_terms, path_mean, stored_intervals

from lca.allocation import allocate
from lca.storage import RunError, open_run


@pytest.fixture(scope="module")
def runs(allocated_runs):
    """Tiny runs allocated with --causes (tests/conftest.py's cache; read-only)."""
    specs = {
        # momentum SGD; dense_1 frozen from iteration 20, dense_2 without momentum
        "sgd": ("tiny_fc", ("optimizer.layers.dense_1.freeze_from=20",), {}),
        "sgd_layers": (
            "tiny_fc",
            ("optimizer.layers.dense_1.freeze_from=20", "optimizer.layers.dense_2.momentum=0"),
            {"store": "units"},
        ),
        "plain_sgd": ("tiny_fc", ("optimizer.momentum=0",), {}),
        "adam": ("tiny_fc", ("optimizer.name=adam", "optimizer.lr=0.002"), {}),
        "adamw_fc": (
            "tiny_fc",
            ("optimizer.name=adamw", "optimizer.lr=0.002", "optimizer.weight_decay=0.1"),
            {},
        ),
        "adam_dropout": (
            "tiny_lenet",
            ("optimizer.name=adam", "optimizer.lr=0.002", "training.iterations=16"),
            {"store": "layers"},
        ),
        "adamw": ("tiny_transformer", ("training.iterations=16",), {}),
    }

    def get(name: str) -> Path:
        config, overrides, kwargs = specs[name]
        return allocated_runs(config, overrides, causes=True, **kwargs)

    return get


# --- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "plain_sgd", "adam", "adamw"])
def test_terms_sum_to_the_lca_of_every_iteration_and_layer(runs, name):
    run = open_run(runs(name))
    assert run.has_causes
    for split in ("train", "val"):
        causes = run.cause_layer_lca(split)
        layer = run.layer_lca(split)
        assert causes.shape == (run.num_iterations, len(run.cause_terms), 2, len(run.layer_names))
        # the stored LCA is the float32 rounding of the float64 Δθ·ḡ the causes split
        scale = np.abs(layer).max()
        np.testing.assert_allclose(causes.sum(axis=(1, 2)), layer, rtol=0, atol=1e-6 * scale)
        hurt = run.cause_hurt_layer_lca(split).sum(axis=(1, 2))
        assert np.all(hurt >= -1e-12) and np.all(hurt >= layer - 1e-9)


@pytest.mark.parametrize(
    ("name", "terms", "limit"),
    [
        ("sgd", ["signal", "deviation", "momentum", "residual"], 1e-12),
        ("plain_sgd", ["signal", "deviation", "residual"], 1e-12),
        # Adam: θ_{t+1} = θ_t − step rounds to float32: ~eps32·|θ|/|Δθ| (|Δθ| ≈ lr = 0.002)
        ("adam", ["signal", "deviation", "history", "residual"], 1e-4),
        ("adam_dropout", ["signal", "deviation", "history", "residual"], 1e-4),
        ("adamw", ["signal", "deviation", "history", "weight_decay", "residual"], 1e-4),
    ],
)
def test_the_replay_reproduces_the_recorded_steps(runs, name, terms, limit):
    run = open_run(runs(name))
    assert run.cause_terms == terms
    assert run.cause_parts == ["first_order", "curvature"]
    residual = run.replay_residual()
    assert residual.shape == (run.num_iterations,)
    assert np.all(residual <= limit), residual.max()


def test_plain_sgd_signal_descends_the_train_loss(runs):
    run = open_run(runs("plain_sgd"))
    assert "momentum" not in run.cause_terms
    signal = run.cause_terms.index("signal")
    for name in run.layer_names:  # −lr (∇_iL)² ≤ 0 for every parameter, so for every unit
        units = run.cause_unit_lca("train", name)
        assert np.all(units[:, signal, 0] <= 0)


def test_frozen_layer_and_layer_without_momentum(runs):
    run = open_run(runs("sgd_layers"))
    dense_1, dense_2 = (run.layer_names.index(n) for n in ("dense_1", "dense_2"))
    momentum = run.cause_terms.index("momentum")
    for split in ("train", "val"):
        causes = run.cause_layer_lca(split)
        assert np.all(causes[20:, :, :, dense_1] == 0)  # frozen from iteration 20
        assert np.any(causes[:20, :, :, dense_1] != 0)
        assert np.all(causes[:, momentum, :, dense_2] == 0)  # momentum 0 on that layer only
        assert np.any(causes[1:20, momentum, :, dense_1] != 0)
        units = run.cause_unit_lca(split, "dense_1")
        assert np.all(units[20:] == 0)


# --- an independent numpy replay ---------------------------------------------------------------


def _fc_gradient(theta, x, y, sizes):
    """Gradient of the mean cross-entropy of tiny_fc (dense relu, dense) in float64."""
    w1, b1, w2, b2 = np.split(theta.astype(np.float64), np.cumsum(sizes)[:-1])
    n_in, hidden = x.shape[1], b1.size
    w1, w2 = w1.reshape(n_in, hidden), w2.reshape(hidden, -1)
    h = np.maximum(x @ w1 + b1, 0)
    z = h @ w2 + b2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    dz = p / len(y)
    dh = (dz @ w2.T) * (h > 0)
    return np.concatenate([(x.T @ dh).ravel(), dh.sum(0), (h.T @ dz).ravel(), dz.sum(0)])


@pytest.mark.parametrize("name", ["sgd", "plain_sgd", "adam", "adamw_fc"])
def test_an_independent_float64_replay_gives_every_stored_sum(runs, name):
    """Every term, both parts, per layer, per unit and over the hurting entries, against a
    float64 numpy replay (tests/independent_causes.py; its docstring derives the bound).

    What a wrong split would do here: a share given to the wrong term (signal and deviation
    swapped, the momentum's or history's slot read one step late, the decay counted in the
    signal) or to the wrong part (first order and curvature swapped, ḡ in place of ḡ − ∇L)
    moves a sum by many bounds (``finish`` asserts the run separates every two terms and the
    two parts); a unit or hurting sum made over the wrong entries moves its own array.
    """
    from lca.data import load_dataset

    run = open_run(runs(name))
    data = load_dataset(run.config.data, run.path)
    x, y = {}, {}
    for split in ("train", "val"):
        inputs, labels = data.split(split)
        x[split] = np.asarray(inputs, np.float64).reshape(len(labels), -1)
        y[split] = np.asarray(labels, np.int64)
    sizes = [e.size for e in run.layout.entries]

    def gradient(theta, split, batch=slice(None)):
        return _fc_gradient(theta, x[split][batch], y[split][batch], sizes)

    theta = run.theta[:].astype(np.float64)
    batches = run.trajectory.group["batch_indices"][:]
    opt = run.config.optimizer
    kind = {"sgd": "sgd", "plain_sgd": "plain_sgd", "adam": "adam", "adamw_fc": "adamw"}[name]
    layer_of = run.layout.layer_index()
    frozen_from = {"dense_1": 20} if name == "sgd" else {}
    checks = {s: CauseCheck(run, s) for s in ("train", "val")}
    intervals = {s: stored_intervals(run, s) for s in ("train", "val")}
    state, worst_step = {}, 0.0
    for t in range(run.num_iterations):
        active = np.ones(theta.shape[1])
        for layer, first in frozen_from.items():
            active[layer_of == run.layer_names.index(layer)] = float(t < first)
        g_train = gradient(theta[t], "train")
        g_b = gradient(theta[t], "train", batches[t])
        mine = independent_terms(kind, opt, t, theta[t], g_b, g_train, state, active)
        delta = theta[t + 1] - theta[t]
        worst_step = max(
            worst_step, np.linalg.norm(delta - sum(mine.values())) / np.linalg.norm(delta)
        )
        for split, check in checks.items():
            g0 = g_train if split == "train" else gradient(theta[t], split)
            gbar = path_mean(
                lambda point, s=split: gradient(point, s),
                theta[t],
                theta[t + 1],
                int(intervals[split][t]),
                g0,
            )
            check.add(t, mine, g0, gbar, theta[t], theta[t + 1])
    # the float64 replay follows the float32 training: ~1e-6 (SGD) to ~1e-5 (Adam) of a step
    assert worst_step < 1e-4, worst_step
    for check in checks.values():
        check.finish()


# --- the Adam replay's randomness ---------------------------------------------------------------


def test_dropout_randomness_is_the_training_steps(runs):
    """With the seed-generator state of another step, the replayed g_B is a different one."""
    from lca.allocation.cause_sums import CauseModel
    from lca.tensorflow.replay import BatchGradient

    run = open_run(runs("adam_dropout"))
    gradient = BatchGradient(run.path, run.config, run.trajectory)
    model = CauseModel.of_run(run.config, run.trajectory.layout_json)
    theta = run.theta[:]
    replay = model.adam_replay()
    for t in range(4):
        g = gradient(t, theta[t])
        replay.step(t, theta[t], g, g, theta_next=theta[t + 1])
        # the replayed θ_{t+1} is the recorded one, bitwise for all but a few parameters
        assert np.mean(replay.theta_next == theta[t + 1]) > 0.99
    other = model.adam_replay(replay.m, replay.v)
    wrong_seed = gradient(5, theta[4])  # step 5's dropout masks at θ_4
    other.step(4, theta[4], wrong_seed, wrong_seed, theta_next=theta[5])
    assert np.mean(other.theta_next == theta[5]) < 0.9


# --- refusals --------------------------------------------------------------------------------


def test_refusals(runs, tmp_path):
    import shutil

    from lca.storage import open_group

    source = runs("plain_sgd")
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("lca.zarr"))
    with pytest.raises(RunError, match="allocate.causes: .*train"):
        allocate(run_dir, causes=True, splits=["val"], progress=False)
    with pytest.raises(RunError, match="allocate.causes: .*subset"):
        allocate(run_dir, causes=True, subset_size=100, progress=False)
    with pytest.raises(RunError, match="allocate.causes: .*per_class"):
        allocate(run_dir, causes=True, per_class=True, progress=False)
    allocate(run_dir, iterations=(0, 8), progress=False)  # without causes
    with pytest.raises(RunError, match="allocate with --causes"):
        open_run(run_dir).cause_layer_lca("train")
    with pytest.raises(RunError, match="other settings.*causes"):
        allocate(run_dir, causes=True, progress=False)
    open_group(run_dir / "trajectory.zarr", "r+").attrs["recorded_by"] = (
        "lca.keras.TrajectoryRecorder"
    )
    with pytest.raises(RunError, match="model.fit"):
        allocate(run_dir, causes=True, restart=True, progress=False)


def test_path_mean_gradient_makes_the_lca():
    from lca.quadrature import integrate_step

    rng = np.random.default_rng(0)
    delta = rng.normal(size=50)
    start, end = {"a": rng.normal(size=50)}, {"a": rng.normal(size=50)}
    step = integrate_step(
        lambda s: {"a": (1 - s) * start["a"] + s * end["a"]},
        delta,
        {"a": 0.3},
        start,
        end,
        max_intervals=4,
    )
    assert np.array_equal(step.lca["a"], (delta * step.mean_grad["a"]).astype(np.float32))


def test_adam_replay_of_the_first_work_unit_alone_then_the_rest(runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs("adam"), run_dir, ignore=shutil.ignore_patterns("lca.zarr"))
    allocate(run_dir, causes=True, iterations=(0, 8), progress=False)
    assert np.isfinite(open_run(run_dir).replay_residual()[:8]).all()
    allocate(run_dir, causes=True, progress=False)  # resumes the pre-pass from unit 1
    resumed, whole = open_run(run_dir), open_run(runs("adam"))
    np.testing.assert_array_equal(resumed.cause_layer_lca("train"), whole.cause_layer_lca("train"))
