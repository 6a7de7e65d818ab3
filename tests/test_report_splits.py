"""Train vs validation by component (lca.analysis.generalization); reports on each store level."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lca import analysis
from lca.analysis.generalization import (
    Interval,
    accuracy_steps,
    crossings,
    cumulative,
    first_crossing,
    intervals,
    rank_by_interval,
    rank_components,
)
from lca.report import make_report
from lca.storage import open_run

# --- lca.analysis.generalization on hand-made arrays ----------------------------------------


def test_accuracy_steps_put_train_at_theta_t_and_val_at_theta_t_plus_1():
    nan = np.nan
    steps, values = accuracy_steps(np.array([0.1, 0.5, nan, 0.9]), "train")
    assert steps.tolist() == [0, 1, 3] and values.tolist() == [0.1, 0.5, 0.9]
    steps, values = accuracy_steps(np.array([nan, 0.4, nan, 0.8]), "val")
    assert steps.tolist() == [2, 4] and values.tolist() == [0.4, 0.8]
    with pytest.raises(ValueError):
        accuracy_steps(np.zeros(3), "test")


def test_first_crossing_is_the_first_step_at_or_above_the_threshold():
    steps = np.array([0, 5, 10, 15, 20])
    acc = np.array([0.2, 0.96, 0.94, 0.99, 1.0])
    x = first_crossing(steps, acc, 0.95, "val")
    assert (x.step, x.status, x.best, x.best_step) == (5, "reached", 1.0, 20)
    assert first_crossing(steps, acc, 0.99, "val").step == 15
    never = first_crossing(steps, acc * 0.5, 0.95, "val")
    assert (never.step, never.status, never.best, never.best_step) == (None, "not reached", 0.5, 20)
    empty = first_crossing(np.zeros(0), np.zeros(0), 0.95, "val")
    assert (empty.step, empty.status, empty.best) == (None, "not recorded", None)
    # 57/60 stored in float32 reads back just under 0.95: still "reached 95 %"
    float32 = np.array([np.float32(57 / 60)], dtype=np.float64)
    assert float32[0] < 0.95 and first_crossing(np.array([7]), float32, 0.95, "train").step == 7


def test_crossings_of_both_curves_and_arrays_never_recorded():
    train = np.array([0.5, 0.95, 0.99, 1.0])
    val = np.array([np.nan, 0.96, np.nan, 0.97])
    got = {(x.curve, x.threshold): x for x in crossings(train, val)}
    assert got[("train", 0.99)].step == 2 and got[("train", 0.95)].step == 1
    assert got[("val", 0.95)].step == 2 and got[("val", 0.99)].status == "not reached"
    old = {(x.curve, x.threshold): x for x in crossings(train, None)}
    assert old[("val", 0.95)].status == "not recorded" and old[("train", 0.95)].step == 1


def test_intervals_split_at_the_boundary_or_cover_the_whole_run():
    assert intervals(10, 4) == [Interval("before step 4", 0, 4), Interval("from step 4", 4, 10)]
    for boundary in (None, 0, 10):
        assert intervals(10, boundary) == [Interval("whole run", 0, 10)]


def test_rank_components_orders_by_validation_lca_and_keeps_the_sign():
    names = ["a", "b", "c", "d", "e", "f", "g"]
    val = np.array([-1.0, 3.0, -5.0, 0.0, 2.0, -1.0, 0.5])
    train = np.arange(7.0)
    ranked = rank_components(names, train, val, k=2)
    assert [(r.component, r.val, r.train) for r in ranked["drives"]] == [
        ("c", -5.0, 2.0),
        ("a", -1.0, 0.0),  # a before f: ties keep the order
    ]
    assert [r.component for r in ranked["overfits"]] == ["b", "e"]
    everything = rank_components(names, train, val, k=10)
    assert [r.component for r in everything["drives"]] == ["c", "a", "f"]
    assert [r.component for r in everything["overfits"]] == ["b", "e", "g"]  # d (0) in neither
    assert rank_components(["x"], [1.0], [-2.0])["overfits"] == []
    with pytest.raises(ValueError):
        rank_components(["x", "y"], [1.0], [2.0])


def test_rank_by_interval_sums_before_and_after_the_boundary():
    # component 0 helps validation early and overfits late; component 1 the opposite
    val = np.array([[-1.0, 0.5], [-2.0, 0.5], [3.0, -1.0], [4.0, -1.0], [0.5, -0.25]])
    train = -np.ones_like(val)
    before, after = rank_by_interval(["early", "late"], train, val, intervals(5, 2))
    assert (before["start"], before["stop"], after["start"], after["stop"]) == (0, 2, 2, 5)
    assert before["drives"] == [{"component": "early", "val": -3.0, "train": -2.0}]
    assert before["overfits"] == [{"component": "late", "val": 1.0, "train": -2.0}]
    assert after["drives"] == [{"component": "late", "val": -2.25, "train": -3.0}]
    assert after["overfits"] == [{"component": "early", "val": 7.5, "train": -3.0}]
    (whole,) = rank_by_interval(["early", "late"], train, val, intervals(5, None))
    assert whole["interval"] == "whole run" and whole["overfits"][0]["val"] == 4.5


def test_cumulative_starts_at_zero_on_the_step_axis():
    series = np.array([[1.0, -1.0], [2.0, 0.5], [-0.5, 0.25]])
    cum = cumulative(series)
    assert cum.shape == (4, 2) and cum[0].tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(cum[-1], series.sum(axis=0))


# --- the report on a tiny transformer, per store level --------------------------------------

SPLITS_FIGURES = [
    "splits_accuracy.png",
    "splits_layer_cumulative.png",
    "splits_head_cumulative.png",
]


@pytest.fixture(scope="module")
def transformer_reports(allocated_runs, tmp_path_factory):
    """The tiny transformer allocated at the units (no gradients) and parameters levels, with
    the report of each."""
    out = {}
    for store in ("units", "parameters"):
        run_dir = tmp_path_factory.mktemp(f"splits_{store}") / f"transformer_{store}"
        allocated = allocated_runs("tiny_transformer", store=store, store_grad=False)
        shutil.copytree(allocated, run_dir)  # the report goes into the run
        report = make_report([run_dir], out_dir=run_dir / "report", frames=1)
        out[store] = (run_dir, report, json.loads(report.json.read_text()))
    return out


def test_units_report_writes_the_section_the_skip_notes_and_s17(transformer_reports):
    run_dir, report, data = transformer_reports["units"]
    markdown = report.markdown.read_text()
    assert "## Train vs validation by component" in markdown
    assert "### What drives generalisation, what overfits" in markdown
    skipped = {s["measurement"]: s for s in data["skipped"]}
    helped = skipped["percent of parameters helped (Table 1, Fig 3a, 3c, 3d)"]
    assert "--store parameters" in helped["how"] and "per-parameter" in helped["needs"]
    oscillations = skipped["oscillations (Table S2, Fig S7)"]
    assert "--store-grad" in oscillations["how"] and "gradients" in oscillations["needs"]
    for s in data["skipped"]:  # one line each in report.md
        assert markdown.count(f"{s['measurement']}: skipped; needs {s['needs']}") == 1
    assert "## Oscillations" not in markdown and "## Learning is noisy" not in markdown
    measured = data["runs"][0]
    assert measured["percent_helped"] is None and measured["oscillations"] is None
    assert measured["headline"]["percent_helped"] is None  # NaN in JSON

    run = open_run(run_dir)
    section = data["train_vs_validation"]
    for split in ("train", "val"):
        expected = analysis.synchronisation(run.layer_lca(split), top=20, min_fraction=0.5)
        got = section["synchronisation"][split]
        assert (got["count"], got["p_value"]) == (expected.count, expected.p_value)
        assert got["baseline_mean"] == expected.baseline_mean
    assert measured["synchronisation"]["count"] == section["synchronisation"]["train"]["count"]
    assert "### Synchronised moments on both splits (S17, top 20)" in markdown

    # 40 iterations of the tiny run reach neither 95 % nor 99 %: said, and ranked over it all
    crossed = {(c["curve"], c["threshold"]): c for c in section["crossings"]}
    assert crossed[("val", 0.95)]["status"] == "not reached"
    assert crossed[("train", 0.99)]["status"] == "not reached"
    assert [i["name"] for i in section["intervals"]] == ["whole run"]
    assert "validation accuracy never reaches 95 %" in markdown
    units = {layer: run.unit_lca("val", layer).sum(axis=0) for layer in run.layer_names}
    names = [f"{layer} {u}" for layer in run.layer_names for u in run.layout.unit_labels(layer)]
    totals = np.concatenate([units[layer] for layer in run.layer_names])
    most_negative = [names[i] for i in np.argsort(totals, kind="stable")[:5]]
    ranking = section["rankings"]["units"][0]
    assert [r["component"] for r in ranking["drives"]] == most_negative
    assert section["head_layers"] == ["block1_attn"]
    assert set(section["unit_totals"]["val"]) >= {"block1_attn head 0", "block1_attn head 1"}

    for name in SPLITS_FIGURES + ["s17_synchronisation.png", "s1_unit_lca.png"]:
        with Image.open(report.out_dir / name) as image:
            image.verify()
        assert f"]({name})" in markdown, name
    assert not (report.out_dir / "fig3a_percent_helped.png").exists()


def test_per_layer_numbers_are_the_same_from_a_parameters_store(transformer_reports):
    _, _, units = transformer_reports["units"]
    _, report, parameters = transformer_reports["parameters"]
    a, b = units["runs"][0], parameters["runs"][0]
    for key in ("layer_totals", "layer_totals_val", "layer_series", "synchronisation"):
        assert a[key] == b[key], key
    assert a["approximate_loss"] == b["approximate_loss"]
    for key in ("layer_totals", "unit_totals", "rankings", "synchronisation", "crossings"):
        assert units["train_vs_validation"][key] == parameters["train_vs_validation"][key], key
    # what the parameters store adds; the gradients were not kept there either
    assert b["percent_helped"] is not None and b["oscillations"] is None
    assert [s["measurement"] for s in parameters["skipped"]] == ["oscillations (Table S2, Fig S7)"]
    assert (report.out_dir / "fig3a_percent_helped.png").is_file()
