"""``lca.zarr`` is described once (:mod:`lca.storage.lca_arrays`): a new store holds exactly the
arrays of the table, the storage page shows the table, and stores that name the sub-interval
counts ``splits`` are still read.

The stores are created without allocating anything (cheap): the arrays, not their values, are
what the table says.
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from lca.allocation import open_lca_store, resolve_settings
from lca.allocation.cause_sums import CauseModel
from lca.allocation.store import store_sizes
from lca.analysis.diagnostics import verify_error
from lca.storage import open_run, open_trajectory, read_run_config
from lca.storage.lca_arrays import LCA_ARRAYS, block_rows, markdown_table, stored_arrays

DOCS = Path(__file__).parents[1] / "docs"

# tiny_fc: 8·8 inputs → 16 → 10 classes, 40 iterations in blocks of 8
T, K, BLOCKS, CLASSES = 40, 64 * 16 + 16 + 16 * 10 + 10, 5, 10
SPLIT_ARRAYS = {  # the arrays every store has per split: name → (shape, dtype, fill)
    "loss": ((T + 1,), "float64", math.nan),
    "intervals": ((T,), "int32", 0),
    "error": ((T,), "float64", math.nan),
    "error_fo": ((T,), "float64", math.nan),
}
CASES = {  # settings → the arrays they add per split (besides SPLIT_ARRAYS) and at the root
    "parameters": (
        {},
        {"lca": ((T, K), "float32", math.nan), "grad": ((T + 1, K), "float32", math.nan)},
        {},
    ),
    "units": (
        {"store": "units", "store_grad": False},
        {
            "layer_lca": ((T, 2), "float64", math.nan),
            "unit_lca/dense_1": ((T, 16), "float64", math.nan),  # a unit per neuron
            "unit_lca/dense_2": ((T, 10), "float64", math.nan),
        },
        {},
    ),
    "layers": (
        {"store": "layers", "precision": "bfloat16"},
        {
            "layer_lca": ((T, 2), "float64", math.nan),
            "grad": ((T + 1, K), "float32", math.nan),
            "fallback": ((T,), "bool", False),
        },
        {},
    ),
    "causes": (
        {"causes": True, "store": "layers", "store_grad": False},
        {
            "layer_lca": ((T, 2), "float64", math.nan),
            "causes/layer": ((T, 4, 2, 2), "float64", math.nan),  # SGD with momentum: 4 terms
            "causes/hurt_layer": ((T, 4, 2, 2), "float64", math.nan),
        },
        {"replay_residual": ((T,), "float64", math.nan)},
    ),
    "per_class": (
        {"per_class": True, "per_class_full": True, "subset_size": 500, "check_every": 3},
        {
            "lca": ((T, K), "float32", math.nan),
            "grad": ((T + 1, K), "float32", math.nan),
            "class_loss": ((T + 1, CLASSES), "float64", math.nan),
            "class_error": ((T, CLASSES), "float64", math.nan),
            "class_layer_lca": ((T, CLASSES, 2), "float32", math.nan),
            "class_unit_lca/dense_1": ((T, CLASSES, 16), "float32", math.nan),
            "class_unit_lca/dense_2": ((T, CLASSES, 10), "float32", math.nan),
            "class_lca": ((T, CLASSES, K), "float32", math.nan),
        },
        {
            "subset_check/iteration": ((T,), "int64", -1),
            "subset_check/layer_rel_error": ((T, 2), "float64", math.nan),
            **{
                f"subset_check/{name}": ((T,), "float64", math.nan)
                for name in (
                    "correlation",
                    "sign_agreement",
                    "helped_error",
                    "full_loss_change",
                    "full_error",
                )
            },
        },
    ),
}


def arrays_of(group: zarr.Group) -> dict[str, zarr.Array]:
    return {
        path: node for path, node in group.members(max_depth=None) if isinstance(node, zarr.Array)
    }


def same_fill(got, want) -> bool:
    return (math.isnan(want) and math.isnan(got)) if isinstance(want, float) else got == want


def new_store(source: Path, tmp_path: Path, overrides: dict):
    """``lca.zarr`` of the trained run ``source`` as ``allocate`` creates it, nothing computed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(source / "config.yaml", run_dir / "config.yaml")
    trajectory = open_trajectory(source)
    config = read_run_config(source)
    settings = resolve_settings(
        config.allocate, K, num_train=int(trajectory.attrs["num_train"]), run=config, **overrides
    )
    return open_lca_store(run_dir, trajectory, settings), trajectory, settings


@pytest.mark.parametrize("case", CASES)
def test_a_new_store_holds_exactly_the_arrays_of_the_table(trained_runs, tmp_path, case):
    overrides, per_split, root = CASES[case]
    source = trained_runs("tiny_fc")
    store, trajectory, settings = new_store(source, tmp_path, overrides)
    found = arrays_of(store)
    # what the table lists, as it lists it: names, shapes, dimension names, dtypes, fills, chunks
    model = None
    if settings.causes:  # the terms of the run's optimiser, and whether a state is carried
        model = CauseModel.of_run(read_run_config(source), trajectory.layout_json, trajectory.attrs)
    sizes = store_sizes(settings, trajectory, model)
    listed = {}
    for where, prefixes in (("split", ("train/", "val/")), ("train", ("train/",)), ("root", ("",))):
        for entry, name, shape, dims in stored_arrays(sizes, where):
            for prefix in prefixes:
                listed[prefix + name] = (entry, shape, dims)
    assert sorted(found) == sorted(listed)
    for name, (entry, shape, dims) in listed.items():
        array = found[name]
        assert array.shape == shape and array.metadata.dimension_names == dims, name
        assert array.dtype == np.dtype(entry.dtype), name
        assert same_fill(array.metadata.fill_value, entry.fill), name
        rows = {"step": 8, "iteration": 8, "block": 1}.get(entry.per)
        if rows is not None:
            assert array.chunks == (rows, *shape[1:]), name
    # ... and what this case must have, written out here independently of the table
    expected = {"done": ((BLOCKS,), "bool", False), **root}
    for split in ("train", "val"):
        expected.update({f"{split}/{n}": v for n, v in {**SPLIT_ARRAYS, **per_split}.items()})
    if "subset_size" in overrides:
        expected["train/subset_indices"] = ((overrides["subset_size"],), "int64", 0)
    assert sorted(found) == sorted(expected)
    for name, (shape, dtype, fill) in expected.items():
        assert (found[name].shape, found[name].dtype) == (shape, np.dtype(dtype)), name
        assert same_fill(found[name].metadata.fill_value, fill), name


def test_the_rows_a_block_writes():
    assert block_rows("iteration", 8, 16, 40, 1) == slice(8, 16)
    assert block_rows("step", 8, 16, 40, 1) == slice(8, 16)  # step 16 is the next block's
    assert block_rows("step", 32, 40, 40, 4) == slice(32, 41)  # the last block: also step T
    assert block_rows("iteration", 32, 40, 40, 4) == slice(32, 40)
    assert block_rows("block", 32, 40, 40, 4) == slice(4, 5)


def test_the_storage_page_shows_the_table():
    page = (DOCS / "storage.md").read_text()
    table = markdown_table()
    assert table in page
    assert table.count("\n") == len(LCA_ARRAYS) + 2  # a header, a rule and a row per array
    assert "`lca.zarr/<split>/intervals`" in table and "`splits`" in table


def test_a_store_that_names_the_intervals_splits_is_still_read(allocated_copy):
    run_dir = allocated_copy("tiny_fc")
    before = verify_error(run_dir)
    run = open_run(run_dir)
    intervals = {split: run.intervals(split)[:] for split in run.splits}
    for split in run.splits:  # as stores made before the name `intervals` are
        (run_dir / "lca.zarr" / split / "intervals").rename(run_dir / "lca.zarr" / split / "splits")
    old = open_run(run_dir)
    assert "intervals" not in old.lca_store["train"] and "splits" in old.lca_store["train"]
    for split, expected in intervals.items():
        np.testing.assert_array_equal(old.intervals(split)[:], expected, strict=True)
    after = verify_error(run_dir)
    assert after.passed and after.to_text() == before.to_text()
