"""lca.torch.TrajectoryRecorder: any torch loop recorded through the optimizer's step hooks.

Plain loops, Lightning, gradient accumulation, autocast, frozen parameters and DDP are
recorded and (where it is the point) allocated with conservation; bad input is one line
and keeps what was recorded. The builders below are the user's module: ``model_fn`` and
``data_fn`` name them as ``test_torch_recorder:…``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import yaml  # noqa: E402
from helpers import assert_one_line_error  # noqa: E402
from torch import nn  # noqa: E402

import lca  # noqa: E402
from lca.config import ConfigError  # noqa: E402
from lca.storage import RunError, open_trajectory, read_fixed_weights  # noqa: E402
from lca.torch import TrajectoryRecorder  # noqa: E402
from lca.torch.models import FC  # noqa: E402

# --- the user's module: data and a model lca does not know ---------------------------------


def _blobs(n: int = 300):
    """8×8 one-channel images of 10 classes: a template per class plus noise."""
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(10, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    x = (templates[y] + 0.5 * rng.normal(size=(n, 8, 8, 1))).astype(np.float32)
    return x, y


X, Y = _blobs()
X_TRAIN, Y_TRAIN, X_VAL, Y_VAL = X[:240], Y[:240], X[240:], Y[240:]


def load_data():
    return (X_TRAIN, Y_TRAIN), (X_VAL, Y_VAL)


class Net(nn.Module):
    """flatten → hidden → ReLU → out, plus a constant buffer the forward pass reads."""

    def __init__(self, hidden: int = 16, classes: int = 10):
        super().__init__()
        self.hidden = nn.Linear(64, hidden)
        self.out = nn.Linear(hidden, classes)
        self.register_buffer("offset", torch.full((64,), 0.1))

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.reshape(x.shape[0], -1) + self.offset)))


def build(hidden: int = 16, classes: int = 10) -> nn.Module:
    return Net(hidden, classes)


MODEL_FN = "test_torch_recorder:build"
ALLOCATE = {"eval_batch_size": 1000, "threshold": 1e-4, "precision": "float32"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these models are tiny, and the suite's workers share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _step(model, optimizer, idx, *, backward_only: bool = False) -> None:
    x, y = torch.from_numpy(X_TRAIN[idx]), torch.from_numpy(Y_TRAIN[idx])
    nn.functional.cross_entropy(model(x), y).backward()
    if not backward_only:
        optimizer.step()
        optimizer.zero_grad()


def _flat(model, names=None) -> np.ndarray:
    params = dict(model.named_parameters())
    names = names or list(params)
    return np.concatenate([params[n].detach().float().numpy().reshape(-1) for n in names])


def _allocated_and_conserved(run_dir, splits=("train",)) -> None:
    """Allocated to the end, within the threshold, LCA summing to the loss change."""
    summary = lca.allocate(run_dir, splits=list(splits), progress=False)
    assert summary.complete and summary.iterations_done == summary.iterations_total
    assert lca.verify_error(run_dir).passed
    run = lca.open_run(run_dir)
    for split in splits:
        loss = run.loss(split)
        sums = run.lca(split)[:].sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(sums + run.error(split), np.diff(loss), rtol=0, atol=1e-9)
        assert loss[-1] < loss[0]  # it learned: there is a loss change to allocate


# --- recording ----------------------------------------------------------------------------------


def test_plain_loop_records_every_step_and_allocates(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    run_dir = tmp_path / "plain"
    after, batches = [_flat(model)], []
    with TrajectoryRecorder(
        model,
        optimizer,
        run_dir,
        iterations=10,
        train_data=(torch.from_numpy(X_TRAIN), torch.from_numpy(Y_TRAIN)),  # tensors work
        validation_data=(X_VAL, Y_VAL),
        model_fn=MODEL_FN,
        allocate=ALLOCATE,
        batch_size=24,
    ) as recorder:
        for t in range(10):
            idx = np.arange(t * 24, (t + 1) * 24) % 240
            recorder.batch(idx)
            _step(model, optimizer, idx)
            after.append(_flat(model))
            batches.append(idx)
    assert recorder.steps == 10 and not optimizer._optimizer_step_post_hooks  # hooks removed

    trajectory = open_trajectory(run_dir)
    trajectory.require_complete()
    np.testing.assert_array_equal(trajectory.theta[:], np.stack(after))  # θ_0 … θ_10, exactly
    np.testing.assert_array_equal(trajectory.group["batch_indices"][:], np.stack(batches))
    attrs = trajectory.attrs
    assert [e["name"] for e in attrs["layout"]] == [
        "hidden/weight",
        "hidden/bias",
        "out/weight",
        "out/bias",
    ]
    assert attrs["torch_optimizer"] == {
        "class": "SGD",
        "groups": [
            {
                "lr": 0.05,
                "momentum": 0.9,
                "nesterov": False,
                "dampening": 0,
                "weight_decay": 0,
                "maximize": False,
                "parameters": ["hidden.weight", "hidden.bias", "out.weight", "out.bias"],
            }
        ],
    }
    assert "torch" in attrs["versions"] and attrs["recorded_by"] == "lca.torch.TrajectoryRecorder"
    assert [n for n, _ in read_fixed_weights(trajectory.group)] == ["offset"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["framework"] == "torch"
    assert config["model"]["builder"] == MODEL_FN
    assert config["data"]["builder"] == "lca.data:run_arrays"  # the arrays are in the run
    assert config["training"]["iterations"] == 10
    _allocated_and_conserved(run_dir, splits=("train", "val"))


def test_lightning_trainer_is_recorded_and_allocated(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = FC((8, 8, 1), [16], 10)  # a built-in: no model_fn needed

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    class Record(pl.Callback):
        def on_train_start(self, trainer, module):
            self.recorder = TrajectoryRecorder(
                module.net,
                trainer.optimizers[0],
                tmp_path / "lightning",
                iterations=trainer.max_steps,
                data_fn="test_torch_recorder:load_data",
                allocate=ALLOCATE,
            )

        def on_train_end(self, trainer, module):
            self.recorder.close()

    data = torch.utils.data.TensorDataset(torch.from_numpy(X_TRAIN), torch.from_numpy(Y_TRAIN))
    module, record = Classifier(), Record()
    trainer = pl.Trainer(
        max_steps=8,
        accelerator="cpu",
        devices=1,
        callbacks=[record],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on data loader workers
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=30))
    assert record.recorder.steps == 8
    run_dir = tmp_path / "lightning"
    trajectory = open_trajectory(run_dir)
    assert trajectory.theta.shape[0] == 9
    np.testing.assert_array_equal(trajectory.theta[8], _flat(module.net))
    assert trajectory.attrs["torch_optimizer"]["class"] == "Adam"
    assert trajectory.attrs["torch_optimizer"]["groups"][0]["betas"] == [0.9, 0.999]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "fc" and config["model"]["hidden_units"] == [16]
    assert config["data"]["builder"] == "test_torch_recorder:load_data"
    _allocated_and_conserved(run_dir)


def test_gradient_accumulation_records_one_row_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    after, rows = [_flat(model)], []
    with TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "accumulated",
        iterations=4,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
        batch_size=30,
    ) as recorder:
        with pytest.raises(ConfigError) as failure:
            recorder.batch(np.arange(31))
        assert_one_line_error(failure, "step 1 has 31 examples, more than batch_size=30")
        with pytest.raises(ConfigError, match="index 240 is outside the 240 training examples"):
            recorder.batch(torch.tensor([3, 240]))
        for t in range(4):
            for k in range(3):  # three micro-batches of 10, then one step
                idx = np.arange(10) + 10 * (3 * t + k)
                recorder.batch(idx)
                _step(model, optimizer, idx, backward_only=True)
                assert recorder.steps == t  # backward passes record nothing
            optimizer.step()
            optimizer.zero_grad()
            after.append(_flat(model))
            rows.append(np.arange(30) + 30 * t)
    trajectory = open_trajectory(tmp_path / "accumulated")
    trajectory.require_complete()
    assert trajectory.num_iterations == 4
    np.testing.assert_array_equal(trajectory.theta[:], np.stack(after))
    np.testing.assert_array_equal(trajectory.group["batch_indices"][:], np.stack(rows))


def test_autocast_bfloat16_and_low_precision_parameters(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    after = [_flat(model)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 parameters under autocast: no warning
        recorder = TrajectoryRecorder(
            model,
            optimizer,
            tmp_path / "autocast",
            iterations=6,
            train_data=(X_TRAIN, Y_TRAIN),
            model_fn=MODEL_FN,
            allocate=ALLOCATE,
        )
    with recorder:
        for t in range(6):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(torch.from_numpy(X_TRAIN[t * 40 : (t + 1) * 40]))
            assert logits.dtype == torch.bfloat16
            nn.functional.cross_entropy(
                logits.float(), torch.from_numpy(Y_TRAIN[t * 40 : (t + 1) * 40])
            ).backward()
            optimizer.step()
            optimizer.zero_grad()
            after.append(_flat(model))
    trajectory = open_trajectory(tmp_path / "autocast")
    assert trajectory.theta.dtype == np.float32
    np.testing.assert_array_equal(trajectory.theta[:], np.stack(after))
    _allocated_and_conserved(tmp_path / "autocast")

    # a GradScaler skips a step with inf gradients: optimizer.step is not called, no row
    scaler = torch.amp.GradScaler("cpu")
    with TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "scaled",
        iterations=3,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
    ) as recorder:
        for overflow in (False, True, False):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(torch.from_numpy(X_TRAIN[:40]))
            loss = nn.functional.cross_entropy(logits.float(), torch.from_numpy(Y_TRAIN[:40]))
            scaler.scale(loss).backward()
            if overflow:
                model.out.weight.grad.fill_(float("inf"))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    assert recorder.steps == 2
    trajectory = open_trajectory(tmp_path / "scaled")
    assert trajectory.num_iterations == 2 and trajectory.complete
    np.testing.assert_array_equal(trajectory.theta[2], _flat(model))

    # bfloat16 parameters: recorded as float32 (exactly their values), one warning in all
    half = build().to(torch.bfloat16)
    optimizer = torch.optim.SGD(half.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with TrajectoryRecorder(
            half,
            optimizer,
            tmp_path / "bf16",
            iterations=3,
            train_data=(X_TRAIN, Y_TRAIN),
            model_fn=MODEL_FN,
        ):
            for _ in range(3):
                x = torch.from_numpy(X_TRAIN[:40]).to(torch.bfloat16)
                nn.functional.cross_entropy(
                    half(x).float(), torch.from_numpy(Y_TRAIN[:40])
                ).backward()
                optimizer.step()
                optimizer.zero_grad()
    about_dtype = [w for w in caught if "bfloat16" in str(w.message)]
    assert len(about_dtype) == 1, [str(w.message) for w in caught]
    assert "cast to float32" in str(about_dtype[0].message)
    trajectory = open_trajectory(tmp_path / "bf16")
    np.testing.assert_array_equal(trajectory.theta[3], _flat(half))
    offset = dict(read_fixed_weights(trajectory.group))["offset"]
    assert offset.dtype == np.float32  # a bfloat16 buffer, stored as float32


def test_frozen_parameters_are_fixed_state_and_allocation_conserves(tmp_path):
    torch.manual_seed(0)
    model = build()
    model.hidden.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.1, momentum=0.5)
    frozen = model.hidden.weight.detach().clone()
    with TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "frozen",
        iterations=8,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
        allocate=ALLOCATE,
    ):
        for t in range(8):
            _step(model, optimizer, np.arange(30) + 30 * t)
    trajectory = open_trajectory(tmp_path / "frozen")
    assert [e["name"] for e in trajectory.layout_json] == ["out/weight", "out/bias"]
    assert trajectory.theta.shape[1] == 16 * 10 + 10
    fixed = dict(read_fixed_weights(trajectory.group))
    assert sorted(fixed) == ["hidden.bias", "hidden.weight", "offset"]
    np.testing.assert_array_equal(fixed["hidden.weight"], frozen.numpy())
    _allocated_and_conserved(tmp_path / "frozen")


def test_fewer_steps_shrink_the_run_and_more_steps_are_one_line(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "short",
        iterations=5,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
    ) as recorder:
        with pytest.raises(ConfigError, match="pass batch_size="):
            recorder.batch([0, 1])
        for t in range(3):  # stopped early
            _step(model, optimizer, np.arange(20) + 20 * t)
    trajectory = open_trajectory(tmp_path / "short")
    trajectory.require_complete()
    assert trajectory.num_iterations == 3 and trajectory.theta.shape[0] == 4
    assert trajectory.group["batch_indices"].shape == (3, 1)
    assert (trajectory.group["batch_indices"][:] == -1).all()  # batch() was not called
    config = yaml.safe_load((tmp_path / "short" / "config.yaml").read_text())
    assert config["training"]["iterations"] == 3

    recorder = TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "long",
        iterations=2,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
    )
    for t in range(2):
        _step(model, optimizer, np.arange(20) + 20 * t)
    before = _flat(model)
    with pytest.raises(ConfigError) as failure:
        _step(model, optimizer, np.arange(20))
    assert_one_line_error(failure, "step 3 is more than iterations=2", "pass the number")
    np.testing.assert_array_equal(_flat(model), before)  # the step was not taken
    trajectory = open_trajectory(tmp_path / "long")
    trajectory.require_complete()  # the two steps announced are all there
    np.testing.assert_array_equal(trajectory.theta[2], before)
    assert recorder.writer is None and not optimizer._optimizer_step_pre_hooks


def test_changed_buffer_is_named_at_close(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    recorder = TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "buffer",
        iterations=2,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
    )
    _step(model, optimizer, np.arange(20))
    model.offset.add_(1.0)  # not θ: the step check does not see it, the close does
    _step(model, optimizer, np.arange(20))
    with pytest.warns(UserWarning, match="offset .* changed during training"):
        recorder.close()
    assert open_trajectory(tmp_path / "buffer").attrs["non_trainable_changed"] == ["offset"]
    with pytest.raises(RunError, match="offset changed during training"):
        lca.allocate(tmp_path / "buffer", splits=["train"], progress=False)


# --- bad input ------------------------------------------------------------------------------------


def test_parameters_changed_outside_the_step_are_one_line_and_keep_the_rows(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    after = [_flat(model)]
    run_dir = tmp_path / "clipped"
    recorder = TrajectoryRecorder(
        model, optimizer, run_dir, iterations=6, train_data=(X_TRAIN, Y_TRAIN), model_fn=MODEL_FN
    )
    with pytest.raises(RunError) as failure, recorder:
        for t in range(6):
            _step(model, optimizer, np.arange(20) + 20 * t)
            after.append(_flat(model))
            if t == 1:
                with torch.no_grad():  # weight clipping after the step
                    model.out.weight.clamp_(-0.05, 0.05)
    line = assert_one_line_error(
        failure, "between optimizer steps 2 and 3", "out.weight", "weight clipping"
    )
    assert "θ_0..θ_2 are kept" in line
    trajectory = open_trajectory(run_dir)
    assert not trajectory.complete and trajectory.steps_recorded == 3
    assert "outside optimizer.step" in trajectory.attrs["status"]
    np.testing.assert_array_equal(trajectory.theta[:3], np.stack(after[:3]))
    assert not optimizer._optimizer_step_pre_hooks  # the training may go on, unrecorded
    optimizer.step()

    # an edit before the first step is named as such
    recorder = TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "edited",
        iterations=2,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
    )
    with torch.no_grad():
        model.hidden.bias.zero_()
    with pytest.raises(RunError) as failure:
        _step(model, optimizer, np.arange(20))
    assert_one_line_error(failure, "between the start and step 1", "hidden.bias")
    assert recorder.writer is None


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-process gloo group on the CPU, as torchrun would make with one worker."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    rendezvous = tmp_path_factory.mktemp("gloo") / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    yield dist
    dist.destroy_process_group()


def test_ddp_is_recorded_on_rank_zero_unwrapped(tmp_path, process_group, monkeypatch):
    torch.manual_seed(0)
    inner = build()
    model = nn.parallel.DistributedDataParallel(inner)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    after = [_flat(inner)]
    with TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "ddp",
        iterations=3,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
    ):
        for t in range(3):
            _step(model, optimizer, np.arange(20) + 20 * t)
            after.append(_flat(inner))
    trajectory = open_trajectory(tmp_path / "ddp")
    trajectory.require_complete()
    assert trajectory.layout_json[0]["name"] == "hidden/weight"  # no "module." prefix
    np.testing.assert_array_equal(trajectory.theta[:], np.stack(after))

    # any other rank: the recorder does nothing at all
    monkeypatch.setattr(process_group, "get_rank", lambda *a, **k: 1)
    with TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "rank1",
        iterations=3,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
    ) as recorder:
        assert not recorder.active and not optimizer._optimizer_step_post_hooks
        _step(model, optimizer, np.arange(20))
    assert not (tmp_path / "rank1").exists()


def test_sharded_models_are_refused(tmp_path, process_group):
    from torch.distributed import fsdp

    run_dir = tmp_path / "sharded"
    sharded = [fsdp.FullyShardedDataParallel(build(), device_id=torch.device("cpu"))]
    if hasattr(fsdp, "fully_shard"):  # FSDP2
        shard = nn.Sequential(build())
        fsdp.fully_shard(shard)
        sharded.append(shard)

    class Wrapped(nn.Module):  # what a FSDP wrapper looks like inside another module
        def __init__(self):
            super().__init__()
            self._fsdp_wrapped_module = build()

    sharded.append(Wrapped())
    for model in sharded:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        with pytest.raises(ConfigError) as failure:
            TrajectoryRecorder(
                model,
                optimizer,
                run_dir,
                iterations=2,
                train_data=(X_TRAIN, Y_TRAIN),
                model_fn=MODEL_FN,
            )
        assert_one_line_error(failure, "FSDP", "record an unsharded model", "gather the full")
    assert not run_dir.exists()


def test_model_fn_building_another_model_is_one_line(tmp_path):
    model = build(hidden=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run_dir = tmp_path / "mismatch"
    common = dict(iterations=2, train_data=(X_TRAIN, Y_TRAIN))
    with pytest.raises(ConfigError) as failure:
        TrajectoryRecorder(
            model, optimizer, run_dir, model_fn=MODEL_FN, model_kwargs={"hidden": 32}, **common
        )
    assert_one_line_error(failure, MODEL_FN, "builds another model", "hidden.weight", "(32, 64)")
    with pytest.raises(ConfigError) as failure:  # a model of the user's, no model_fn
        TrajectoryRecorder(model, optimizer, run_dir, **common)
    assert_one_line_error(failure, "Net is not one of lca's built-in", "model_fn=")
    fc = FC((8, 8, 1), [16], 7)  # a built-in whose outputs are not the data's 10 classes
    with pytest.raises(ConfigError) as failure:
        TrajectoryRecorder(fc, torch.optim.SGD(fc.parameters(), lr=0.1), run_dir, **common)
    assert_one_line_error(failure, "built-in fc", "10 classes", "dense_2.weight")
    with pytest.raises(ConfigError) as failure:
        TrajectoryRecorder(model, optimizer, run_dir, model_fn="test_torch_recorder:nope", **common)
    assert_one_line_error(failure, "test_torch_recorder has no nope")
    with pytest.raises(ConfigError, match="either data_fn"):
        TrajectoryRecorder(model, optimizer, run_dir, iterations=2, model_fn=MODEL_FN)
    other = torch.optim.SGD(build().parameters(), lr=0.05)
    with pytest.raises(ConfigError) as failure:
        TrajectoryRecorder(model, other, run_dir, model_fn=MODEL_FN, **common)
    assert_one_line_error(failure, "4 of its parameters are not the model's")
    assert not run_dir.exists()


def test_existing_recording_is_refused_without_overwrite(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run_dir = tmp_path / "existing"

    def record(steps: int = 2, **kwargs) -> TrajectoryRecorder:
        recorder = TrajectoryRecorder(
            model,
            optimizer,
            run_dir,
            iterations=2,
            train_data=(X_TRAIN, Y_TRAIN),
            model_fn=MODEL_FN,
            **kwargs,
        )
        for t in range(steps):
            _step(model, optimizer, np.arange(20) + 20 * t)
        return recorder

    record().close()
    theta = open_trajectory(run_dir).theta[:]
    with pytest.raises(RunError) as failure:
        record()
    assert_one_line_error(failure, "already holds a complete recording", "overwrite=True")
    np.testing.assert_array_equal(open_trajectory(run_dir).theta[:], theta)  # untouched

    record(steps=1, overwrite=True).abort()  # an interrupted recording
    with pytest.raises(RunError) as failure:
        record()
    assert_one_line_error(failure, "interrupted recording (2 of 3 steps)", "cannot continue")
    record(overwrite=True).close()
    open_trajectory(run_dir).require_complete()


def test_a_learning_rate_schedule_is_recorded_and_causes_refused(tmp_path):
    """A schedule changes the step rule the --causes replay assumes fixed: the recording names
    the first iteration taken with other hyperparameters, and --causes is one line."""
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    run_dir = tmp_path / "run"
    with lca.torch.TrajectoryRecorder(
        model, optimizer, run_dir, iterations=4, train_data=(X_TRAIN, Y_TRAIN), model_fn=MODEL_FN
    ):
        for t in range(4):
            _step(model, optimizer, np.arange(t * 10, t * 10 + 10))
            schedule.step()
    assert open_trajectory(run_dir).attrs["torch_optimizer_changed_at"] == 2
    with pytest.raises(RunError) as failure:
        lca.allocate(run_dir, splits=["train"], causes=True, progress=False)
    assert_one_line_error(failure, "changed at iteration 2", "learning-rate schedule")
