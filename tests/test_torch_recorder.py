"""lca.torch.TrajectoryRecorder: any torch loop recorded through the optimizer's step hooks.

Plain loops, Lightning, gradient accumulation, autocast and frozen parameters are recorded
and (where it is the point) allocated with conservation. The user's module is
``tests/torch_user_module.py``; bad input: ``test_torch_recorder_refusals.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import yaml  # noqa: E402
from helpers import assert_one_line_error  # noqa: E402
from torch import nn  # noqa: E402
from torch_user_module import (  # noqa: E402
    ALLOCATE,
    DATA_FN,
    MODEL_FN,
    X_TRAIN,
    X_VAL,
    Y_TRAIN,
    Y_VAL,
    allocated_and_conserved,
    build,
    flat,
    step,
)

import lca  # noqa: E402
from lca.config import ConfigError  # noqa: E402
from lca.storage import RunError, open_trajectory, read_fixed_weights  # noqa: E402
from lca.torch import TrajectoryRecorder  # noqa: E402
from lca.torch.models import FC  # noqa: E402

# --- recording ----------------------------------------------------------------------------------


def test_plain_loop_records_every_step_and_allocates(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    run_dir = tmp_path / "plain"
    after, batches = [flat(model)], []
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
            step(model, optimizer, idx)
            after.append(flat(model))
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
    allocated_and_conserved(run_dir, splits=("train", "val"))


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
                data_fn=DATA_FN,
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
    np.testing.assert_array_equal(trajectory.theta[8], flat(module.net))
    assert trajectory.attrs["torch_optimizer"]["class"] == "Adam"
    assert trajectory.attrs["torch_optimizer"]["groups"][0]["betas"] == [0.9, 0.999]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "fc" and config["model"]["hidden_units"] == [16]
    assert config["data"]["builder"] == DATA_FN
    allocated_and_conserved(run_dir)


def test_gradient_accumulation_records_one_row_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    after, rows = [flat(model)], []
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
                step(model, optimizer, idx, backward_only=True)
                assert recorder.steps == t  # backward passes record nothing
            optimizer.step()
            optimizer.zero_grad()
            after.append(flat(model))
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
    after = [flat(model)]
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
            after.append(flat(model))
    trajectory = open_trajectory(tmp_path / "autocast")
    assert trajectory.theta.dtype == np.float32
    np.testing.assert_array_equal(trajectory.theta[:], np.stack(after))
    allocated_and_conserved(tmp_path / "autocast")

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
    np.testing.assert_array_equal(trajectory.theta[2], flat(model))

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
    np.testing.assert_array_equal(trajectory.theta[3], flat(half))
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
            step(model, optimizer, np.arange(30) + 30 * t)
    trajectory = open_trajectory(tmp_path / "frozen")
    assert [e["name"] for e in trajectory.layout_json] == ["out/weight", "out/bias"]
    assert trajectory.theta.shape[1] == 16 * 10 + 10
    fixed = dict(read_fixed_weights(trajectory.group))
    assert sorted(fixed) == ["hidden.bias", "hidden.weight", "offset"]
    np.testing.assert_array_equal(fixed["hidden.weight"], frozen.numpy())
    allocated_and_conserved(tmp_path / "frozen")


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
            step(model, optimizer, np.arange(20) + 20 * t)
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
        step(model, optimizer, np.arange(20) + 20 * t)
    before = flat(model)
    with pytest.raises(ConfigError) as failure:
        step(model, optimizer, np.arange(20))
    assert_one_line_error(failure, "step 3 is more than iterations=2", "pass the number")
    np.testing.assert_array_equal(flat(model), before)  # the step was not taken
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
    step(model, optimizer, np.arange(20))
    model.offset.add_(1.0)  # not θ: the step check does not see it, the close does
    step(model, optimizer, np.arange(20))
    with pytest.warns(UserWarning, match="offset .* changed during training"):
        recorder.close()
    assert open_trajectory(tmp_path / "buffer").attrs["non_trainable_changed"] == ["offset"]
    with pytest.raises(RunError, match="offset changed during training"):
        lca.allocate(tmp_path / "buffer", splits=["train"], progress=False)
