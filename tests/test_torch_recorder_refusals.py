"""lca.torch.TrajectoryRecorder on bad input: one line each, keeping what was recorded.

Edits outside the optimizer step, DDP (recorded on rank 0) and FSDP (refused), a model_fn
that builds another model, an existing recording, a learning-rate schedule under --causes.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import assert_one_line_error  # noqa: E402
from torch import nn  # noqa: E402
from torch_user_module import (  # noqa: E402
    MODEL_FN,
    X_TRAIN,
    Y_TRAIN,
    build,
    flat,
    step,
)

import lca  # noqa: E402
from lca.config import ConfigError  # noqa: E402
from lca.storage import RunError, open_trajectory  # noqa: E402
from lca.torch import TrajectoryRecorder  # noqa: E402
from lca.torch.models import FC  # noqa: E402

# --- bad input ------------------------------------------------------------------------------------


def test_parameters_changed_outside_the_step_are_one_line_and_keep_the_rows(tmp_path):
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    after = [flat(model)]
    run_dir = tmp_path / "clipped"
    recorder = TrajectoryRecorder(
        model, optimizer, run_dir, iterations=6, train_data=(X_TRAIN, Y_TRAIN), model_fn=MODEL_FN
    )
    with pytest.raises(RunError) as failure, recorder:
        for t in range(6):
            step(model, optimizer, np.arange(20) + 20 * t)
            after.append(flat(model))
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
        step(model, optimizer, np.arange(20))
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
    after = [flat(inner)]
    with TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "ddp",
        iterations=3,
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
    ):
        for t in range(3):
            step(model, optimizer, np.arange(20) + 20 * t)
            after.append(flat(inner))
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
        step(model, optimizer, np.arange(20))
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
        TrajectoryRecorder(model, optimizer, run_dir, model_fn="torch_user_module:nope", **common)
    assert_one_line_error(failure, "torch_user_module has no nope")
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
            step(model, optimizer, np.arange(20) + 20 * t)
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
            step(model, optimizer, np.arange(t * 10, t * 10 + 10))
            schedule.step()
    assert open_trajectory(run_dir).attrs["torch_optimizer_changed_at"] == 2
    with pytest.raises(RunError) as failure:
        lca.allocate(run_dir, splits=["train"], causes=True, progress=False)
    assert_one_line_error(failure, "changed at iteration 2", "learning-rate schedule")
