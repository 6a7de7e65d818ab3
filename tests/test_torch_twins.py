"""Two frameworks, one answer: the torch twins of the built-in networks compute what Keras does.

* One trajectory, two backends: a Keras tiny_fc run and a torch run directory holding the
  same θ rows (mapped to the twin's layout with :func:`lca.torch.keras_to_torch`) allocate
  to the same losses, gradients, A[t, i], sub-intervals and ``verify-error`` table.
* One config, two trainers: the Keras :class:`~lca.tensorflow.training.Trainer` and the
  :class:`~lca.torch.training.TorchTrainer`, from the same θ_0 on the same batches with plain
  SGD, follow the same trajectory to float32 rounding (fc and LeNet).
* LeNet's full-split objectives (convolutions, pooling, the flattening order) agree at the
  recorded θ of a Keras run.

Tolerances (derived where each is used): losses are float64 sums of float32 per-example
losses, gradients float32; the two frameworks add the same terms in different orders (matmul
blocking, reductions), so results differ by float32 rounding of those sums, never more.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import lca_arrays

torch = pytest.importorskip("torch")

from lca.allocation.blocks import load_objective  # noqa: E402
from lca.config import load_config  # noqa: E402
from lca.data import load_dataset  # noqa: E402
from lca.quadrature import refinement_levels  # noqa: E402
from lca.storage import (  # noqa: E402
    CONFIG_FILE,
    TrajectoryWriter,
    open_trajectory,
    read_run_config,
    trajectory_attrs,
    write_fixed_weights,
)
from lca.torch import build_torch_model, keras_to_torch, torch_layout  # noqa: E402

CONFIGS = Path(__file__).parents[1] / "configs"
SPLITS = ("train", "val")

# --- a Keras run's torch twin ---------------------------------------------------------------

# axis orders of the inverse of keras_to_torch: dense weight (out, in) -> kernel (in, out);
# conv weight (out, in, kh, kw) -> kernel (kh, kw, in, out)
TORCH_TO_KERAS = {2: (1, 0), 4: (2, 3, 1, 0)}
KERAS_NAMES = {"kernel": "weight", "bias": "bias"}  # variable -> parameter name in a layer


def keras_parts(row: np.ndarray, layout_json: list[dict]) -> list[np.ndarray]:
    """A flat θ row split into a run's variables, in their shapes."""
    return [row[e["offset"] : e["offset"] + e["size"]].reshape(e["shape"]) for e in layout_json]


def check_twin_layouts(keras_json: list[dict], torch_json: list[dict]) -> None:
    """The twin's layout pairs entry by entry with the Keras one: same layer, same variable,
    same number of values, shape permuted as keras_to_torch permutes it."""
    assert len(keras_json) == len(torch_json)
    for k, t in zip(keras_json, torch_json):
        layer, _, variable = k["name"].rpartition("/")
        assert t["name"] == f"{layer}/{KERAS_NAMES[variable]}", (k["name"], t["name"])
        assert t["layer"] == k["layer"] and t["size"] == k["size"]
        assert list(keras_to_torch([np.empty(k["shape"])])[0].shape) == t["shape"]


def torch_rows_to_keras(rows: np.ndarray, torch_json: list[dict], keras_json) -> np.ndarray:
    """(n, K) rows in the twin's layout (θ, gradients, A) -> the same rows in Keras' layout."""
    out = np.empty_like(rows)
    for t, k in zip(torch_json, keras_json):
        block = rows[:, t["offset"] : t["offset"] + t["size"]].reshape(len(rows), *t["shape"])
        axes = TORCH_TO_KERAS.get(len(t["shape"]))
        if axes is not None:
            block = block.transpose(0, *(a + 1 for a in axes))
        assert list(block.shape[1:]) == k["shape"]
        out[:, k["offset"] : k["offset"] + k["size"]] = block.reshape(len(rows), -1)
    return out


def write_torch_twin(keras_run: Path, out: Path) -> Path:
    """A torch run directory holding ``keras_run``'s trajectory: the same config (but
    ``framework: torch``), data, batches and metrics, every θ row split by the Keras layout,
    mapped with keras_to_torch and concatenated in the twin's layout order."""
    raw = yaml.safe_load((keras_run / CONFIG_FILE).read_text())
    raw["framework"] = "torch"
    out.mkdir(parents=True)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(out / CONFIG_FILE)
    source = open_trajectory(keras_run)
    group = source.group
    dataset = load_dataset(config.data)
    model = build_torch_model(
        config.model, dataset.input_shape, dataset.num_classes, config.training.seed
    )
    layout = torch_layout(model)
    check_twin_layouts(source.layout_json, layout.to_json())
    attrs = trajectory_attrs(
        config.name,
        layout,
        config.training.seed,
        dataset,
        recorded_by="tests/test_torch_twins.py",
        versions={"torch": torch.__version__},
    )
    writer = TrajectoryWriter(
        out,
        num_iterations=source.num_iterations,
        num_params=layout.total,
        batch_size=group["batch_indices"].shape[1] if "batch_indices" in group else None,
        train_indices=group["train_indices"][:],
        val_indices=group["val_indices"][:],
        attrs=attrs,
    )
    with writer.writing():  # as `lca train` does for every torch run (none for fc, lenet)
        write_fixed_weights(writer.group, [])
    names = ("loss", "accuracy", "val_accuracy", "batch_indices")
    metrics = {n: group[n][:] for n in names if n in group}
    for step, row in enumerate(source.theta[:]):
        parts = keras_to_torch(keras_parts(row, source.layout_json))
        recorded = None if step == 0 else {n: v[step - 1] for n, v in metrics.items()}
        writer.append(np.concatenate([p.reshape(-1) for p in parts]), recorded)
    assert writer.close("complete") == source.num_iterations + 1
    return out


# --- one trajectory, two backends -----------------------------------------------------------


@pytest.fixture(scope="module")
def keras_fc(allocated_runs) -> Path:
    """tiny_fc trained and allocated by TensorFlow (the session's shared run: read only)."""
    return allocated_runs("tiny_fc")


@pytest.fixture(scope="module")
def torch_fc(keras_fc, tmp_path_factory) -> Path:
    """Its torch twin, allocated with the same settings (the config's: float32, adaptive,
    threshold 1e-4, at most 32 sub-intervals, chunks of 8 iterations)."""
    from lca import allocate

    run = write_torch_twin(keras_fc, tmp_path_factory.mktemp("twin") / "tiny_fc")
    summary = allocate(run, progress=False)
    assert summary.complete and summary.iterations_done == summary.iterations_total == 40
    return run


@pytest.fixture(scope="module")
def both(keras_fc, torch_fc):
    """Every lca.zarr array of both runs, the twin's per-parameter rows in Keras' layout."""
    keras_json = open_trajectory(keras_fc).layout_json
    torch_json = open_trajectory(torch_fc).layout_json
    k, t = lca_arrays(keras_fc), lca_arrays(torch_fc)
    for name, value in t.items():
        if name.endswith(("/lca", "/grad")):
            t[name] = torch_rows_to_keras(value, torch_json, keras_json)
    return k, t


def test_the_twin_holds_the_same_trajectory_bitwise(keras_fc, torch_fc):
    keras, twin = open_trajectory(keras_fc), open_trajectory(torch_fc)
    assert twin.complete and twin.attrs["versions"]["torch"] == torch.__version__
    assert [e["name"] for e in twin.layout_json][:2] == ["dense_1/weight", "dense_1/bias"]
    back = torch_rows_to_keras(twin.theta[:], twin.layout_json, keras.layout_json)
    np.testing.assert_array_equal(back, keras.theta[:], strict=True)  # a permutation only
    for name in ("batch_indices", "train_indices", "val_indices", "loss"):
        np.testing.assert_array_equal(twin.group[name][:], keras.group[name][:], err_msg=name)


def test_lca_torch_twin_writes_the_same_twin(keras_fc, torch_fc, tmp_path):
    """lca.torch.twin.torch_twin (the library's mapping) agrees bit for bit with the
    independent one of this module: θ rows, layout, metrics, batches."""
    twin_module = pytest.importorskip("lca.torch.twin")
    made = twin_module.torch_twin(keras_fc, tmp_path / "twin")
    ours, theirs = open_trajectory(torch_fc), open_trajectory(made)
    assert read_run_config(made).framework == "torch"
    assert theirs.layout_json == ours.layout_json
    np.testing.assert_array_equal(theirs.theta[:], ours.theta[:], strict=True)
    for name in ("loss", "accuracy", "val_accuracy", "batch_indices", "train_indices"):
        np.testing.assert_array_equal(theirs.group[name][:], ours.group[name][:], err_msg=name)


def test_both_backends_give_the_same_losses(both):
    # the float64 mean of float32 per-example losses over whole splits: the frameworks differ
    # in the float32 rounding of the logits and of log-softmax, ~1e-7 per example and
    # averaging out over 1600 / 400 examples. Measured: ≤ 1.5e-8 relative.
    k, t = both
    for split in SPLITS:
        np.testing.assert_allclose(t[f"{split}/loss"], k[f"{split}/loss"], rtol=1e-6, atol=0)


def test_both_backends_give_the_same_lca_gradients_and_sub_intervals(both):
    """A[t, i] = Δθ_i · (weighted mean of float32 full-split gradients along the step).

    Δθ is the same in both runs (a permutation of the same float32 rows), so A differs only
    where the gradients do: float32 sums of the same terms in another order (≤ 700 examples
    per evaluation batch, then a 64- or 16-term contraction), whose rounding errors add up
    like a random walk, ~√700 · 2⁻²⁴ ≈ 1.6e-6 of the largest term. The bound below, 1e-5 of
    the iteration's largest |A| (about 84 float32 ulps of it), leaves a factor 6 for the
    unlucky cases; a wrong transpose, layer order or loss would be off by O(1).
    Measured: ≤ 4.1e-7 (≤ 6 ulps) for A, ≤ 6e-7 (≤ 10 ulps) for the gradients.

    Sub-intervals: the quadrature halves while an iteration's worst |error| (over both
    splits) exceeds its level's threshold. The errors of the two backends differ by ~2e-8
    (measured), so a count can legitimately differ only at an iteration whose error on the
    coarser count lies within that much of the threshold; there the run with fewer
    sub-intervals must have accepted an error just below its threshold. Measured: no
    iteration differs.
    """
    k, t = both
    settings = load_config(CONFIGS / "tiny_fc.yaml").allocate
    thresholds = {
        level.intervals: level.threshold
        for level in refinement_levels(settings.rule, settings.threshold, settings.max_intervals)
    }
    # one count per iteration
    np.testing.assert_array_equal(k["train/intervals"], k["val/intervals"])
    np.testing.assert_array_equal(t["train/intervals"], t["val/intervals"])
    same = k["train/intervals"] == t["train/intervals"]
    for it in np.flatnonzero(~same):
        coarse = k if k["train/intervals"][it] < t["train/intervals"][it] else t
        worst = max(abs(coarse[f"{split}/error"][it]) for split in SPLITS)
        limit = thresholds[int(coarse["train/intervals"][it])]
        assert limit - 1e-6 <= worst <= limit, (it, worst, limit)
    assert same.mean() >= 0.9, "more than a rounding coincidence"

    for split in SPLITS:
        a_k, a_t = k[f"{split}/lca"][same], t[f"{split}/lca"][same]
        scale = np.abs(a_k).max(axis=1, keepdims=True)
        assert (np.abs(a_t - a_k) <= 1e-5 * scale).all(), np.abs(a_t - a_k).max()
        g_k, g_t = k[f"{split}/grad"], t[f"{split}/grad"]
        scale = np.abs(g_k).max(axis=1, keepdims=True)
        assert (np.abs(g_t - g_k) <= 1e-5 * scale).all(), np.abs(g_t - g_k).max()
        # the conservation error ΔL − Σ A that certifies each iteration: the same to 1 % of
        # the threshold (loss differences ~3e-8 plus Σ A differences ~5e-9; measured 2e-8)
        assert np.abs(t[f"{split}/error"] - k[f"{split}/error"]).max() <= 1e-6
        # the first-order error needs no quadrature: the same to the loss and gradient rounding
        assert np.abs(t[f"{split}/error_fo"] - k[f"{split}/error_fo"]).max() <= 1e-6
    np.testing.assert_array_equal(t["done"], k["done"])


NUMBER = re.compile(r"[-+]?\d+(?:\.(\d+))?(?:e([-+]?\d+))?")


def _printed_unit(token: re.Match) -> float:
    """One unit of the last digit a number was printed with (``8.744e-05``: 1e-08)."""
    decimals = len(token.group(1) or "")
    return 10.0 ** (int(token.group(2) or 0) - decimals)


def assert_same_printed_table(got: str, want: str) -> int:
    """The same lines, labels and integers; every printed decimal number the same up to one
    unit of its last digit (a value on a rounding boundary prints either way). Returns how
    many numbers differ in their last digit."""
    got_lines, want_lines = got.splitlines(), want.splitlines()
    assert len(got_lines) == len(want_lines), (got, want)
    last_digit = 0
    for g, w in zip(got_lines, want_lines):
        assert NUMBER.sub("#", g) == NUMBER.sub("#", w), (g, w)
        for a, b in zip(NUMBER.finditer(g), NUMBER.finditer(w)):
            if a.group(1) is None and a.group(2) is None:  # integers: counts, settings
                assert a.group() == b.group(), (g, w)
            elif a.group() != b.group():
                assert abs(float(a.group()) - float(b.group())) <= 1.0001 * _printed_unit(b)
                last_digit += 1
    return last_digit


def test_both_backends_print_the_same_verify_error_table(keras_fc, torch_fc, both):
    from lca import verify_error

    k_report, t_report = verify_error(keras_fc), verify_error(torch_fc)
    assert not k_report.failures() and not t_report.failures()  # both PASS
    k_text = k_report.to_text().replace(str(keras_fc), "RUN")
    t_text = t_report.to_text().replace(str(torch_fc), "RUN")
    k, t = both
    if not np.array_equal(k["train/intervals"], t["train/intervals"]):
        # a legitimate flip (see above) changes the sub-interval histogram and the error
        # aggregates: then only the loss rows and the verdict are compared
        keep = ("loss", "actual loss change", "PASS")
        k_text, t_text = (
            "\n".join(line for line in text.splitlines() if line.startswith(keep))
            for text in (k_text, t_text)
        )
    # measured: one number of the table (a max |error| at 8.7445e-05) prints one unit apart
    assert assert_same_printed_table(t_text, k_text) <= 3


# --- one config, two trainers ---------------------------------------------------------------


def _no_dropout(keras_trainer, torch_trainer) -> None:
    """Dropout off in both training models: each framework draws its masks from its own RNG,
    so with dropout the twins cannot follow the same trajectory. Keras' Dropout is the
    identity while ``rate`` is 0 (read when the training step is traced, at its first call)."""
    layers = [layer for layer in keras_trainer.model.layers if hasattr(layer, "rate")]
    modules = [m for m in torch_trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(layers) == len(modules)
    for layer in layers:
        layer.rate = 0.0
    for module in modules:
        module.p = 0.0


# the brief's plain SGD on both networks, then the other update rules the trainers share
TRAINER_SETUPS = {
    "fc-sgd": ("tiny_fc", ["optimizer.momentum=0"]),
    "lenet-sgd": ("tiny_lenet", ["optimizer.momentum=0"]),
    "fc-momentum": ("tiny_fc", ["optimizer.momentum=0.9"]),
    "fc-adamw": ("tiny_fc", ["optimizer.name=adamw", "optimizer.lr=0.001",
                             "optimizer.weight_decay=0.01"]),
}  # fmt: skip


@pytest.mark.parametrize("setup", list(TRAINER_SETUPS))
def test_keras_and_torch_trainers_follow_the_same_trajectory(setup):
    """θ_0 copied from Keras into the twin, then 10 steps on the same batches.

    A plain-SGD step is θ += −lr · g with lr · |g| far below |θ| (lr 0.05 / 0.02): the float32
    error of the step itself is much smaller than an ulp of θ, so the two frameworks' rounding
    differences of g (summation order) change θ_t+1 by at most one ulp where the sum lands
    near a rounding boundary. Such one-ulp differences feed back into later gradients only
    through lr · H · δθ, negligible in 10 steps, so after t+1 steps the twins may differ by
    about t+1 ulps of the largest |θ|: the bound allows twice that. Heavy-ball momentum adds
    the same rounded velocity on both sides; AdamW's steps (lr 1e-3 · m/(√v + ε), decay) are
    as small against |θ|, and differ only where |g| is near ε (none here). Measured: ≤ 1 ulp
    at every step, for every setup. The mini-batch losses: ≤ 1.1e-7 relative (1e-6 allowed).
    """
    from lca.tensorflow.training import Trainer
    from lca.torch.training import TorchTrainer
    from lca.training.loop import batch_schedule

    steps = 10
    name, overrides = TRAINER_SETUPS[setup]
    keras_config = load_config(CONFIGS / f"{name}.yaml", overrides)
    torch_config = load_config(CONFIGS / f"{name}.yaml", [*overrides, "framework=torch"])
    dataset = load_dataset(keras_config.data)
    keras_trainer = Trainer(keras_config, dataset)
    torch_trainer = TorchTrainer(torch_config, dataset)
    _no_dropout(keras_trainer, torch_trainer)
    theta_0 = [v.numpy() for v in keras_trainer.variables]
    with torch.no_grad():
        for p, value in zip(torch_trainer.params, keras_to_torch(theta_0), strict=True):
            p.copy_(torch.from_numpy(value))
    layout = keras_trainer.layout.to_json()
    check_twin_layouts(layout, torch_trainer.layout.to_json())
    torch_json = torch_trainer.layout.to_json()
    np.testing.assert_array_equal(
        torch_rows_to_keras(torch_trainer.theta()[None], torch_json, layout)[0],
        keras_trainer.theta(),
    )
    start = keras_trainer.theta()
    tc = keras_config.training
    schedule = batch_schedule(len(dataset.y_train), tc.batch_size, steps, tc.seed)
    worst = []
    for t in range(steps):
        k_out = keras_trainer.step(schedule[t], t)
        t_out = torch_trainer.step(schedule[t], t)
        assert abs(float(t_out[0]) - float(k_out[0])) <= 1e-6 * abs(float(k_out[0])), t
        k_theta = np.concatenate([v.reshape(-1) for v in k_out[3:]])
        t_theta = np.concatenate([v.reshape(-1) for v in t_out[3:]])
        t_theta = torch_rows_to_keras(t_theta[None], torch_json, layout)[0]
        ulp = np.spacing(np.abs(k_theta).max())
        worst.append(np.abs(t_theta - k_theta).max() / ulp)
        assert worst[-1] <= 2 * (t + 1), (t, worst)
    assert not np.array_equal(k_theta, start)  # they did move


def test_lenet_twins_have_the_same_full_split_loss_and_gradient(trained_runs, tmp_path):
    """Convolutions ('same' padding), max pooling and the NHWC flattening order: the torch
    objective of the twin run equals the TensorFlow objective of a Keras LeNet run at the first
    and the last recorded θ. Tolerances as for the allocation above (losses 1e-6 relative,
    gradients 1e-5 of the largest |g|); measured ≤ 2.6e-9 and ≤ 4.3e-7 (≤ 6 ulps)."""
    keras_run = trained_runs("tiny_lenet")
    twin = write_torch_twin(keras_run, tmp_path / "tiny_lenet")
    keras_json = open_trajectory(keras_run).layout_json
    torch_json = open_trajectory(twin).layout_json
    assert [e["name"] for e in torch_json][0] == "conv_1/weight"
    k_objective = load_objective(keras_run, SPLITS)
    t_objective = load_objective(twin, SPLITS)
    assert type(t_objective).__name__ == "TorchObjective"
    k_theta, t_theta = open_trajectory(keras_run).theta, open_trajectory(twin).theta
    for step in (0, k_theta.shape[0] - 1):
        k_values, t_values = k_objective(k_theta[step]), t_objective(t_theta[step])
        for split in SPLITS:
            (k_loss, k_grad), (t_loss, t_grad) = k_values[split], t_values[split]
            assert abs(t_loss - k_loss) <= 1e-6 * k_loss, (step, split, t_loss, k_loss)
            t_grad = torch_rows_to_keras(t_grad[None], torch_json, keras_json)[0]
            assert t_grad.dtype == k_grad.dtype == np.float32
            diff = np.abs(t_grad - k_grad).max()
            assert diff <= 1e-5 * np.abs(k_grad).max(), (step, split, diff)
