"""`lca allocate` and `lca verify-error`: conservation is the oracle."""

import signal
import subprocess
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import (
    SLOW,
    assert_one_line_error,
    assert_same_arrays,
    cli,
    cli_command,
    cli_env,
    cli_in_process,
    lca_arrays,
    set_theta,
)

from lca.allocation import allocate, blocks_for, parse_gpus
from lca.analysis.diagnostics import verify_error
from lca.cli import main
from lca.storage import LCA_STORE, RunError, open_trajectory


@pytest.mark.parametrize("name", ["tiny_fc", "tiny_lenet", "tiny_resnet"])
def test_allocation_conserves_the_loss(allocated_runs, name):
    run_dir = allocated_runs(name)  # allocated to the end on train and val
    arrays = lca_arrays(run_dir)
    T = open_trajectory(run_dir).num_iterations
    for split in ("train", "val"):
        lca, loss, error = arrays[f"{split}/lca"], arrays[f"{split}/loss"], arrays[f"{split}/error"]
        assert lca.shape[0] == T and loss.shape == (T + 1,)
        assert np.isfinite(lca).all() and np.isfinite(arrays[f"{split}/grad"]).all()
        # per iteration: Σ_i A_t,i = L(θ_t+1) − L(θ_t) − error, and the error is tiny
        np.testing.assert_allclose(
            lca.sum(axis=1, dtype=np.float64), np.diff(loss) - error, atol=1e-9
        )
        assert np.abs(error).mean() < 1e-4  # ≪ the paper's 1e-3 threshold
        assert np.abs(error).max() <= 1e-4  # the tiny configs' threshold
        # over the whole run: Σ_t Σ_i A_t,i matches L(θ_T) − L(θ_0) to < 0.1 %
        total = lca.sum(dtype=np.float64)
        assert abs(total - (loss[-1] - loss[0])) < 1e-3 * abs(loss[-1] - loss[0])
        # Simpson beats first order on the same steps
        assert np.abs(error).mean() < np.abs(arrays[f"{split}/error_fo"]).mean()
    report = verify_error(run_dir)
    assert report.passed, report.failures()


def test_loss_matches_an_independent_numpy_forward_pass(allocated_tiny_run):
    from lca.config import load_config
    from lca.data import load_dataset
    from lca.layout import ParameterLayout

    run_dir = allocated_tiny_run
    traj = open_trajectory(run_dir)
    layout = ParameterLayout.from_json(traj.layout_json)
    data = load_dataset(load_config(run_dir / "config.yaml").data)
    loss = lca_arrays(run_dir)["train/loss"]
    for t in (0, traj.num_iterations):
        w1, b1, w2, b2 = (a.astype(np.float64) for a in layout.unflatten(traj.theta[t]))
        h = np.maximum(data.x_train.reshape(len(data.x_train), -1) @ w1 + b1, 0)
        logits = h @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        expected = -log_p[np.arange(len(data.y_train)), data.y_train].mean()
        assert loss[t] == pytest.approx(expected, rel=1e-6)


def test_objective_matches_an_eager_reference_and_ignores_moving_statistics(trained_runs):
    import keras
    import tensorflow as tf

    from lca.allocation import load_objective
    from lca.config import load_config
    from lca.data import load_dataset
    from lca.layout import ParameterLayout

    run_dir = trained_runs("tiny_resnet")
    objective = load_objective(run_dir, ["train"], eval_batch_size=400)  # 900 = 2×400 + 100
    theta = open_trajectory(run_dir).theta[5]
    loss, grad = objective(theta)["train"]
    again = objective(theta)["train"]
    assert loss == again[0] and np.array_equal(grad, again[1])  # deterministic
    # scrambling the batch-norm moving averages changes nothing: they are not parameters
    for var in objective.model.non_trainable_variables:
        if "moving" in var.path:
            var.assign(np.random.default_rng(0).uniform(0.5, 2.0, var.shape).astype("float32"))
    scrambled = objective(theta)["train"]
    assert scrambled[0] == loss and np.array_equal(scrambled[1], grad)
    # the straightforward way: eager model, numpy batches, batch statistics, summed by hand
    data = load_dataset(load_config(run_dir / "config.yaml").data)
    layout = ParameterLayout.from_json(open_trajectory(run_dir).layout_json)
    model = objective.model
    set_theta(model, layout, theta)
    total, grads = 0.0, np.zeros(layout.total)
    n = len(data.y_train)
    for start in range(0, n, 400):
        x, y = data.x_train[start : start + 400], data.y_train[start : start + 400]
        with tf.GradientTape() as tape:
            losses = keras.losses.sparse_categorical_crossentropy(
                y, model(x, training=True), from_logits=True
            )
            scaled = tf.reduce_sum(losses) / n
        total += float(tf.reduce_sum(tf.cast(losses, tf.float64))) / n
        grads += layout.flatten(
            [g.numpy() for g in tape.gradient(scaled, model.trainable_variables)]
        )
    assert loss == pytest.approx(total, rel=1e-6)
    np.testing.assert_allclose(grad, grads, rtol=1e-3, atol=1e-6 * np.abs(grads).max())


def test_gradient_work_reuses_endpoints(fresh_run):
    run_dir = fresh_run("tiny_fc")
    summary = allocate(run_dir, rule="simpson", progress=False)
    blocks = len(blocks_for(summary.iterations_total, 8, None))
    # per iteration: the end point and the interior nodes; one extra start per block
    intervals = lca_arrays(run_dir)["train/intervals"]
    assert summary.gradient_evaluations == int(intervals.sum()) + blocks
    assert set(np.unique(intervals)) <= {2, 4, 8, 16, 32}


def test_partial_allocation_then_resume_equals_one_go(fresh_run, allocated_tiny_run):
    a = fresh_run("tiny_fc")
    partial = allocate(a, iterations=(0, 12), progress=False)  # rounds out to chunks 0, 1
    assert partial.iterations_done == 16 and not partial.complete
    report = verify_error(a)
    assert report.iterations_done == 16 and not report.passed
    assert "incomplete: 16 of 40" in report.failures()[0]
    resumed = allocate(a, progress=False)
    assert resumed.chunks_skipped == 2 and resumed.complete
    assert_same_arrays(lca_arrays(a), lca_arrays(allocated_tiny_run))  # allocated in one go


def test_resume_with_other_settings_is_refused(fresh_run):
    run_dir = fresh_run("tiny_fc")
    allocate(run_dir, iterations=(0, 8), progress=False)
    with pytest.raises(RunError, match="other settings"):
        allocate(run_dir, threshold=1e-5, progress=False)
    assert allocate(run_dir, threshold=1e-5, restart=True, progress=False).complete


def test_allocate_refuses_an_incomplete_trajectory(fresh_run):
    run_dir = fresh_run("tiny_fc")
    traj = zarr.open_group(str(run_dir / "trajectory.zarr"), mode="r+")
    traj.attrs.update({"complete": False, "steps_recorded": 17, "status": "interrupted"})
    result = cli_in_process("allocate", str(run_dir))
    assert_one_line_error(result, "trajectory incomplete (17 of 41 steps recorded", alone=True)


def test_parse_gpus():
    assert parse_gpus("0-3") == [0, 1, 2, 3]
    assert parse_gpus("0,2") == [0, 2]
    for bad in ("a", "1,1", "", "-1"):
        with pytest.raises(RunError):
            parse_gpus(bad)


def test_verify_error_cli(fresh_run):
    run_dir = fresh_run("tiny_fc")
    result = cli_in_process("verify-error", str(run_dir))
    assert result.returncode == 2 and "run `lca allocate" in result.stderr
    allocate(run_dir, progress=False)
    result = cli_in_process("verify-error", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "total error, adaptive" in result.stdout and "PASS" in result.stdout  # the default
    allocate(run_dir, rule="simpson", restart=True, progress=False)
    result = cli_in_process("verify-error", str(run_dir))
    assert "total error, simpson" in result.stdout and "PASS" in result.stdout  # the setting's name
    assert 'RK4"' in result.stdout.splitlines()[1]  # the paper's name, said once in the header
    result = cli_in_process("verify-error", str(run_dir), "--json")
    import json

    data = json.loads(result.stdout)
    assert data["passed"] and data["iterations_done"] == 40
    assert abs(data["splits"]["train"]["total_error_pct"]) < 1.0


def test_verify_error_fails_when_the_threshold_cannot_be_met(fresh_run):
    run_dir = fresh_run("tiny_fc")
    allocate(run_dir, threshold=1e-12, max_intervals=4, progress=False)
    report = verify_error(run_dir)
    assert not report.passed
    assert any("even at 4 sub-intervals" in f for f in report.failures())
    assert report.splits["train"].intervals_used == {4: 40}
    result = cli_in_process("verify-error", str(run_dir))
    assert result.returncode == 1 and "FAIL" in result.stdout


def _verify_error_fails(run_dir, failure: str) -> None:
    """The API and the command line both reject the run, naming ``failure``."""
    report = verify_error(run_dir)
    assert report.passed is False
    assert any(failure in f for f in report.failures()), report.failures()
    result = CliRunner().invoke(main, ["verify-error", str(run_dir)])
    assert result.exit_code == 1, result.output
    verdicts = [line for line in result.output.splitlines() if line.startswith("FAIL: ")]
    assert len(verdicts) == 1 and failure in verdicts[0], result.output


def test_verify_error_fails_on_a_total_error_beyond_one_percent(allocated_copy):
    run_dir = allocated_copy("tiny_fc")
    assert verify_error(run_dir).passed
    train = zarr.open_group(str(run_dir / LCA_STORE), mode="r+")["train"]
    loss, error = train["loss"][:], train["error"][:]
    # L(θ_T) 2 % of ΔL higher, and the last iteration's error to match: Σ A no longer
    # reaches the loss change, yet every stored row still sums to ΔL_t − error_t
    shift = 0.02 * abs(loss[-1] - loss[0])
    loss[-1] += shift
    error[-1] += shift
    train["loss"][:], train["error"][:] = loss, error
    report = verify_error(run_dir)
    assert report.splits["train"].stored_mismatch < 1e-6  # only the total error is off
    assert abs(report.splits["train"].total_error_pct) > 1.0
    _verify_error_fails(run_dir, "train: total adaptive error")
    _verify_error_fails(run_dir, "exceeds ±1% of the loss change")


def test_verify_error_fails_when_the_stored_lca_no_longer_sums_to_the_errors(allocated_copy):
    run_dir = allocated_copy("tiny_fc")
    assert verify_error(run_dir).passed
    lca = zarr.open_group(str(run_dir / LCA_STORE), mode="r+")["val"]["lca"]
    lca[5, 7] = lca[5, 7] + np.float32(1e-3)  # one A[t, i]
    report = verify_error(run_dir)
    assert abs(report.splits["val"].total_error_pct) < 1.0  # the total alone would pass
    _verify_error_fails(run_dir, "val: the stored LCA does not sum to the recorded errors")


# --- processes: workers, kill -9 and resume -----------------------------------------------


def test_two_workers_match_one_bitwise_and_threads_within_rounding(fresh_run, allocated_runs):
    one = allocated_runs("tiny_fc", threads=1)  # one process, one thread
    two, other = fresh_run("tiny_fc"), fresh_run("tiny_fc")
    # the workers are processes of their own (spawned), each on one thread
    result = cli_in_process("allocate", str(two), "--workers", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr
    result = cli("allocate", str(other), "--threads", "2")  # a fresh process: 2 threads
    assert result.returncode == 0, result.stderr
    a, b, c = lca_arrays(one), lca_arrays(two), lca_arrays(other)
    assert_same_arrays(b, a)
    # another thread count changes float32 summation order only
    for split in ("train", "val"):
        scale = np.abs(a[f"{split}/lca"]).max()
        assert np.abs(a[f"{split}/lca"] - c[f"{split}/lca"]).max() <= 1e-4 * scale
        np.testing.assert_allclose(a[f"{split}/loss"], c[f"{split}/loss"], rtol=1e-6)


def test_kill_9_mid_run_then_resume_is_bitwise_identical(fresh_run, allocated_runs):
    killed = fresh_run("tiny_fc", SLOW)
    proc = subprocess.Popen(
        cli_command("allocate", killed, "--threads", "1"),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def units_done() -> int:
        """Blocks marked done in the store (its ``done`` array, read as a resume reads
        it; a chunk file being written, or a temporary one beside it, is not a done unit)."""
        try:
            return int(zarr.open_group(str(killed / LCA_STORE), mode="r")["done"][:].sum())
        except Exception:  # the store not created yet, or a chunk mid-write: ask again
            return 0

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and units_done() < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "allocation ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = zarr.open_group(str(killed / LCA_STORE), mode="r")["done"][:]
    assert 2 <= done.sum() < len(done)
    # resumed here (TensorFlow on one thread, as the killed process ran it)
    with pytest.warns(UserWarning, match="taking over the stale lock of `lca allocate`"):
        assert cli_in_process("allocate", str(killed), "--threads", "1").returncode == 0
    clean = allocated_runs("tiny_fc", SLOW, threads=1)  # uninterrupted
    assert_same_arrays(lca_arrays(killed), lca_arrays(clean))


def test_reusing_the_input_layer_matches_evaluating_every_node(fresh_run, tmp_path):
    import shutil

    from lca.allocation import load_objective

    run_dir = fresh_run("tiny_fc")
    assert load_objective(run_dir, ["train"]).chain is not None  # fc qualifies
    assert load_objective(fresh_run("tiny_resnet"), ["train"]).chain is None  # conv first
    direct = tmp_path / "direct"
    shutil.copytree(run_dir, direct)
    config = direct / "config.yaml"
    config.write_text(
        config.read_text().replace("reuse_input_layer: true", "reuse_input_layer: false")
    )
    allocate(run_dir, progress=False)
    allocate(direct, progress=False)
    a, b = lca_arrays(run_dir), lca_arrays(direct)
    for split in ("train", "val"):
        # the same mathematics; only the float32 summation order may differ
        np.testing.assert_allclose(a[f"{split}/loss"], b[f"{split}/loss"], rtol=1e-6)
        grad_scale = np.abs(b[f"{split}/grad"]).max()
        assert np.abs(a[f"{split}/grad"] - b[f"{split}/grad"]).max() <= 1e-5 * grad_scale
        scale = np.abs(b[f"{split}/lca"]).max()
        assert np.abs(a[f"{split}/lca"] - b[f"{split}/lca"]).max() <= 1e-5 * scale
        np.testing.assert_allclose(a[f"{split}/error"], b[f"{split}/error"], atol=1e-7)


def test_peak_memory_does_not_grow_with_the_number_of_iterations(trained_runs, tmp_path):
    """Allocation streams blocks: a 4x longer run must not need more memory.

    TensorFlow's tracing adds noise to any peak (up to ~17 MB seen in a full suite run, where
    earlier tests leave caches warm), so the rows are made large (K ~ 77k) and the growth is
    compared with what holding the extra rows would cost (~236 MB): under a tenth of it.
    """
    import gc
    import shutil
    import tracemalloc

    from lca.allocation import load_objective

    peaks = {}
    for iterations in (64, 256):
        source = trained_runs(
            "tiny_fc",
            (
                *(f"training.iterations={iterations}", "model.hidden_units=[1024]"),
                *("data.synthetic.num_examples=500", "data.val_size=100"),  # quick gradients
            ),
        )
        run_dir = tmp_path / f"t{iterations}"
        shutil.copytree(source, run_dir)
        load_objective(run_dir, ["train"])  # TensorFlow's one-time start-up, outside the window
        gc.collect()
        tracemalloc.start()
        allocate(run_dir, progress=False)
        verify_error(run_dir)
        peaks[iterations] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    K = open_trajectory(tmp_path / "t64").theta.shape[1]
    row_bytes = 4 * K * 4  # lca + grad of two splits, float32, one iteration
    extra_rows = (256 - 64) * row_bytes  # what holding every row would add (~236 MB)
    assert peaks[256] - peaks[64] < 0.1 * extra_rows, (peaks, extra_rows)
    assert peaks[256] < 256 * row_bytes / 3, (peaks, row_bytes)


def test_gpus_without_a_gpu_is_a_clear_error(fresh_run):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    result = cli_in_process("allocate", str(fresh_run("tiny_fc")), "--gpus", "0")
    assert result.returncode == 2
    assert "GPU 0 is not visible to TensorFlow" in result.stderr


# --- LCA on a subset of the training set -------------------------------------------------


def test_subset_allocation_conserves_the_subset_loss(fresh_run):
    from lca.allocation import load_objective, subset_indices

    run_dir = fresh_run("tiny_fc")
    assert allocate(run_dir, subset_size=500, progress=False).complete
    store = zarr.open_group(str(run_dir / LCA_STORE), mode="r")
    train = store["train"]
    expected = np.sort(np.random.default_rng(0).choice(1600, 500, replace=False))
    np.testing.assert_array_equal(train["subset_indices"][:], expected)
    np.testing.assert_array_equal(subset_indices(1600, 500, 0), expected)
    assert train["subset_indices"].metadata.dimension_names == ("subset_example",)
    assert train.attrs["num_examples"] == 500 and train.attrs["subset_size"] == 500
    assert store["val"].attrs["num_examples"] == 400
    assert store.attrs["settings"]["subset_size"] == 500
    loss, lca, error = train["loss"][:], train["lca"][:], train["error"][:]
    np.testing.assert_allclose(lca.sum(axis=1, dtype=np.float64), np.diff(loss) - error, atol=1e-9)
    assert np.abs(error).max() <= 1e-4
    # the stored losses are the SUBSET loss, not the full-set one
    theta = open_trajectory(run_dir).theta
    sub = load_objective(run_dir, ["train"], train_subset=expected)(theta[0])["train"][0]
    full = load_objective(run_dir, ["train"])(theta[0])["train"][0]
    assert abs(loss[0] - sub) < 1e-6 and abs(sub - full) > 1e-4
    assert "subset_check" not in store
    assert verify_error(run_dir).passed


def test_subset_resume_needs_the_same_subset_and_fits_the_train_set(fresh_run):
    run_dir = fresh_run("tiny_fc")
    allocate(run_dir, subset_size=500, iterations=(0, 8), progress=False)
    with pytest.raises(RunError, match="other settings"):
        allocate(run_dir, subset_size=400, progress=False)
    with pytest.raises(RunError, match="other settings"):
        allocate(run_dir, progress=False)
    assert allocate(run_dir, subset_size=500, progress=False).complete
    result = cli_in_process("allocate", str(run_dir), "--subset", "1600", "--overwrite")
    assert_one_line_error(result, "smaller than the 1600 training examples", alone=True)
    with pytest.raises(RunError, match="check_every"):
        allocate(run_dir, check_every=4, restart=True, progress=False)


def test_subset_check_compares_with_the_full_set(fresh_run, trained_runs, tmp_path):
    import shutil

    half = fresh_run("tiny_fc")
    allocate(half, subset_size=800, check_every=4, progress=False)
    check = zarr.open_group(str(half / LCA_STORE), mode="r")["subset_check"]
    iteration = check["iteration"][:]
    np.testing.assert_array_equal(iteration[iteration >= 0], np.arange(0, 40, 4))
    assert np.isnan(check["correlation"][:][iteration < 0]).all()
    assert check["layer_rel_error"].shape == (40, 2)
    rows = iteration >= 0
    # measured on tiny_fc: correlation 0.97–0.99, sign agreement 0.84–0.95, |helped| < 5 pts
    assert check["correlation"][:][rows].min() > 0.9
    assert check["sign_agreement"][:][rows].min() > 0.75
    assert np.abs(check["helped_error"][:][rows]).max() < 10
    assert np.abs(check["full_error"][:][rows]).max() < 1e-3  # the full LCA is conserved
    assert np.median(check["layer_rel_error"][:][rows]) < 0.3

    nearly = tmp_path / "nearly"
    shutil.copytree(trained_runs("tiny_fc"), nearly)
    allocate(nearly, subset_size=1590, check_every=4, progress=False)
    report = verify_error(nearly).subset_check
    assert report.checked_iterations == 10
    assert report.correlation_mean > 0.99 and report.sign_agreement_mean > 0.98
    assert verify_error(half).subset_check.correlation_mean < report.correlation_mean


def test_verify_error_shows_the_subset_and_the_comparison(fresh_run):
    import json

    run_dir = fresh_run("tiny_fc")
    result = cli_in_process("allocate", str(run_dir), "--subset", "800", "--check-every", "8")
    assert result.returncode == 0, result.stderr
    result = cli_in_process("verify-error", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train (subset of 800 of 1600 examples)" in result.stdout
    assert "subset vs full train set, 5 checked iterations" in result.stdout
    assert "per-parameter correlation" in result.stdout
    data = json.loads(cli_in_process("verify-error", str(run_dir), "--json").stdout)
    assert data["subset_size"] == 800 and data["num_train"] == 1600
    assert data["subset_check"]["checked_iterations"] == 5
    assert data["subset_check"]["correlation_mean"] > 0.9


@pytest.mark.parametrize("name", ["tiny_fc", "tiny_resnet"])  # class-pure batches; BN masks
def test_per_class_lca_sums_to_the_total(fresh_run, name):
    import shutil

    from lca.layout import ParameterLayout

    run_dir = fresh_run(name)
    N = 4  # iterations, one block (the ResNet's are refined into 4 to 16 sub-intervals)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("block_iterations: 8", f"block_iterations: {N}"))
    plain = allocate(run_dir, progress=False, iterations=(0, N))
    plain_arrays = lca_arrays(run_dir)
    shutil.rmtree(run_dir / LCA_STORE)
    summary = allocate(run_dir, per_class=True, progress=False, iterations=(0, N))
    # no gradient evaluation more than without the per-class split
    assert summary.gradient_evaluations == plain.gradient_evaluations
    store = zarr.open_group(str(run_dir / LCA_STORE), mode="r")
    layout = ParameterLayout.from_json(open_trajectory(run_dir).layout_json)
    C = open_trajectory(run_dir).attrs["num_classes"]
    for split in ("train", "val"):
        group = store[split]
        lca = group["lca"][:N]
        # the same allocation as without the split by class, at the same θ
        np.testing.assert_allclose(
            group["loss"][: N + 1], plain_arrays[f"{split}/loss"][: N + 1], rtol=1e-12
        )
        # per-class gradients summed: float32 rounding only (measured: 2e-7 of the largest A)
        plain_lca = plain_arrays[f"{split}/lca"][:N]
        np.testing.assert_allclose(lca, plain_lca, rtol=0, atol=1e-6 * np.abs(plain_lca).max())
        np.testing.assert_array_equal(
            group["intervals"][:N], plain_arrays[f"{split}/intervals"][:N]
        )
        per_layer = np.stack(
            [
                np.bincount(layout.layer_index(), weights=row, minlength=len(layout.layers))
                for row in lca
            ]
        )
        class_layer = group["class_layer_lca"][:N]
        assert class_layer.shape == (N, C, len(layout.layers))
        np.testing.assert_allclose(class_layer.sum(axis=1), per_layer, atol=1e-6)
        np.testing.assert_allclose(
            group["class_loss"][: N + 1].sum(axis=1), group["loss"][: N + 1], rtol=1e-12
        )
        assert np.abs(group["class_error"][:N]).max() < 1e-3
        units = group["class_unit_lca"][layout.layers[-1]][:N]  # the output layer
        np.testing.assert_allclose(units.sum(axis=2), class_layer[:, :, -1], atol=1e-6)
        assert not np.allclose(class_layer[:, 0], class_layer[:, 1])  # classes differ
