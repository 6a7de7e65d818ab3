"""θ every k optimizer steps (``training.record_every``, the recorders' ``record_every=``).

The stored rows are the every-step run's rows at steps 0, k, 2k, … and the last step; an
interrupted run resumes bitwise; the allocation of the segments conserves; a run of
``record_every: 1`` is the store it always was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error
from test_resume import _interrupt_at, assert_bitwise_equal, snapshot

import lca
from lca.cli import main
from lca.config import load_config
from lca.storage import open_trajectory
from lca.storage.check import check_run
from lca.training import train

CONFIGS = Path(__file__).parents[1] / "configs"
K = 7  # tiny_fc trains 40 steps: θ at 0, 7, …, 35 and 40 (a last segment of 5)


@pytest.fixture(scope="module")
def every_k(tmp_path_factory) -> Path:
    """tiny_fc with θ every K steps (read-only)."""
    out = tmp_path_factory.mktemp("every_k") / "run"
    config = load_config(CONFIGS / "tiny_fc.yaml", [f"training.record_every={K}"])
    train(config, out, progress=False)
    return out


def test_every_k_steps_stores_the_every_step_rows_at_0_k_2k_and_the_last(every_k, trained_runs):
    every = open_trajectory(trained_runs("tiny_fc"))
    sparse = open_trajectory(every_k)
    sparse.require_complete()
    steps = np.array([0, 7, 14, 21, 28, 35, 40])
    np.testing.assert_array_equal(sparse.steps, steps)
    assert sparse.group["steps"].metadata.dimension_names == ("step",)
    assert sparse.num_iterations == 6 and sparse.attrs["optimizer_steps"] == 40
    assert sparse.attrs["record_every"] == K
    np.testing.assert_array_equal(sparse.theta[:], every.theta[:][steps])  # bit for bit
    # each segment's mini-batch loss: the mean of its steps'; its examples: all of theirs
    np.testing.assert_allclose(sparse.group["loss"][:], np.add.reduceat(
        every.group["loss"][:], steps[:-1]) / np.diff(steps), rtol=1e-12)  # fmt: skip
    batches = sparse.group["batch_indices"][:]
    assert batches.shape == (6, 50 * K)
    np.testing.assert_array_equal(batches[-1][: 5 * 50], every.group["batch_indices"][35:].ravel())
    assert (batches[-1][5 * 50 :] == -1).all()
    assert "record_every" in (every_k / "config.yaml").read_text()
    assert "a segment of 7 optimizer steps (the last one of 5)" in sparse.segment_note()


def test_record_every_1_is_the_store_it_always_was(trained_runs):
    run = open_trajectory(trained_runs("tiny_fc"))
    assert "steps" not in run.group and not run.segmented and run.segment_note() is None
    np.testing.assert_array_equal(run.steps, np.arange(41))
    assert "record_every" not in (trained_runs("tiny_fc") / "config.yaml").read_text()
    assert "record_every" not in run.attrs


def test_segments_allocate_within_the_threshold_and_conserve(every_k, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(every_k, run_dir)
    summary = lca.allocate(run_dir, splits=["train"], progress=False)
    assert summary.complete
    run = lca.open_run(run_dir)
    loss, error = run.loss("train"), run.error("train")
    threshold = run.lca_store.attrs["settings"]["threshold"]
    assert np.abs(error).max() <= threshold  # each segment certified as a step is
    sums = run.lca("train")[:].sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(sums + error, np.diff(loss), rtol=0, atol=1e-9)
    assert abs(sums.sum() - (loss[-1] - loss[0])) <= threshold * len(sums)
    assert lca.verify_error(run_dir).passed
    assert check_run(run_dir).ok
    done = CliRunner().invoke(main, ["report", str(run_dir), "--out", str(tmp_path / "report")])
    assert done.exit_code == 0, done.output
    text = (tmp_path / "report" / "report.md").read_text()
    assert "> θ every 7 optimizer steps: each iteration of this run is a segment of 7" in text


def test_causes_refuse_segments_in_one_line(every_k, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(every_k, run_dir)
    done = CliRunner().invoke(main, ["allocate", str(run_dir), "--causes"])
    assert done.exit_code == 2
    assert_one_line_error(done.stderr, "--causes", "needs θ of every optimizer step", "every 7")


def test_describe_says_the_theta_storage_and_the_k_a_budget_fits():
    args = ["describe", str(CONFIGS / "tiny_fc.yaml"), "--record-every", "7"]
    done = CliRunner().invoke(main, [*args, "--disk-budget", "20kB"])
    assert done.exit_code == 0, done.output
    # 1,210 parameters: 7 rows (θ at 0, 7, …, 35, 40) of 4,840 bytes; 20 kB holds 4 rows
    assert "θ storage: 33.9 kB (7 rows of 1210 float32 parameters: θ every 7 steps" in done.stdout
    assert "disk budget 20 kB: training.record_every: 14 fits (19.4 kB of θ)" in done.stdout
    plain = CliRunner().invoke(main, ["describe", str(CONFIGS / "tiny_fc.yaml")])
    assert "θ storage" not in plain.stdout  # the layout alone, as always


def test_describe_of_a_run_says_what_an_iteration_is(every_k):
    done = CliRunner().invoke(main, ["describe", str(every_k)])
    assert done.exit_code == 0, done.output
    assert "optimizer steps 0..40; θ every 7 optimizer steps: each iteration" in done.stdout


def test_a_killed_every_k_run_resumes_bitwise(tmp_path, monkeypatch):
    monkeypatch.setenv("LCA_CHUNK_ROWS", "2")  # a checkpoint every 2 stored θ: 6 steps
    runner = CliRunner()
    config = [str(CONFIGS / "tiny_fc.yaml"), "--iterations", "20", "--set"]
    config += ["training.record_every=3"]  # θ at 0, 3, …, 18, 20
    plain = runner.invoke(main, ["train", *config, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    want = snapshot(tmp_path / "plain")
    args = [*config, "--out", str(tmp_path / "run")]
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 14)  # after the checkpoint at step 9 (θ rows 0..3)
        assert runner.invoke(main, ["train", *args]).exit_code == 130
    assert not open_trajectory(tmp_path / "run").complete
    assert check_run(tmp_path / "run").ok
    again = runner.invoke(main, ["train", *args])
    assert again.exit_code == 0, again.output
    assert "resuming" in again.stdout and "step 9 (11 of 20 iterations left)" in again.stdout
    assert_bitwise_equal(snapshot(tmp_path / "run"), want)
    steps = open_trajectory(tmp_path / "run").steps
    np.testing.assert_array_equal(steps, [0, 3, 6, 9, 12, 15, 18, 20])
    assert runner.invoke(main, ["check", str(tmp_path / "run")]).exit_code == 0


def test_keras_recorder_every_k_steps_and_a_fit_stopped_inside_a_segment(tmp_path):
    keras = pytest.importorskip("keras")
    from lca.keras import TrajectoryRecorder

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    x = (2 * rng.normal(size=(3, 6))[y] + rng.normal(size=(200, 6))).astype("float32")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(True))
    rows = []

    class Reference(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            rows.append(np.concatenate([v.numpy().ravel() for v in model.trainable_variables]))

        def on_train_batch_end(self, batch, logs=None):
            self.on_train_begin()

        def on_epoch_end(self, epoch, logs=None):
            model.stop_training = True  # after 10 of the 30 steps announced

    recorder = TrajectoryRecorder(tmp_path / "r", train_data=(x, y), record_every=4)
    model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[Reference(), recorder])
    run = open_trajectory(tmp_path / "r")
    run.require_complete()
    np.testing.assert_array_equal(run.steps, [0, 4, 8, 10])
    np.testing.assert_array_equal(run.theta[:], np.stack(rows)[run.steps])
    assert run.attrs["optimizer_steps"] == 10 and run.attrs["record_every"] == 4
    assert "iterations: 10" in (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(lca.config.ConfigError, match="record_every"):
        TrajectoryRecorder(tmp_path / "x", train_data=(x, y), record_every=0)


def test_torch_recorder_every_k_steps_keeps_the_examples_of_each_segment(tmp_path):
    torch = pytest.importorskip("torch")
    from torch_user_module import MODEL_FN, X_TRAIN, Y_TRAIN, build, flat, step

    from lca.torch import TrajectoryRecorder

    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    after, batches = [flat(model)], []
    with TrajectoryRecorder(
        model,
        optimizer,
        tmp_path / "r",
        iterations=12,  # stops after 10: the last row is θ_10, a segment of 2 steps
        train_data=(X_TRAIN, Y_TRAIN),
        model_fn=MODEL_FN,
        batch_size=24,
        record_every=4,
    ) as recorder:
        for t in range(10):
            idx = np.arange(t * 24, (t + 1) * 24) % 240
            recorder.batch(idx)
            step(model, optimizer, idx)
            after.append(flat(model))
            batches.append(idx)
    assert recorder.close() == 10
    run = open_trajectory(tmp_path / "r")
    run.require_complete()
    np.testing.assert_array_equal(run.steps, [0, 4, 8, 10])
    np.testing.assert_array_equal(run.theta[:], np.stack(after)[[0, 4, 8, 10]])
    indices = run.group["batch_indices"][:]
    assert indices.shape == (3, 96)
    np.testing.assert_array_equal(indices[0], np.concatenate(batches[:4]))
    np.testing.assert_array_equal(indices[2][:48], np.concatenate(batches[8:]))
    assert (indices[2][48:] == -1).all()
