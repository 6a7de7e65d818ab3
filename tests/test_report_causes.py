"""`lca report`'s "Why parameters hurt" and `lca tensorboard`'s causes/ scalars on a tiny run
allocated with ``--causes``: the numbers written are the run's cause arrays'."""

import json
import shutil
import warnings

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

from lca.allocation import allocate
from lca.report import make_report
from lca.report.plots_causes import stacked_causes
from lca.report.style import PlotStyle
from lca.report.tensorboard import write_tensorboard
from lca.storage import open_run

TERMS = ["signal", "deviation", "momentum", "residual"]  # tiny_fc: SGD with momentum
PARTS = ["first_order", "curvature"]


@pytest.fixture(scope="module")
def causes_run(trained_runs, tmp_path_factory):
    """tiny_fc allocated on train and val with --causes (read-only)."""
    run_dir = tmp_path_factory.mktemp("causes") / "tiny_fc"
    shutil.copytree(trained_runs("tiny_fc"), run_dir)
    assert allocate(run_dir, causes=True, progress=False).complete
    return run_dir


def test_report_why_parameters_hurt(causes_run, tmp_path):
    run_dir = causes_run
    run = open_run(run_dir)
    assert run.has_causes and run.splits == ["train", "val"] and run.cause_terms == TERMS
    report = make_report([run_dir], out_dir=tmp_path / "report", frames=2)
    md = report.markdown.read_text()
    section = md[md.index("## Why parameters hurt") :]
    for heading in (
        "### Causes of the train LCA",
        "### Causes of the val LCA",
        "### Where the hurting comes from (train split)",
        "### What drives generalisation (validation split)",
        "### How to read",
    ):
        assert heading in section
    assert "![LCA by cause, train](causes_train.png)" in section
    for split in ("train", "val"):
        assert (tmp_path / "report" / f"causes_{split}.png").stat().st_size > 10_000
    data = json.loads(report.json.read_text())["causes"]
    assert data["terms"] == TERMS and data["parts"] == PARTS
    train = data["splits"]["train"]
    layer, hurt = run.cause_layer_lca("train"), run.cause_hurt_layer_lca("train")
    layers = run.layer_names
    for k, cause in enumerate(train["causes"]):
        term, part = divmod(k, 2)
        for j, name in enumerate(layers):
            assert train["totals"][cause][name] == pytest.approx(layer[:, term, part, j].sum())
    check = train["sums_check"]  # float64 causes against the float32 LCA they split
    assert 0 <= check["max_deviation"] <= 1e-5 * check["scale"]
    assert f"train: {check['max_deviation']:.3g}" in section
    positive = hurt.sum(axis=(0, 1, 2))
    assert train["hurting"]["positive"] == pytest.approx(positive.tolist())
    assert sum(train["hurting"]["overall"]) == pytest.approx(1.0)
    # the table's "all layers" column of the hurting breakdown: the overall fractions
    top = max(range(len(train["causes"])), key=lambda k: train["hurting"]["overall"][k])
    label = train["causes"][top].replace("_first_order", ", first order")
    label = label.replace("_curvature", ", curvature")
    assert f"{100 * train['hurting']['overall'][top]:.1f} % from {label}" in section
    val_layer = run.cause_layer_lca("val")
    val = data["validation"]
    assert val["signal_first_order"] == pytest.approx(val_layer[:, 0, 0].sum())
    assert val["signal_hurt_iterations"] == int((val_layer[:, 0, 0].sum(axis=1) > 0).sum())
    for k, total in enumerate(val["term_totals"]):
        expected = "generalisation" if total < 0 else "overfitting" if total > 0 else "none"
        assert val["verdicts"][k] == expected
    r = run.replay_residual()
    assert data["replay_residual"]["max"] == pytest.approx(r.max())
    assert data["replay_residual"]["median"] == pytest.approx(np.median(r))
    assert f"max {r.max():.3g} at iteration {int(r.argmax())}" in section


def _read(folder):
    acc = ea.EventAccumulator(str(folder), size_guidance=dict.fromkeys(ea.DEFAULT_SIZE_GUIDANCE, 0))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        values = [tf.make_ndarray(e.tensor_proto) for e in events]
        if all(v.ndim == 0 and v.dtype.kind == "f" for v in values):  # the scalars
            out[tag] = (np.array([e.step for e in events]), np.array(values, np.float64))
    return out


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_cause_figure_is_one_column_a_page_can_show(layers, tmp_path):
    """Panels stacked in one column about 900 px wide: shown ~800 px wide, ticks stay legible
    (two panels side by side were ~1400 px, their 8-point ticks shrunk to ~5 px)."""
    from PIL import Image

    bins = np.random.default_rng(0).normal(size=(12, len(TERMS), 2, layers))
    names = [f"dense_{k}" for k in range(1, layers + 1)]
    path = stacked_causes(
        names, TERMS, np.linspace(0, 120, 13), bins, tmp_path / "causes.png", "title",
        style=PlotStyle.for_loss("sparse_categorical_crossentropy"),
    )  # fmt: skip
    width, height = Image.open(path).size
    assert 800 <= width <= 1000
    assert height > 180 * layers  # one row a layer


def test_tensorboard_causes_scalars(causes_run, tmp_path):
    run_dir = causes_run
    run = open_run(run_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (folder,) = write_tensorboard([run_dir], tmp_path / "tb", max_histograms=1)
    assert [str(w.message) for w in caught] == []  # a parameters store with causes: no note
    T = run.num_iterations
    for split in ("train", "val"):
        series = _read(folder / split)
        layer = run.cause_layer_lca(split)
        tags = [t for t in series if t.startswith("causes/")]
        assert len(tags) == len(TERMS) * 2 * (len(run.layer_names) + 1)
        for k, term in enumerate(TERMS):
            for p, part in enumerate(PARTS):
                for j, name in enumerate(run.layer_names):
                    steps, values = series[f"causes/{term}_{part}/{name}"]
                    assert np.array_equal(steps, np.arange(T))
                    assert np.array_equal(values, layer[:, k, p, j].astype(np.float32))
                _, total = series[f"causes/{term}_{part}/total"]
                np.testing.assert_allclose(total, layer[:, k, p].sum(axis=1), rtol=1e-6)
    steps, values = _read(folder / "training")["replay_residual"]
    assert np.array_equal(steps, np.arange(T))
    assert np.array_equal(values, run.replay_residual().astype(np.float32))


def test_tensorboard_without_causes_writes_none_and_does_not_warn(allocated_tiny_run, tmp_path):
    """--causes is optional: a run allocated without it is complete, so no warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (folder,) = write_tensorboard([allocated_tiny_run], tmp_path / "tb", max_histograms=1)
    assert not [str(w.message) for w in caught]
    assert not any(t.startswith("causes/") for t in _read(folder / "train"))
    assert "replay_residual" not in _read(folder / "training")
