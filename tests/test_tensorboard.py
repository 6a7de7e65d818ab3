"""`lca tensorboard`: event files whose values, read back by TensorBoard, are the stores'."""

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import STORE_LEVELS, cli_in_process
from tensorboard.backend.event_processing import event_accumulator as ea

from lca.config import load_config
from lca.report.tensorboard import histogram_iterations, write_tensorboard
from lca.storage import open_run

LEVELS = ("parameters", "units", "layers")
CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def exported(allocated_runs, tmp_path_factory):
    """A copy of the tiny run allocated at each level, exported beside it:
    {level: (run dir, its log folder, the warnings written)}."""
    out = {}
    for level in LEVELS:
        run_dir = tmp_path_factory.mktemp(level) / level
        shutil.copytree(allocated_runs("tiny_fc", **STORE_LEVELS[level]), run_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (folder,) = write_tensorboard([run_dir], max_histograms=3)
        out[level] = (run_dir, folder, [str(w.message) for w in caught])
    return out


def read(folder):
    """{tag: (steps, values)} of one writer's folder, via TensorBoard's own reader."""
    acc = ea.EventAccumulator(str(folder), size_guidance=dict.fromkeys(ea.DEFAULT_SIZE_GUIDANCE, 0))
    acc.Reload()
    series = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        steps = np.array([e.step for e in events])
        values = [tf.make_ndarray(e.tensor_proto) for e in events]
        series[tag] = (steps, values)
    return series


def scalars(series, tag):
    steps, values = series[tag]
    return steps, np.array([float(v) for v in values])


@pytest.mark.parametrize("level", LEVELS)
def test_scalars_are_the_stores_values(exported, level):
    run_dir, folder, _ = exported[level]
    run = open_run(run_dir)
    T = run.num_iterations
    for split in run.splits:
        series = read(folder / split)
        steps, loss = scalars(series, "loss")
        assert np.array_equal(steps, np.arange(T + 1))
        assert np.array_equal(loss, run.loss(split).astype(np.float32))
        per_layer = run.layer_lca(split)
        total = per_layer.sum(axis=1)
        for j, layer in enumerate([*run.layer_names, "total"]):
            expected = per_layer[:, j] if layer != "total" else total
            steps, got = scalars(series, f"lca/{layer}")
            assert np.array_equal(steps, np.arange(T))
            np.testing.assert_array_equal(got, expected.astype(np.float32))
            _, cumulative = scalars(series, f"lca_cumulative/{layer}")
            np.testing.assert_array_equal(cumulative, np.cumsum(expected).astype(np.float32))
        for tag, first_order in (("rule", False), ("first_order", True)):
            _, error = scalars(series, f"conservation_error/{tag}")
            expected = run.error(split, first_order=first_order).astype(np.float32)
            np.testing.assert_array_equal(error, expected)
        _, sub = scalars(series, "sub_intervals")
        assert np.array_equal(sub, run.lca_store[split]["intervals"][:])
        helped = [t for t in series if t.startswith("helped")]
        hist = [t for t in series if t.startswith("lca_hist/")]
        if level == "parameters":
            lca = run.lca(split)[:]
            for layer, parts in run.layout.layer_slices().items():
                values = np.concatenate([lca[:, s] for s in parts], axis=1)
                neg, pos = (values < 0).sum(1), (values > 0).sum(1)
                _, got = scalars(series, f"helped_pct/{layer}")
                np.testing.assert_allclose(got, 100.0 * neg / (neg + pos), rtol=1e-6)
            assert sorted(hist) == sorted(f"lca_hist/{n}" for n in run.layer_names)
            sizes = run.layout.layer_sizes()
            for layer in run.layer_names:
                steps, histograms = series[f"lca_hist/{layer}"]
                assert list(steps) == [0, 20, T - 1]  # 3 evenly spaced: first to last
                assert all(h.shape[1] == 3 and h[:, 2].sum() == sizes[layer] for h in histograms)
        elif level == "units":
            assert sorted(helped) == sorted(f"helped_units_pct/{n}" for n in run.layer_names)
            for layer, units in run.unit_lcas(split).items():
                neg, pos = (units < 0).sum(1), (units > 0).sum(1)
                _, got = scalars(series, f"helped_units_pct/{layer}")
                np.testing.assert_allclose(got, 100.0 * neg / (neg + pos), rtol=1e-6)
            assert hist == []
        else:
            assert helped == [] and hist == []


@pytest.mark.parametrize("level", LEVELS)
def test_training_metrics_config_and_one_note(exported, level):
    run_dir, folder, notes = exported[level]
    group = open_run(run_dir).trajectory.group
    series = read(folder / "training")
    for tag in ("loss", "accuracy"):
        steps, values = scalars(series, tag)
        assert np.array_equal(steps, np.arange(group[tag].shape[0]))
        assert np.array_equal(values, group[tag][:].astype(np.float32))
    config = series["config"][1][0].item().decode()
    # an fc model with SGD: its sizes and momentum, no other network's or optimiser's keys
    assert "hidden_units:" in config and "momentum: 0.9" in config
    for other in ("conv_filters", "blocks_per_stage", "widths", "d_model", "beta_1", "epsilon"):
        assert other not in config, other
    summary = series["summary"][1][0].item().decode()
    assert f"store level: {level}" in summary
    val = np.asarray(group["val_accuracy"][:], dtype=np.float64)
    steps, values = scalars(read(folder / "val"), "accuracy")
    measured = np.flatnonzero(np.isfinite(val))
    assert np.array_equal(steps, measured + 1)
    assert np.array_equal(values, val[measured].astype(np.float32))
    assert "allocated without --causes" in summary  # optional data: noted, not warned
    if level == "parameters":
        assert notes == []
    else:
        assert len(notes) == 1 and "keeps no per-parameter LCA" in notes[0]  # one warning a run
        assert "--causes" not in notes[0]
        assert "keeps no per-parameter LCA" in summary


def test_two_runs_share_a_logdir(exported, tmp_path):
    runs = [exported["layers"][0], exported["units"][0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = write_tensorboard(runs, tmp_path / "tb", max_histograms=0)
    # each run's path below the runs' common folder: <tmp>/layers0/layers -> layers0/layers
    names = [w.relative_to(tmp_path / "tb").as_posix() for w in written]
    assert names == [f"{r.parent.name}/{r.name}" for r in runs]
    for folder, run_dir in zip(written, runs):
        _, loss = scalars(read(folder / "train"), "loss")
        assert np.array_equal(loss, open_run(run_dir).loss("train").astype(np.float32))


def _to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's own showwarning (which pytest replaces by its recorder while a test runs)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def test_cli_writes_beside_the_run_and_a_rewrite_replaces(exported, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exported["layers"][0], run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (first,) = write_tensorboard([run_dir], max_histograms=0)
    assert first == tmp_path / "tensorboard" / "run"
    with warnings.catch_warnings():  # warnings as a fresh process shows them: once, on stderr
        warnings.simplefilter("default")
        warnings.showwarning = _to_stderr
        result = cli_in_process("tensorboard", str(run_dir), "--histograms", "2")
    assert result.returncode == 0, result.stderr
    assert f"tensorboard --logdir {tmp_path / 'tensorboard'}" in result.stdout
    assert result.stderr.count("keeps no per-parameter LCA") == 1
    for sub in ("training", "train", "val"):
        assert len(list((first / sub).glob("events.out.tfevents.*"))) == 1, sub
    steps, _ = scalars(read(first / "train"), "loss")
    assert np.array_equal(steps, np.arange(open_run(run_dir).num_iterations + 1))


def test_histograms_at_every_iteration_or_evenly_spaced():
    assert list(histogram_iterations(40, 50)) == list(range(40))  # a short run: every one
    at = histogram_iterations(880, 50)
    assert len(at) == 50 and at[0] == 0 and at[-1] == 879
    assert np.ptp(np.diff(at)) <= 1  # evenly spaced, to the nearest iteration
    assert list(histogram_iterations(880, 1)) == [879]
    assert len(histogram_iterations(880, 0)) == 0 and len(histogram_iterations(0, 50)) == 0


@pytest.mark.parametrize(
    ("config", "kept", "left_out"),
    [
        (
            "mnist_fc_adam.yaml",
            {"model": ["hidden_units"], "optimizer": ["beta_1", "beta_2", "epsilon"]},
            {
                "model": ["conv_filters", "dense_units", "widths", "blocks_per_stage"],
                "optimizer": ["momentum", "weight_decay"],
                "data": ["synthetic"],
            },
        ),
        (
            "tiny_transformer.yaml",
            {
                "model": ["d_model", "num_heads"],
                "optimizer": ["weight_decay"],
                "data": ["modular", "split_seed"],
            },
            {
                "model": ["hidden_units", "conv_filters"],
                "optimizer": ["momentum"],
                "data": ["val_size", "train_size", "synthetic", "path"],
            },
        ),
    ],
)
def test_config_text_keeps_only_the_keys_in_use(config, kept, left_out):
    cfg = load_config(CONFIGS / config)
    used, everything = cfg.used_dict(), cfg.to_dict()
    for section, keys in kept.items():
        assert all(key in used[section] for key in keys), (section, keys)
    for section, keys in left_out.items():
        assert not [key for key in keys if key in used[section]], section
    assert used["allocate"] == everything["allocate"]  # sections without a name: all kept
