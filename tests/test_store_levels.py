"""`allocate.store: parameters | units | layers` and `store_grad`: long runs on a laptop disk.

One tiny trajectory is allocated at every level; the unit and layer sums must be bitwise
the sums a reader makes of the per-parameter store, and everything else must not change.
"""

import shutil

import numpy as np
import pytest
import zarr
from helpers import STORE_LEVELS, assert_one_line_error, cli_in_process

from lca.allocation import allocate, unit_index
from lca.analysis.diagnostics import verify_error
from lca.layout import ParameterLayout
from lca.storage import LCA_STORE, RunError, open_run
from lca.storage.check import check_run

LEVELS = ("parameters", "units", "layers")
SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def levels(allocated_runs):
    """The same tiny run allocated at each level (read-only)."""
    return {level: allocated_runs("tiny_fc", **STORE_LEVELS[level]) for level in LEVELS}


def store_of(run_dir) -> zarr.Group:
    return zarr.open_group(str(run_dir / LCA_STORE), mode="r")


def bytes_on_disk(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_unit_and_layer_sums_are_bitwise_the_sums_of_the_per_parameter_lca(levels):
    run = open_run(levels["parameters"])
    layout_json = run.trajectory.layout_json
    layer_index = ParameterLayout.from_json(layout_json).layer_index()
    L = len(run.layer_names)
    units = unit_index(layout_json)
    for split in SPLITS:
        lca = run.lca(split)[:]  # float32, (T, K)
        layers = np.stack([np.bincount(layer_index, weights=row, minlength=L) for row in lca])
        per_unit = {
            layer: np.stack(
                [np.bincount(unit_of, weights=row[indices], minlength=count) for row in lca]
            )
            for layer, (indices, unit_of, count) in units.items()
        }
        for level in ("units", "layers"):
            group = store_of(levels[level])[split]
            assert group["layer_lca"].dtype == np.float64
            assert group["layer_lca"].metadata.dimension_names == ("iteration", "layer")
            assert np.array_equal(group["layer_lca"][:], layers), (level, split)
        group = store_of(levels["units"])[split]
        assert group.attrs["units"] == {layer: u[2] for layer, u in units.items()}
        for layer, expected in per_unit.items():
            stored = group["unit_lca"][layer]
            assert stored.metadata.dimension_names == ("iteration", f"{layer}_unit")
            assert np.array_equal(stored[:], expected), (split, layer)
        # the Run API gives the same numbers whichever level was stored
        for level in LEVELS:
            other = open_run(levels[level])
            assert np.array_equal(other.layer_lca(split, chunk_rows=3), layers), level
            if level != "layers":
                for layer, expected in per_unit.items():
                    assert np.array_equal(other.unit_lca(split, layer, chunk_rows=3), expected)
    for level in LEVELS:
        attrs = store_of(levels[level]).attrs
        assert attrs["store"] == level and attrs["layers"] == run.layer_names
    # at the defaults the settings are those of a store made before the levels: it resumes
    assert not {"store", "store_grad"} & set(store_of(levels["parameters"]).attrs["settings"])


def test_every_level_keeps_the_same_losses_errors_and_gradients(levels):
    reference = store_of(levels["parameters"])
    for level in ("units", "layers"):
        store = store_of(levels[level])
        for split in SPLITS:
            group = store[split]
            for name in ("loss", "error", "error_fo", "intervals"):
                assert np.array_equal(group[name][:], reference[split][name][:]), (level, name)
            assert "lca" not in group
            assert ("unit_lca" in group) == (level == "units")
    assert "grad" not in store_of(levels["units"])["train"]  # store_grad: false
    np.testing.assert_array_equal(
        store_of(levels["layers"])["val"]["grad"][:], reference["val"]["grad"][:]
    )


def test_verify_error_passes_with_the_same_totals_on_every_level(levels):
    reports = {level: verify_error(levels[level]) for level in LEVELS}
    expected = reports["parameters"]
    for level, report in reports.items():
        assert report.passed, (level, report.failures())
        assert report.store == level
        for split in SPLITS:
            got, want = report.splits[split], expected.splits[split]
            assert got.loss_change == want.loss_change
            assert got.mean_abs_error == want.mean_abs_error
            assert got.intervals_used == want.intervals_used
            # Σ over layers of the float64 layer sums vs Σ over the float32 row: rounding only
            assert abs(got.lca_total - want.lca_total) <= 1e-12 * abs(want.loss_change)
            assert got.stored_mismatch < 1e-9
    assert "re-summed from the stored per-layer sums" in reports["units"].to_text()
    assert "per-layer sums" not in reports["parameters"].to_text()


def test_what_a_store_did_not_keep_is_a_one_line_error(levels, tmp_path):
    units = open_run(levels["units"])
    assert units.store_level == "units" and not units.has_grad("train")
    for read, needs in ((units.lca, "--store parameters"), (units.grad, "--store-grad")):
        with pytest.raises(RunError) as raised:
            read("train")
        assert_one_line_error(raised, needs, str(units.path))
    assert "store: units" in str(pytest.raises(RunError, units.lca, "val").value)
    layers = open_run(levels["layers"])
    assert layers.has_grad("val") and layers.grad("val").shape[0] == layers.num_iterations + 1
    with pytest.raises(RunError, match="store: layers, which keeps no per-unit LCA"):
        layers.unit_lca("train", layers.layer_names[0])
    with pytest.raises(RunError, match="no layer 'nope'"):
        units.unit_lca("train", "nope")
    # a store made before the levels existed has no "store" attribute: it kept parameters
    old = tmp_path / "old"
    shutil.copytree(levels["parameters"], old)
    store = zarr.open_group(str(old / LCA_STORE), mode="r+")
    del store.attrs["store"]
    run = open_run(old)
    assert run.store_level == "parameters" and run.has_grad("train")
    assert run.lca("train").shape == (run.num_iterations, run.trajectory.theta.shape[1])


def test_resuming_with_another_store_is_refused(fresh_run):
    run_dir = fresh_run("tiny_fc")
    result = cli_in_process(
        "allocate", str(run_dir), "--store", "units", "--no-store-grad", "--iterations", "0:8"
    )
    assert result.returncode == 0, result.stderr
    with pytest.raises(RunError) as raised:
        allocate(run_dir, store="parameters", progress=False)
    assert_one_line_error(
        raised, "other settings", "made with store: units; asked for store: parameters"
    )
    with pytest.raises(RunError, match="store_grad: False; asked for store_grad: True"):
        allocate(run_dir, store_grad=True, progress=False)
    # without --store a resume continues as the store was made
    assert allocate(run_dir, progress=False).complete
    store = store_of(run_dir)
    assert store.attrs["settings"]["store"] == "units" and "grad" not in store["val"]
    first = open_run(run_dir).layer_names[0]
    assert not np.isnan(store["val"]["unit_lca"][first][:]).any()


def test_lca_check_requires_the_unit_sums_of_done_units(levels, tmp_path):
    run_dir = tmp_path / "units"
    shutil.copytree(levels["units"], run_dir)
    report = check_run(run_dir)
    assert not report.issues and not report.bad_blocks
    first, second = open_run(run_dir).layer_names
    checked = {a.array: a for a in report.arrays}
    for name in ("train/layer_lca", f"train/unit_lca/{first}", f"val/unit_lca/{second}"):
        assert checked[name].required == checked[name].finite == 5  # 40 iterations, 8 a chunk
    (run_dir / LCA_STORE / "val" / "unit_lca" / first / "c" / "2" / "0").unlink()
    report = check_run(run_dir)
    assert [(i.array, i.chunk, i.problem) for i in report.issues] == [
        (f"val/unit_lca/{first}", (2, 0), "missing")
    ]
    assert report.bad_blocks == [2]


def test_unit_sums_without_gradients_take_a_fraction_of_the_disk(levels):
    full = bytes_on_disk(levels["parameters"] / LCA_STORE)
    units = bytes_on_disk(levels["units"] / LCA_STORE)
    layers = bytes_on_disk(levels["layers"] / LCA_STORE)
    # K = 1210: 2 splits × (4 K lca + 4 K grad) bytes per iteration against 2 × 8 (26 + 2)
    assert full > 15 * units, (full, units)
    assert layers > units  # layers kept the gradients


def test_a_store_level_is_one_of_three():
    from lca.allocation import resolve_settings
    from lca.config import AllocateConfig, ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="allocate.store: must be one of parameters, units"):
        config_from_dict({"allocate": {"store": "neurons"}})
    with pytest.raises(ConfigError, match="allocate.store_grad: must be true or false"):
        config_from_dict({"allocate": {"store_grad": "no"}})
    with pytest.raises(RunError, match="allocate.store: must be one of parameters, units"):
        resolve_settings(AllocateConfig(), 10, store="neurons")
    settings = resolve_settings(AllocateConfig(store="layers", store_grad=False), 10)
    assert settings.identity()["store"] == "layers" and not settings.identity()["store_grad"]
    assert resolve_settings(AllocateConfig(), 10, store="units").store == "units"


def test_describe_names_what_a_store_keeps(levels):
    from lca.report.describe import describe_run

    texts = {level: describe_run(levels[level]).allocation for level in LEVELS}
    assert texts["parameters"].endswith("LCA kept per parameter")
    assert texts["units"].endswith("LCA kept per unit, gradients not stored")
    assert texts["layers"].endswith("LCA kept per layer")
