"""lca report: the paper's tables and figures from allocated tiny runs, numbers as analysis."""

import gc
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, cli_env
from PIL import Image

from lca import analysis
from lca.analysis import statistics
from lca.analysis.diagnostics import verify_error
from lca.cli import main
from lca.report import make_report
from lca.report.views import kernel_rows
from lca.storage import open_run

FIGURES = [
    "fig3a_percent_helped.png",
    "fig3b_lca_histogram.png",
    "fig3c_helped_per_layer.png",
    "fig3d_fraction_helped.png",
    "fig4_layer_totals.png",
    "s11_cumulative_layer_lca.png",
    "s7_oscillations.png",
    "s17_synchronisation.png",
    "approximate_loss.png",
    "train_vs_val.png",
    "fig2_frames_dense_1.png",
    "fig2_frames_dense_2.png",
    "s1_unit_lca.png",
    "s2_parameter_curves.png",
    "fig2_animation.gif",
]


@pytest.fixture(scope="session")
def allocated(allocated_runs):
    """The tiny FC run, seeds 0 (its config's) and 1, allocated once (read-only)."""
    return {0: allocated_runs("tiny_fc"), 1: allocated_runs("tiny_fc", ("training.seed=1",))}


@pytest.fixture(scope="session")
def single(allocated, tmp_path_factory):
    """``lca report`` of one run, through the command line."""
    out = tmp_path_factory.mktemp("single_report")
    result = CliRunner().invoke(main, ["report", str(allocated[0]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_report_writes_markdown_json_and_every_figure(single):
    out, output = single
    assert "mean % helped" in output and f"report written to {out}" in output
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# LCA report") and "| measurement |" in markdown
    # which rule produced the arrays (issue 11: the report says so)
    assert "allocated with rule adaptive, gradients in float32" in markdown
    for name in FIGURES:
        path = out / name
        assert path.is_file(), name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert 250 <= width <= 4000 and 200 <= height <= 4000, (name, image.size)
            if name.endswith(".gif"):
                assert 2 <= image.n_frames <= 40
        assert f"]({name})" in markdown, name


def test_report_json_matches_analysis(single, allocated):
    out, _ = single
    data = json.loads((out / "report.json").read_text())
    for key in ("split", "layers", "headline", "runs", "across_runs", "views", "figures"):
        assert key in data
    run = open_run(allocated[0])
    index, L = run.layout.layer_index(), len(run.layout.layers)
    lca = run.lca("train")
    measured = data["runs"][0]
    head = measured["headline"]

    helped = analysis.helped_fractions(lca, index, L)
    assert head["percent_helped"] == pytest.approx(helped.mean_helped)
    assert measured["percent_helped"]["helped"] == pytest.approx(helped.helped.tolist())
    totals = analysis.layer_totals(lca, index, L)
    assert [head[f"layer_total/{n}"] for n in run.layout.layers] == pytest.approx(totals)
    nonzero, _ = analysis.value_moments(lca)
    assert head["excess_kurtosis"] == pytest.approx(nonzero.excess_kurtosis)
    osc = analysis.oscillations(run.theta, run.grad("train"), index, L)
    assert head["iterations_per_direction_change"] == pytest.approx(
        osc.iterations_per_direction_change
    )
    summary = analysis.summary(run, "train")
    assert head["iterations_per_gradient_crossing"] == pytest.approx(
        summary["iterations_per_gradient_crossing"]
    )
    assert head["percent_zero"] == pytest.approx(summary["percent_zero"])
    assert head["sync_count"] == summary["synchronisation"]["count"]
    assert head["sync_p_value"] == pytest.approx(summary["synchronisation"]["p_value"])
    errors = verify_error(allocated[0]).splits["train"]
    assert head["total_error_rk4_pct"] == pytest.approx(errors.total_error_pct, abs=1e-6)
    assert head["total_error_first_order_pct"] == pytest.approx(
        errors.total_error_first_order_pct, rel=1e-6
    )
    assert measured["layer_totals_val"] == pytest.approx(
        dict(zip(run.layout.layers, analysis.layer_totals(run.lca("val"), index, L)))
    )
    approx = measured["approximate_loss"]
    assert approx["measured"] == pytest.approx(run.loss("train").tolist())
    assert data["across_runs"]["percent_helped"]["n"] == 1 and data["sign_test"] is None


def test_kernel_rows_reads_blocks_like_kernel_matrix(allocated):
    run = open_run(allocated[0])
    lca = run.lca("train")
    wanted = np.array([0, 4, 5, 39])
    got = kernel_rows(lca, wanted, run.layout, ["dense_1", "dense_2"], chunk_rows=5)
    for k, t in enumerate(wanted):
        row = lca[int(t) : int(t) + 1][0]
        np.testing.assert_array_equal(
            got["dense_2"][k], analysis.kernel_matrix(row, run.layout, "dense_2")
        )


def test_several_runs_give_mean_std_sign_test_and_vs(allocated, tmp_path):
    runs = [allocated[0], allocated[1]]
    report = make_report(runs, out_dir=tmp_path / "many", vs=[allocated[1]], frames=3)
    assert gc.get_freeze_count() == 0  # what existed before the report is collectable again
    text = report.headline()
    assert "±" in text and "hurt)" in text and len(report.columns) == 2
    data = json.loads(report.json.read_text())
    assert data["across_runs"]["percent_helped"]["n"] == 2
    assert data["vs_across_runs"]["percent_helped"]["n"] == 1
    helped = [r["headline"]["percent_helped"] for r in data["runs"]]
    assert data["across_runs"]["percent_helped"]["mean"] == pytest.approx(np.mean(helped))
    assert data["across_runs"]["percent_helped"]["std"] == pytest.approx(np.std(helped, ddof=1))
    totals = np.array([list(r["layer_totals"].values()) for r in data["runs"]])
    expected = statistics.sign_test(totals)
    assert data["sign_test"]["p_value"] == pytest.approx(expected["p_value"].tolist())
    assert all(0 <= p <= 1 for p in data["sign_test"]["p_value"])
    assert (tmp_path / "many" / "runs_layer_totals.png").is_file()
    with Image.open(tmp_path / "many" / "runs_layer_totals.png") as image:
        image.verify()
    assert "p (t-test vs 0)" in report.markdown.read_text()


def test_vs_through_the_command_line(allocated, tmp_path):
    named = {seed: tmp_path / f"tiny_fc_seed{seed}" for seed in allocated}  # told apart by name
    for seed, run_dir in named.items():
        shutil.copytree(allocated[seed], run_dir)
    out = tmp_path / "vs"
    args = ["report", str(named[0]), "--vs", str(named[1]), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--frames", "2", "--split", "val"])
    assert result.exit_code == 0, result.output
    assert named[0].name in result.output and named[1].name in result.output
    data = json.loads((out / "report.json").read_text())
    assert data["split"] == "val" and len(data["vs_runs"]) == 1
    assert math.isfinite(data["vs_runs"][0]["headline"]["percent_helped"])
    assert (out / "runs_layer_totals.png").is_file()


def test_unallocated_run_is_a_one_line_error(fresh_run):
    run_dir = fresh_run("tiny_fc")
    for args in (["report", str(run_dir)], ["report", str(run_dir / "missing")]):
        assert_one_line_error(CliRunner().invoke(main, args), alone=True)
    assert "allocat" in CliRunner().invoke(main, ["report", str(run_dir)]).output
    assert not (run_dir / "report").exists()


# The report in a fresh process, its peak resident memory measured from where it starts
PEAK_OF_A_REPORT = """
import sys
from pathlib import Path
from lca.report import make_report
def high_water():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the high-water mark starts again from the current size
before = high_water()
make_report([Path(sys.argv[1])], out_dir=Path(sys.argv[2]), frames=4, chunk_rows=8)
print(high_water() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_report_on_a_run_larger_than_the_memory_budget_stays_within_it(tmp_path):
    """Every array of this run is bigger than the budget; the report streams them.

    All of the report's memory counts (numpy, Python, matplotlib's renderer, zarr's codecs):
    its process's peak resident size, with glibc returning each block over 64 KiB to the
    system when it is freed, so that the peak is what was held at once.
    """
    import zarr

    from lca.allocation import allocate
    from lca.config import load_config
    from lca.training import train

    config = load_config(
        Path(__file__).parents[1] / "configs" / "tiny_fc.yaml",
        [
            *("training.iterations=240", "model.hidden_units=[1024]", "allocate.splits=[train]"),
            *("data.synthetic.num_examples=200", "data.val_size=40"),  # the gradients: quick
        ],
    )
    run_dir = tmp_path / "big"
    train(config, run_dir, progress=False)
    allocate(run_dir, progress=False)
    budget = 64 * 2**20
    store = zarr.open_group(str(run_dir / "lca.zarr"), mode="r")
    sizes = [store["train/lca"].nbytes, store["train/grad"].nbytes]
    assert min(sizes) > budget  # each (T, K) array alone is over the budget
    done = subprocess.run(
        [sys.executable, "-c", PEAK_OF_A_REPORT, str(run_dir), str(tmp_path / "report")],
        capture_output=True,
        text=True,
        env=cli_env(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="2"),
    )
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])  # measured: 48 MB; reading a whole array: 220 MB
    assert peak < budget, f"peak {peak / 2**20:.1f} MiB over a {budget / 2**20:.0f} MiB budget"
    assert (tmp_path / "report" / "report.json").is_file()


def test_report_has_the_per_class_measurements_when_allocated_per_class(fresh_run, tmp_path):
    from lca.allocation import allocate
    from lca.report import make_report

    run_dir = fresh_run("tiny_fc")
    allocate(run_dir, per_class=True, splits=["train"], progress=False)
    report = make_report([run_dir], out_dir=tmp_path / "report", frames=2)
    per_class = report.data["per_class"]
    assert len(per_class["synchronisation"]["count"]) == 10  # one count per class
    assert set(per_class["specialisation"]) == {"dense_1", "dense_2"}
    for values in per_class["specialisation"].values():
        fractions = [values[f"top{k}_over_80pct"] for k in (1, 2, 3)]
        assert fractions == sorted(fractions)  # more classes carry at least as much
    assert "## Per class (Fig 6, S21)" in report.markdown.read_text()
    assert per_class["neuron"]["layer"] == "dense_1"  # S22: dense on the 8x8 input
    with Image.open(report.figures["s22_neuron"]) as image:
        image.verify()


def test_animation_frames_are_full_draws_pixel_for_pixel():
    """Each frame redraws only the heatmaps and what lies over them: it must be the figure
    drawn whole, with a convolution's block lines and every tick over the heatmap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lca.report.plots_parameters import kernel_animation_frames
    from lca.report.style import PlotStyle

    rng = np.random.default_rng(0)
    layers, iterations = ["conv_1", "dense_1"], [0, 7, 13]
    matrices = {
        "conv_1": [rng.normal(size=(12, 9)) for _ in iterations],
        "dense_1": [rng.normal(size=(10, 24)) * 1e-4 for _ in iterations],
    }
    fig, frames = kernel_animation_frames(
        layers, iterations, matrices, {"conv_1": (3, 3)}, style=PlotStyle()
    )
    assert len(frames) == len(iterations)
    heatmaps = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(heatmaps) == len(layers) and len(fig.axes[0].lines) == 3 + 2  # block lines
    title = next(t for t in fig.texts if t.get_text().startswith("LCA per weight"))
    for k, it in enumerate(iterations):
        for image, layer in zip(heatmaps, layers):
            image.set_data(matrices[layer][k])
        title.set_text(f"LCA per weight, iteration {it} (green = helped, red = hurt)")
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        whole = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
        assert not np.array_equal(np.asarray(frames[k]), np.asarray(frames[k - 1]))
        np.testing.assert_array_equal(np.asarray(frames[k]), np.asarray(whole.convert("RGB")))
