"""Cheaper allocations (``allocate.rule``, ``allocate.precision``), held to the same oracle."""

import shutil

import numpy as np
import pytest
import zarr
from helpers import cli_in_process

from lca.allocation import allocate, blocks_for, load_objective
from lca.analysis.diagnostics import verify_error
from lca.storage import LCA_STORE, open_trajectory


def split_arrays(run_dir, split="train"):
    group = zarr.open_group(str(run_dir / LCA_STORE), mode="r")[split]
    return {name: group[name][:] for name in group.array_keys()}


def trapezoid_errors(run_dir, split, rows):
    """ΔL − Σ_i Δ_i (g_i(θ_t) + g_i(θ_t+1)) / 2 from the stored endpoint gradients."""
    theta = open_trajectory(run_dir).theta[: rows + 1].astype(np.float64)
    a = split_arrays(run_dir, split)
    errors = []
    for t in range(rows):
        mean = (a["grad"][t].astype(np.float64) + a["grad"][t + 1]) / 2
        lca = ((theta[t + 1] - theta[t]) * mean).astype(np.float32)
        errors.append(a["loss"][t + 1] - a["loss"][t] - lca.sum(dtype=np.float64))
    return np.array(errors)


def copy_of(run_dir, name):
    target = run_dir.parent / name
    shutil.copytree(run_dir, target)
    return target


@pytest.mark.parametrize("name", ["tiny_fc", "tiny_lenet", "tiny_resnet"])
def test_endpoint_first_rule_refines_exactly_where_the_trapezoid_errs(fresh_run, name):
    """fc; conv with dropout in training; batch norm. Rows 0-14 (two blocks)."""
    paper = fresh_run(name)
    fast = copy_of(paper, "fast")
    rows = 15  # gradient row 16 is stored by the unit that starts there: not allocated here
    threshold = 1e-3
    options = dict(threshold=threshold, iterations=(0, rows), progress=False)
    allocate(paper, **options)
    trap = {s: trapezoid_errors(paper, s, rows) for s in ("train", "val")}
    worst = np.maximum(np.abs(trap["train"]), np.abs(trap["val"]))
    tolerance = float(np.median(worst))  # so that some steps pass and some do not
    assert tolerance < threshold
    summary = allocate(fast, rule="adaptive", trapezoid_threshold=tolerance, **options)
    accepted = worst <= tolerance
    assert 0 < accepted.sum() < rows
    for split in ("train", "val"):
        a, p = split_arrays(fast, split), split_arrays(paper, split)
        n = a["intervals"][:rows]
        np.testing.assert_array_equal(n == 1, accepted)
        # the losses and endpoint gradients are those of the paper's rule, bit for bit …
        np.testing.assert_array_equal(a["loss"][: rows + 1], p["loss"][: rows + 1])
        np.testing.assert_array_equal(a["grad"][: rows + 1], p["grad"][: rows + 1])
        # … where refined, so is the LCA; where accepted, it is the trapezoid on the ends
        np.testing.assert_array_equal(a["lca"][:rows][~accepted], p["lca"][:rows][~accepted])
        np.testing.assert_array_equal(n[~accepted], p["intervals"][:rows][~accepted])
        np.testing.assert_allclose(a["error"][:rows][accepted], trap[split][accepted], atol=1e-12)
        # conservation, per iteration, within the thresholds
        error = a["error"][:rows]
        np.testing.assert_allclose(
            a["lca"][:rows].sum(axis=1, dtype=np.float64),
            np.diff(a["loss"][: rows + 1]) - error,
            atol=1e-9,
        )
        assert np.abs(error[accepted]).max() <= tolerance
        assert np.abs(error).max() <= threshold
    # one new gradient per accepted step, n per refined one, one extra start per block
    units = len(blocks_for(summary.iterations_total, 8, (0, rows)))  # rows 0-15
    used = split_arrays(fast)["intervals"][: 8 * units]
    assert summary.gradient_evaluations == int(used.sum()) + units
    paper_evaluations = int(split_arrays(paper)["intervals"][: 8 * units].sum()) + units
    assert summary.gradient_evaluations < paper_evaluations


def test_endpoint_first_rule_passes_verify_error_and_says_so(fresh_run):
    run_dir = fresh_run("tiny_fc")
    result = cli_in_process(
        "allocate", str(run_dir), "--rule", "adaptive", "--trapezoid-threshold", "1e-4"
    )
    assert result.returncode == 0, result.stderr
    assert "gradients/iteration" in result.stdout
    report = verify_error(run_dir)
    assert report.passed, report.failures()
    assert report.rule == "adaptive" and report.label == "adaptive"
    train = report.splits["train"]
    assert train.rule_iterations["trapezoid"] + train.rule_iterations["simpson"] == 40
    assert train.rule_iterations["trapezoid"] == train.intervals_used.get(1, 0) > 0
    text = cli_in_process("verify-error", str(run_dir)).stdout
    assert "rule adaptive" in text and "iterations with 1 sub-interval (trapezoid)" in text
    assert "trapezoid: mean |error|, total error" in text and text.rstrip().endswith(
        "total error within ±1 %"
    )
    # a resumed allocation must use the same rule
    again = cli_in_process("allocate", str(run_dir), "--rule", "simpson")
    assert again.returncode == 2 and "other settings" in again.stderr


# bfloat16 gradients' relative L2 error on the tiny models, measured at 1.4e-3 to 4.7e-3 (tiny
# splits of 400-1600 examples; the error shrinks as more examples are summed)
TINY_BF16_ERROR = 5e-3


@pytest.mark.parametrize("name", ["tiny_fc", "tiny_lenet", "tiny_resnet"])
def test_reduced_precision_leaves_the_losses_bitwise_float32(trained_runs, name):
    """tiny_fc: the first dense layer's shortcut, on inputs cast to bfloat16 once."""
    run_dir = trained_runs(name)
    theta = open_trajectory(run_dir).theta
    exact = load_objective(run_dir, ["train", "val"], eval_batch_size=300)
    bf16 = load_objective(run_dir, ["train", "val"], eval_batch_size=300, precision="bfloat16")
    tf32 = exact.with_precision("tf32")
    for t in (0, 20):
        want = exact(theta[t])
        for split, (loss, grad) in bf16(theta[t]).items():
            assert loss == want[split][0]  # bitwise: the loss defines ΔL
            assert not np.array_equal(grad, want[split][1])  # the arithmetic did change …
            relative = np.linalg.norm(grad - want[split][1]) / np.linalg.norm(want[split][1])
            assert relative < TINY_BF16_ERROR  # … by bfloat16's rounding only
        for split, (loss, grad) in tf32(theta[t]).items():  # a CPU has no TF32: no change
            assert loss == want[split][0] and np.array_equal(grad, want[split][1])
    # the interior nodes too (the first dense layer's shortcut included)
    a, b = theta[3], theta[4]
    mid, mid_exact = bf16.between(a, b, 0.5), exact.between(a, b, 0.5)
    for split in mid:
        diff = np.linalg.norm(mid[split][1] - mid_exact[split][1])
        assert 0 < diff < TINY_BF16_ERROR * np.linalg.norm(mid_exact[split][1])


# docs/accuracy.md: bfloat16 gradients "within about 0.2 % (relative L2)", measured on
# MNIST-LeNet (1.7e-3 to 2.1e-3 there). The same network on MNIST-shaped synthetic images
# (tests never need MNIST): 2.1e-3 to 2.4e-3 with a few thousand examples.
DOCS_LENET = (
    "data.name=synthetic",
    "data.val_size=500",
    "data.synthetic.image_shape=[28, 28, 1]",
    "data.synthetic.num_classes=10",
    "data.synthetic.num_examples=3500",
    "training.iterations=1",
)


def test_bfloat16_gradients_of_mnist_lenet_are_within_the_documented_error(trained_runs):
    run_dir = trained_runs("mnist_lenet_sgd", DOCS_LENET)
    theta = open_trajectory(run_dir).theta[0]
    options = dict(eval_batch_size=1000)
    exact = load_objective(run_dir, ["train"], **options)(theta)["train"]
    bf16 = load_objective(run_dir, ["train"], precision="bfloat16", **options)(theta)["train"]
    assert bf16[0] == exact[0]
    relative = np.linalg.norm(bf16[1] - exact[1]) / np.linalg.norm(exact[1])
    assert 1e-4 < relative < 2.5e-3, relative


def test_reduced_precision_conserves_and_falls_back_to_float32_where_it_must(fresh_run):
    exact = fresh_run("tiny_lenet")
    reduced = copy_of(exact, "reduced")
    rows = 8
    # tiny LeNet's large steps need more than 8 sub-intervals for 1e-4 in some iterations:
    # bfloat16 gives up on those and redoes them in float32
    options = dict(threshold=1e-4, max_intervals=8, iterations=(0, rows), progress=False)
    allocate(exact, **options)
    allocate(reduced, precision="bfloat16", **options)
    for split in ("train", "val"):
        e, r = split_arrays(exact, split), split_arrays(reduced, split)
        np.testing.assert_array_equal(r["loss"][:rows], e["loss"][:rows])
        fell_back = r["fallback"][:rows]
        assert 0 < fell_back.sum() < rows
        # the steps redone in float32 are the float32 allocation's, bit for bit
        np.testing.assert_array_equal(r["lca"][:rows][fell_back], e["lca"][:rows][fell_back])
        np.testing.assert_array_equal(r["error"][:rows][fell_back], e["error"][:rows][fell_back])
        # the others met the threshold in bfloat16
        kept = ~fell_back
        assert np.abs(r["error"][:rows][kept]).max() <= 1e-4
        known = rows - 1  # loss row 8 is stored by the next block
        np.testing.assert_allclose(
            r["lca"][:known].sum(axis=1, dtype=np.float64),
            np.diff(r["loss"][:rows]) - r["error"][:known],
            atol=1e-9,
        )
    report = verify_error(reduced)
    assert report.precision == "bfloat16"
    assert report.splits["train"].fallbacks == int(split_arrays(reduced)["fallback"][:rows].sum())


def test_reduced_precision_allocation_passes_verify_error(fresh_run):
    run_dir = fresh_run("tiny_lenet")
    result = cli_in_process(
        "allocate", str(run_dir), "--rule", "adaptive", "--precision", "bfloat16"
    )
    assert result.returncode == 0, result.stderr
    text = cli_in_process("verify-error", str(run_dir))
    assert text.returncode == 0, text.stdout
    assert "gradients in bfloat16, losses in float32" in text.stdout
    assert "iterations recomputed in float32" in text.stdout


def test_mode_options_are_checked(fresh_run):
    run_dir = fresh_run("tiny_fc")
    bad = cli_in_process("allocate", str(run_dir), "--precision", "float16")
    assert bad.returncode == 2 and "float16" in bad.stderr
    result = cli_in_process(
        "allocate", str(run_dir), "--rule", "simpson", "--trapezoid-threshold", "1e-4"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (  # the setting named by the flag typed
        "error: --trapezoid-threshold: applies to rule: adaptive only"
    )
    result = cli_in_process("allocate", str(run_dir), "--per-class", "--precision", "bfloat16")
    assert result.returncode == 2
    assert "--precision: --per-class needs precision: float32" in result.stderr


def test_precision_auto_picks_bfloat16_only_on_cpus_with_bf16_units():
    from lca.allocation.settings import cpu_has_bf16_units, resolve_precision

    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n"
    avx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n"
    plain = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    assert cpu_has_bf16_units(amx) and cpu_has_bf16_units(avx)
    assert not cpu_has_bf16_units(plain) and not cpu_has_bf16_units("")
    assert resolve_precision("auto", on_gpu=True) == "float32"  # GPUs: not measured yet
    assert resolve_precision("auto", on_gpu=False, per_class=True) == "float32"
    assert resolve_precision("tf32", on_gpu=False) == "tf32"  # an explicit choice stands
    here = "bfloat16" if cpu_has_bf16_units() else "float32"
    assert resolve_precision("auto", on_gpu=False) == here


def test_default_allocation_records_the_resolved_rule_and_precision(fresh_run):
    from lca.allocation.settings import cpu_has_bf16_units

    run_dir = fresh_run("tiny_fc", ("allocate.precision=auto",))  # tiny configs pin float32
    allocate(run_dir, iterations=(0, 8), progress=False)
    attrs = zarr.open_group(str(run_dir / LCA_STORE), mode="r").attrs
    assert attrs["rule"] == "adaptive"
    assert attrs["precision"] == ("bfloat16" if cpu_has_bf16_units() else "float32")


def test_resuming_continues_with_the_rule_and_precision_of_the_store(fresh_run):
    """A store made with the paper's rule (as every store before these options) resumes."""
    run_dir = fresh_run("tiny_fc")
    one_go = copy_of(run_dir, "one_go")
    allocate(run_dir, rule="simpson", precision="float32", iterations=(0, 8), progress=False)
    summary = allocate(run_dir, progress=False)  # the defaults are adaptive and auto
    assert summary.complete and summary.chunks_skipped == 1
    attrs = zarr.open_group(str(run_dir / LCA_STORE), mode="r").attrs
    assert (attrs["rule"], attrs["precision"]) == ("simpson", "float32")
    allocate(one_go, rule="simpson", precision="float32", progress=False)
    np.testing.assert_array_equal(split_arrays(run_dir)["lca"], split_arrays(one_go)["lca"])
