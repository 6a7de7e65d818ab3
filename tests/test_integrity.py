"""Damaged stores: every lost or altered chunk is a one-line error, and `lca check` repairs LCA."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from lca.cli import main
from lca.storage import LCA_STORE, TRAJECTORY_STORE, RunError, open_run
from lca.storage.check import check_run

# Which command reads each array of a tiny_fc run (train and val allocated). The arrays no
# command reads (training metrics, gradients) are reported by `lca check`.
READER = {
    (TRAJECTORY_STORE, "theta"): ["allocate", "--restart"],
    (TRAJECTORY_STORE, "train_indices"): ["allocate", "--restart"],
    (TRAJECTORY_STORE, "val_indices"): ["allocate", "--restart"],
    (TRAJECTORY_STORE, "loss"): ["check"],
    (TRAJECTORY_STORE, "accuracy"): ["check"],
    (TRAJECTORY_STORE, "batch_indices"): ["check"],
    (LCA_STORE, "done"): ["verify-error"],
    **{
        (LCA_STORE, f"{split}/{name}"): ["verify-error"]
        for split in ("train", "val")
        for name in ("lca", "loss", "error", "error_fo", "splits")
    },
    **{(LCA_STORE, f"{split}/grad"): ["check"] for split in ("train", "val")},
}


@pytest.fixture(scope="module")
def allocated(tmp_path_factory):
    """A tiny_fc run, trained and allocated once for this module (never modified)."""
    from lca import allocate
    from lca.config import load_config
    from lca.training import train

    run = tmp_path_factory.mktemp("integrity") / "run"
    train(load_config(Path(__file__).parents[1] / "configs/tiny_fc.yaml"), run, progress=False)
    allocate(run, progress=False)
    return run


def _arrays(run: Path) -> list[tuple[str, str]]:
    found = []
    for store in (TRAJECTORY_STORE, LCA_STORE):
        for node in (run / store).rglob("zarr.json"):
            if (node.parent / "c").is_dir():
                found.append((store, node.parent.relative_to(run / store).as_posix()))
    return sorted(found)


def _chunk_files(run: Path, store: str, array: str) -> list[Path]:
    return sorted(p for p in (run / store / array / "c").rglob("*") if p.is_file())


def _first_chunk(run: Path, store: str, array: str) -> Path:
    return _chunk_files(run, store, array)[0]


def _damage(chunk: Path, how: str) -> None:
    if how == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:-3])


def _lca_arrays(run: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(run / LCA_STORE), mode="r")
    return {
        path: node[...]
        for path, node in group.members(max_depth=None)
        if isinstance(node, zarr.Array)
    }


def test_the_reader_table_covers_every_array(allocated):
    assert sorted(READER) == _arrays(allocated)


@pytest.mark.parametrize("how", ["delete", "truncate"])
@pytest.mark.parametrize(("store", "array"), sorted(READER))
def test_a_damaged_chunk_is_a_one_line_error_naming_run_array_and_chunk(
    allocated, tmp_path, store, array, how
):
    run = tmp_path / "run"
    shutil.copytree(allocated, run)
    _damage(_first_chunk(run, store, array), how)
    command = READER[(store, array)]
    result = CliRunner().invoke(main, [command[0], str(run), *command[1:]])
    if (array, how) == ("done", "delete"):  # an absent flag reads "not done": redo the unit
        assert result.exit_code == 1 and "allocation incomplete: 32 of 40" in result.output
        return
    assert result.exit_code == (1 if command == ["check"] else 2), result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    problem = "missing" if how == "delete" else "fails its checksum"
    if command == ["check"]:
        assert f"damaged: {store}/{array} chunk 0" in result.output
        assert problem in result.output
    else:
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.output
        assert str(run) in errors[0] and f"of {array}" in errors[0] and problem in errors[0]
        assert "chunk 0" in errors[0] and f"lca check {run}" in errors[0]


def test_reading_a_lost_theta_row_raises_instead_of_returning_zeros(allocated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(allocated, run)
    _damage(_first_chunk(run, TRAJECTORY_STORE, "theta"), "delete")
    with pytest.raises(RunError, match=r"chunk 0,0 of theta \(steps 0–40\) is missing"):
        open_run(run).theta[3:5]


def test_check_repair_then_allocate_restores_lca_bitwise(allocated, tmp_path):
    original = _lca_arrays(allocated)
    run = tmp_path / "run"
    shutil.copytree(allocated, run)
    chunks = {
        "train/lca": _chunk_files(run, LCA_STORE, "train/lca")[-1],  # unit 4
        "val/grad": _chunk_files(run, LCA_STORE, "val/grad")[2],  # unit 2
        "train/error": _chunk_files(run, LCA_STORE, "train/error")[1],  # unit 1
    }
    _damage(chunks["train/lca"], "delete")
    _damage(chunks["val/grad"], "truncate")
    flipped = bytearray(chunks["train/error"].read_bytes())
    flipped[len(flipped) // 2] ^= 0x10
    chunks["train/error"].write_bytes(bytes(flipped))

    runner = CliRunner()
    checked = runner.invoke(main, ["check", str(run)])
    assert checked.exit_code == 1
    assert "3 work unit(s) hold damaged chunks" in checked.output
    # resuming the allocation alone notices the missing chunk of a done unit
    refused = runner.invoke(main, ["allocate", str(run)])
    assert refused.exit_code == 2 and "--repair" in refused.output
    repaired = runner.invoke(main, ["check", str(run), "--repair"])
    assert repaired.exit_code == 1 and "3 work unit(s) marked not done" in repaired.output
    allocated_again = runner.invoke(main, ["allocate", str(run)])
    assert allocated_again.exit_code == 0, allocated_again.output
    assert "allocated 24 iterations" in allocated_again.output  # units 1, 2 and 4 of 5
    assert runner.invoke(main, ["check", str(run)]).exit_code == 0
    restored = _lca_arrays(run)
    assert restored.keys() == original.keys()
    for name, values in original.items():
        np.testing.assert_array_equal(restored[name], values, err_msg=name, strict=True)


def test_damaged_theta_names_lost_iterations_and_ranges_that_avoid_them(tmp_path, monkeypatch):
    from lca import allocate
    from lca.config import load_config
    from lca.training import train

    monkeypatch.setattr("lca.storage.trajectory.rows_per_chunk", lambda num_params: 8)
    run = tmp_path / "run"
    config = Path(__file__).parents[1] / "configs/tiny_fc.yaml"
    train(load_config(config, ["allocate.splits=[train]"]), run, progress=False)
    _damage(run / TRAJECTORY_STORE / "theta/c/2/0", "truncate")  # steps 16–23

    report = check_run(run)
    assert not report.ok and not report.fatal
    assert report.lost_iterations == [(15, 24)]
    assert report.allowed_ranges() == [(0, 8), (24, 40)]  # whole units of 8 iterations
    text = report.to_text()
    assert "iterations 15:24 cannot be allocated" in text
    assert "--iterations 0:8 --iterations 24:40" in text
    result = CliRunner().invoke(main, ["check", str(run), "--repair"])
    assert result.exit_code == 1 and "cannot be recomputed" in result.output

    summary = allocate(run, iterations=(32, 40), progress=False)
    assert summary.iterations_this_run == 8
    with pytest.raises(RunError, match=r"chunk 2,0 of theta \(steps 16–23\) fails its checksum"):
        allocate(run, iterations=(16, 24), progress=False)


def test_runs_written_before_checksums_still_open_and_say_so(allocated, tmp_path):
    from lca.storage import without_checksums
    from lca.storage.integrity import _warned

    run = tmp_path / "old"
    shutil.copytree(allocated, run)
    # rewrite θ as an array without the crc32c codec (as lca wrote it before checksums)
    group = zarr.open_group(str(run / TRAJECTORY_STORE), mode="r+")
    theta = group["theta"][...]
    with without_checksums():
        from lca.storage import checksummed

        new = group.create_array(
            "theta",
            shape=theta.shape,
            chunks=group["theta"].chunks,
            dtype="float32",
            dimension_names=("step", "parameter"),
            compressors=checksummed(compress=False),
            overwrite=True,
        )
    new[...] = theta
    _warned.clear()
    with pytest.warns(UserWarning, match="written without checksums"):
        reopened = open_run(run)
    np.testing.assert_array_equal(reopened.theta[...], theta)
    _damage(run / TRAJECTORY_STORE / "theta/c/0/0", "truncate")  # size tells it is cut short
    with pytest.raises(RunError, match="is cut short"):
        open_run(run).theta[0]
