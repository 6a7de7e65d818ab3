"""``lca allocate --causes`` on torch runs: ``lca train``'s optimisers and torch.optim's own.

``lca train`` runs with ``framework: torch`` (momentum SGD, plain SGD, Adam, AdamW, a LeNet with
dropout) follow the TensorFlow trainer's rules; runs recorded here from a plain torch loop
(torch.optim.SGD with nesterov or dampening and weight decay, Adam with L2 decay, AdamW) are
written as ``lca.torch.TrajectoryRecorder`` writes them (``torch_optimizer``,
``batch_indices``). On each: the terms × parts sum to the layer LCA of both splits, the replay
reproduces the recorded steps to float32 rounding, and an independent float64 replay of the
optimiser (numpy; the LeNet's gradients from a float64 copy of the model) gives the same
terms, first order and curvature, per layer, per unit and over the hurting entries.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from independent_causes import CauseCheck, independent_terms, path_mean, stored_intervals

torch = pytest.importorskip("torch")

from lca.allocation import allocate  # noqa: E402
from lca.allocation.cause_sums import CauseModel  # noqa: E402
from lca.allocation.causes import residual_ratio  # noqa: E402
from lca.config import load_config  # noqa: E402
from lca.data import load_dataset  # noqa: E402
from lca.storage import (  # noqa: E402
    CONFIG_FILE,
    RunError,
    TrajectoryWriter,
    open_group,
    open_run,
    trajectory_attrs,
)
from lca.training import train  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EPS32 = float(np.finfo(np.float32).eps)
SMALL = (  # 600 training and 200 validation examples; three blocks of 4 iterations
    "framework=torch",
    "training.iterations=12",
    "allocate.block_iterations=4",
    "data.synthetic.num_examples=800",
    "data.val_size=200",
    "allocate.eval_batch_size=1000",
)
LENET = (*SMALL, "training.iterations=8", "model.conv_filters=[4,8]", "model.dense_units=16")
TRAINED = {  # lca train, framework: torch
    "sgd": ("tiny_fc", ()),
    "plain_sgd": ("tiny_fc", ("optimizer.momentum=0",)),
    "adam": ("tiny_fc", ("optimizer.name=adam", "optimizer.lr=0.002")),
    "adamw": (
        "tiny_fc",
        ("optimizer.name=adamw", "optimizer.lr=0.002", "optimizer.weight_decay=0.01"),
    ),
    "dropout": ("tiny_lenet", ("optimizer.name=adam", "optimizer.lr=0.002")),
}
# a plain loop's torch.optim optimisers; lr·wd = 2⁻¹⁴ for AdamW, so that 1 − lr·wd is exact
# in float32 and the textbook decay −lr·wd·θ is the one torch applied
RECORDED = {
    "torch_sgd": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
    ),
    "torch_sgd_dampening": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3
    ),
    "torch_adam": lambda p: torch.optim.Adam(p, lr=0.002, weight_decay=1e-3),
    "torch_adamw": lambda p: torch.optim.AdamW(p, lr=2.0**-9, weight_decay=2.0**-5),
}
ALL = [*TRAINED, *RECORDED]


@dataclass
class Recorded:
    """A run recorded by the plain loop, with what the loop knew: batches and gradients."""

    path: Path
    batches: np.ndarray  # (T, B) example indices of every step
    grads: np.ndarray  # (T, K) float32 g_B as the loop's backward pass gave it


def _record(run_dir: Path, make_optimizer, store_batches: bool = True) -> Recorded:
    """Train the fc twin with a torch.optim optimiser, recording as the torch recorder does."""
    from lca.torch.models import build_torch_model, torch_layout
    from lca.torch.runtime import per_example_loss

    config = load_config(CONFIGS / "tiny_fc.yaml", list(SMALL))
    dataset = load_dataset(config.data)
    model = build_torch_model(config.model, dataset.input_shape, dataset.num_classes, 0)
    layout, names = torch_layout(model), [n for n, _ in model.named_parameters()]
    optimizer = make_optimizer(model.parameters())
    hyper = ("lr", "momentum", "nesterov", "dampening", "weight_decay", "betas", "eps")
    described = {
        "class": type(optimizer).__name__,
        "groups": [
            {
                **{k: list(g[k]) if k == "betas" else g[k] for k in hyper if k in g},
                "parameters": names,
            }
            for g in optimizer.param_groups
        ],
    }
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    T, B = config.training.iterations, config.training.batch_size
    attrs = trajectory_attrs(
        config.name,
        layout,
        0,
        dataset,
        recorded_by="lca.torch.TrajectoryRecorder",
        versions={"torch": torch.__version__},
    )
    writer = TrajectoryWriter(
        run_dir,
        num_iterations=T,
        num_params=layout.total,
        batch_size=B,
        train_indices=dataset.train_indices,
        val_indices=dataset.val_indices,
        attrs={**attrs, "torch_optimizer": described},
    )

    def flat(tensors) -> np.ndarray:
        return np.concatenate([t.detach().numpy().reshape(-1) for t in tensors])

    x, y = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    loss_of, rng = per_example_loss(), np.random.default_rng(0)
    batches, grads = [], []
    writer.append(flat(model.parameters()), None)
    for _ in range(T):
        idx = np.sort(rng.choice(len(y), B, replace=False))
        optimizer.zero_grad()
        loss_of(model(x[idx]), y[idx]).mean().backward()
        grads.append(flat(p.grad for p in model.parameters()))
        optimizer.step()
        batches.append(idx)
        row = idx if store_batches else np.full(B, -1)
        writer.append(flat(model.parameters()), {"batch_indices": row})
    writer.close()
    return Recorded(run_dir, np.array(batches), np.array(grads))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Torch runs allocated with --causes, made on first use."""
    root = tmp_path_factory.mktemp("torch_causes")
    made: dict[str, Path] = {}
    recorded: dict[str, Recorded] = {}

    def get(name: str):
        if name in made:
            return made[name], recorded.get(name)
        if name in TRAINED:
            config, overrides = TRAINED[name]
            small = LENET if config == "tiny_lenet" else SMALL
            config = load_config(CONFIGS / f"{config}.yaml", [*small, *overrides])
            train(config, root / name, progress=False)
        else:  # SGD needs no batches: its run keeps rows of -1, as a recorder without them
            recorded[name] = _record(root / name, RECORDED[name], name != "torch_sgd")
        allocate(root / name, causes=True, progress=False)
        made[name] = root / name
        return made[name], recorded.get(name)

    return get


TERMS = {
    "sgd": ["signal", "deviation", "momentum", "residual"],
    "plain_sgd": ["signal", "deviation", "residual"],
    "adam": ["signal", "deviation", "history", "residual"],
    "adamw": ["signal", "deviation", "history", "weight_decay", "residual"],
    "dropout": ["signal", "deviation", "history", "residual"],
    "torch_sgd": ["signal", "deviation", "momentum", "weight_decay", "residual"],
    "torch_sgd_dampening": ["signal", "deviation", "momentum", "weight_decay", "residual"],
    "torch_adam": ["signal", "deviation", "history", "weight_decay", "residual"],
    "torch_adamw": ["signal", "deviation", "history", "weight_decay", "residual"],
}


def _rounding_bound(theta: np.ndarray) -> np.ndarray:
    """Per iteration, ‖residual‖/‖Δθ‖ that float32 rounding can leave (with a margin of 4).

    θ_{t+1} = θ_t + step rounds to half an ulp of θ (≤ eps32·(|θ_t| + |θ_{t+1}|)/2 per entry),
    and the replayed step itself is a few float32 operations away from the recorded one
    (products, quotient, square root: ≤ 4 eps32·|Δθ|): the ratio is large where the step is
    small against θ (|Δθ| ≈ lr ≈ 0.002 against |θ| ≈ 0.3: about 1e-5).
    """
    theta = theta.astype(np.float64)
    delta = np.linalg.norm(np.diff(theta, axis=0), axis=1)
    size = np.linalg.norm(np.abs(theta[:-1]) + np.abs(theta[1:]), axis=1)
    return 4 * EPS32 * (size / delta + 4)


# --- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_terms_sum_to_the_lca_and_replay_the_steps(runs, name):
    run = open_run(runs(name)[0])
    assert run.cause_terms == TERMS[name]
    assert run.cause_parts == ["first_order", "curvature"]
    for split in ("train", "val"):
        causes, layer = run.cause_layer_lca(split), run.layer_lca(split)
        assert causes.shape == (run.num_iterations, len(TERMS[name]), 2, len(run.layer_names))
        # the stored LCA is the float32 rounding of the float64 Δθ·ḡ the causes split
        scale = np.abs(layer).max()
        np.testing.assert_allclose(causes.sum(axis=(1, 2)), layer, rtol=0, atol=1e-6 * scale)
    residual = run.replay_residual()
    if "sgd" in name:  # from the recorded steps alone: float64 rounding, as for Keras runs
        assert np.all(residual <= 1e-12), residual.max()
    else:  # Adam's replay from g_B: float32 rounding (the Keras runs accept 1e-4)
        bound = _rounding_bound(run.theta[:])
        assert np.all(residual <= bound), (residual / bound).max()
        assert residual.max() < 1e-4


@pytest.mark.parametrize("name", list(RECORDED))
def test_the_loops_own_gradients_reproduce_its_steps(runs, name):
    """With the g_B the loop's backward gave, the torch.optim replay makes the recorded θ."""
    path, recorded = runs(name)
    run = open_run(path)
    model = CauseModel.of_run(run.config, run.trajectory.layout_json, run.trajectory.attrs)
    assert model.kind == name.replace("_dampening", "")
    theta, bound = run.theta[:], _rounding_bound(run.theta[:])
    replay = model.adam_replay()  # from iteration 0: zero slots
    for t, g in enumerate(recorded.grads):
        terms = replay.step(t, theta[t], g, g, theta_next=theta[t + 1])
        assert residual_ratio(terms) <= bound[t]
        if hasattr(replay, "theta_next"):  # Adam: θ_{t+1} bitwise, but for torch's √ (an ulp)
            assert np.mean(replay.theta_next == theta[t + 1]) > 0.9
    if model.replays_batches:  # allocate's g_B, recomputed on the recorded batches: the same
        from lca.allocation.backends import batch_gradient

        gradient = batch_gradient(path, run.config, run.trajectory)
        for t in (0, run.num_iterations - 1):
            assert np.array_equal(gradient.batch(t), recorded.batches[t])
            np.testing.assert_allclose(gradient(t, theta[t]), recorded.grads[t], atol=1e-7)


def test_lca_train_dropout_masks_are_the_steps(runs):
    """The torch g_B of step t at θ_t draws step t's dropout masks: the trainer's θ_{t+1}."""
    from lca.allocation.backends import batch_gradient
    from lca.torch.replay import BatchGradient

    run = open_run(runs("dropout")[0])
    gradient = batch_gradient(run.path, run.config, run.trajectory)
    assert isinstance(gradient, BatchGradient)  # the torch one: no TensorFlow for torch runs
    model = CauseModel.of_run(run.config, run.trajectory.layout_json)
    theta, replay = run.theta[:], model.adam_replay()
    for t in range(3):
        g = gradient(t, theta[t])
        replay.step(t, theta[t], g, g, theta_next=theta[t + 1])
        assert np.mean(replay.theta_next == theta[t + 1]) > 0.9
    other = model.adam_replay(replay.m, replay.v)
    wrong = gradient(4, theta[3])  # step 4's masks at θ_3
    other.step(3, theta[3], wrong, wrong, theta_next=theta[4])
    assert np.mean(other.theta_next == theta[4]) < 0.5


# --- an independent float64 replay ------------------------------------------------------------


def _fc_gradient(theta, x, y, shapes):
    """∇ of the mean cross-entropy of the fc twin (torch layout: weights (out, in))."""
    w1, b1, w2, b2 = (
        part.reshape(shape)
        for part, shape in zip(
            np.split(theta, np.cumsum([np.prod(s) for s in shapes])[:-1]), shapes, strict=True
        )
    )
    h = np.maximum(x @ w1.T + b1, 0)
    z = h @ w2.T + b2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    dz = p / len(y)
    dh = (dz @ w2) * (h > 0)
    return np.concatenate([(dh.T @ x).ravel(), dh.sum(0), (dz.T @ h).ravel(), dz.sum(0)])


class Gradients:
    """float64 g_B and full-split gradients of a run: numpy for fc, a float64 LeNet copy."""

    def __init__(self, run):
        data = load_dataset(run.config.data, run.path)
        self.shapes = [tuple(e.shape) for e in run.layout.entries]
        self.data = {s: data.split(s) for s in ("train", "val")}
        self.model = None
        if run.config.model.name == "lenet":
            from lca.torch.models import build_torch_model

            self.model = build_torch_model(
                run.config.model, data.input_shape, data.num_classes, 0
            ).double()
            self.names = [n for n, _ in self.model.named_parameters()]
            self.seed = run.config.training.seed
        else:
            self.data = {
                s: (x.reshape(len(y), -1).astype(np.float64), y) for s, (x, y) in self.data.items()
            }

    def __call__(self, theta, split, batch=None, t=None):
        x, y = self.data[split]
        if batch is not None:
            x, y = x[batch], y[batch]
        if self.model is None:
            return _fc_gradient(theta, x, y, self.shapes)
        from lca.torch.runtime import seed_step

        params = dict(
            zip(self.names, (torch.from_numpy(p) for p in self._split(theta)), strict=True)
        )
        for p in params.values():
            p.requires_grad_(True)
        self.model.train(t is not None)
        if t is not None:
            seed_step(self.seed, t)  # step t's dropout masks
        out = torch.func.functional_call(self.model, params, (torch.from_numpy(x).double(),))
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y).long())
        grads = torch.autograd.grad(loss, list(params.values()))
        return np.concatenate([g.numpy().ravel() for g in grads])

    def _split(self, theta):
        sizes = np.cumsum([np.prod(s) for s in self.shapes])[:-1]
        return [p.reshape(s) for p, s in zip(np.split(theta, sizes), self.shapes, strict=True)]


KIND = {"dropout": "adam", "torch_sgd_dampening": "torch_sgd"}  # independent_terms' names


@pytest.mark.parametrize("name", ALL)
def test_an_independent_float64_replay_gives_every_stored_sum(runs, name):
    """Every term, both parts, per layer, per unit and over the hurting entries, against a
    float64 replay (tests/independent_causes.py; its docstring derives the bound). A share
    given to the wrong term (torch's decay counted in the gradient's terms, nesterov's look-ahead
    in the momentum, the first step's undampened buffer) or part moves a sum by many bounds."""
    path, recorded = runs(name)
    run = open_run(path)
    gradients = Gradients(run)
    theta = run.theta[:].astype(np.float64)
    batches = recorded.batches if recorded else run.trajectory.group["batch_indices"][:]
    opt = run.trajectory.attrs["torch_optimizer"]["groups"][0] if recorded else run.config.optimizer
    checks = {s: CauseCheck(run, s) for s in ("train", "val")}
    intervals = {s: stored_intervals(run, s) for s in ("train", "val")}
    state, worst_step = {}, 0.0
    for t in range(run.num_iterations):
        dropout_step = t if run.config.model.name == "lenet" else None
        g_b = gradients(theta[t], "train", batches[t], dropout_step)
        g0 = {s: gradients(theta[t], s) for s in ("train", "val")}
        kind = KIND.get(name, name)
        mine = independent_terms(kind, opt, t, theta[t], g_b, g0["train"], state)
        delta = theta[t + 1] - theta[t]
        step = sum(mine.values())
        worst_step = max(worst_step, np.linalg.norm(delta - step) / np.linalg.norm(delta))
        for split, check in checks.items():
            # ḡ on the allocation's nodes: the split of u_k·(ḡ − ∇L) is checked here, not the
            # quadrature (ReLU kinks make an independent ḡ converge slowly)
            gbar = path_mean(
                lambda point, s=split: gradients(point, s),
                theta[t],
                theta[t + 1],
                int(intervals[split][t]),
                g0[split],
            )
            check.add(t, mine, g0[split], gbar, theta[t], theta[t + 1])
    # float64 against the float32 training: ~1e-6 (SGD) to ~1e-5 (Adam) of each step
    assert worst_step < 1e-4, worst_step
    for check in checks.values():
        check.finish()


# --- refusals --------------------------------------------------------------------------------


def test_adam_without_batches_is_refused_and_other_optimisers_too(runs, tmp_path):
    _record(tmp_path / "adam", RECORDED["torch_adam"], store_batches=False)
    with pytest.raises(RunError, match="step 0 recorded no batch indices") as refused:
        allocate(tmp_path / "adam", causes=True, progress=False)
    assert "\n" not in str(refused.value)
    group = open_group(tmp_path / "adam" / "trajectory.zarr", "r+")
    group.attrs["torch_optimizer"] = {**group.attrs["torch_optimizer"], "class": "RMSprop"}
    with pytest.raises(RunError, match="SGD, Adam and AdamW; .* RMSprop"):
        allocate(tmp_path / "adam", causes=True, progress=False)
    # a torch SGD run without batches (torch_sgd's rows are -1) is allocated: see above
    path, _ = runs("torch_sgd")
    assert (open_run(path).trajectory.group["batch_indices"][:] == -1).all()
    copy = tmp_path / "sgd"
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns("lca.zarr"))
    allocate(copy, causes=True, iterations=(4, 8), progress=False)  # from a stored b
    np.testing.assert_array_equal(
        open_run(copy).cause_layer_lca("train")[4:8], open_run(path).cause_layer_lca("train")[4:8]
    )
