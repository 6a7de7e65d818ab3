"""``lca import``: a run made from saved checkpoints.

θ rows of tiny recorded runs are written out as the checkpoints a user would have (Keras
``.weights.h5`` files, torch ``.safetensors``); the imported run holds the same θ and
allocates to the same LCA, bit for bit. Bad sequences and bad files get one line each.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

import lca
from lca.cli import main
from lca.config import load_config
from lca.storage import open_trajectory
from lca.training.checkpoints import missing_step, step_of

CONFIGS = Path(__file__).parents[1] / "configs"
TORCH_FC = ("framework=torch", "training.iterations=16")


def keras_checkpoints(config, rows: dict[int, np.ndarray], folder: Path) -> Path:
    """θ rows (``{step: θ}``) saved with the model's ``save_weights`` as ckpt-STEP files."""
    from lca.data import load_dataset
    from lca.tensorflow.models import build_model

    dataset = load_dataset(config.data)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    for step, theta in rows.items():
        offset = 0
        for v in model.trainable_variables:
            size = int(np.prod(v.shape))
            v.assign(theta[offset : offset + size].reshape(v.shape))
            offset += size
        model.save_weights(str(folder / f"ckpt-{step}.weights.h5"))
    return folder


def import_run(*args: str):
    return CliRunner().invoke(main, ["import", *map(str, args)])


@pytest.fixture(scope="module")
def keras_folder(trained_runs, tmp_path_factory) -> Path:
    """Every θ row of tiny_fc as a Keras weight file (read-only)."""
    theta = open_trajectory(trained_runs("tiny_fc")).theta[:]
    config = load_config(CONFIGS / "tiny_fc.yaml")
    folder = tmp_path_factory.mktemp("ckpts") / "keras"
    return keras_checkpoints(config, dict(enumerate(theta)), folder)


def test_step_numbers_from_file_names_and_gaps_of_an_even_sequence():
    assert step_of(Path("ckpt-1200.weights.h5")) == 1200
    assert step_of(Path("step_300.safetensors")) == 300
    assert step_of(Path("model-v2-00042.pt")) == 42
    assert step_of(Path("final.pt")) is None
    assert missing_step(np.array([0, 100, 200, 400, 500])) == (2, 300, 100)
    assert missing_step(np.array([0, 100, 200, 300, 350])) is None  # a shorter last segment
    assert missing_step(np.array([0, 100, 200, 300, 500])) == (3, 400, 100)
    assert missing_step(np.array([1, 2, 4, 8, 16, 32])) is None  # log-spaced: no gap


def test_imported_keras_checkpoints_are_the_run_and_allocate_bit_for_bit(
    keras_folder, allocated_tiny_run, tmp_path
):
    out = tmp_path / "imported"
    done = import_run(CONFIGS / "tiny_fc.yaml", keras_folder, "--out", out)
    assert done.exit_code == 0, done.output
    assert "imported 41 checkpoints (steps 0...40, every 1 steps)" in done.stdout
    recorded, imported = open_trajectory(allocated_tiny_run), open_trajectory(out)
    np.testing.assert_array_equal(imported.theta[:], recorded.theta[:])
    np.testing.assert_array_equal(imported.steps, np.arange(41))
    assert imported.attrs["recorded_by"] == "lca import"
    assert imported.attrs["checkpoints"][:2] == ["ckpt-0.weights.h5", "ckpt-1.weights.h5"]
    lca.allocate(out, progress=False)
    want, got = lca.open_run(allocated_tiny_run), lca.open_run(out)
    for split in ("train", "val"):
        assert got.lca(split)[:].tobytes() == want.lca(split)[:].tobytes()
        assert got.loss(split).tobytes() == want.loss(split).tobytes()
    assert lca.verify_error(out).passed


def test_every_fifth_checkpoint_of_a_folder_is_a_run_of_segments(
    keras_folder, trained_runs, tmp_path
):
    out = tmp_path / "every5"
    pattern = "ckpt-*[05].weights.h5"
    done = import_run(CONFIGS / "tiny_fc.yaml", keras_folder, "--pattern", pattern, "--out", out)
    assert done.exit_code == 0, done.output
    run = open_trajectory(out)
    np.testing.assert_array_equal(run.steps, np.arange(0, 41, 5))  # read in step order
    assert run.attrs["record_every"] == 5 and "segment of 5 optimizer steps" in run.segment_note()
    every = open_trajectory(trained_runs("tiny_fc")).theta[:]
    np.testing.assert_array_equal(run.theta[:], every[::5])


def test_bad_checkpoint_sequences_and_files_get_one_line_each(keras_folder, tmp_path):
    config = CONFIGS / "tiny_fc.yaml"
    files = [keras_folder / f"ckpt-{s}.weights.h5" for s in (0, 10, 20, 30, 40)]
    renamed = tmp_path / "final.weights.h5"
    shutil.copy(files[1], renamed)
    junk = tmp_path / "ckpt-50.weights.h5"
    junk.write_text("not a checkpoint")
    wider = load_config(config, ["model.hidden_units=[32]"])
    keras_checkpoints(wider, {1: np.zeros(2410, np.float32)}, tmp_path / "wider")
    cases = {
        "missing": ([files[0], files[1], files[3], files[4]], "step 20 is missing"),
        "duplicate": ([files[0], files[1], files[1]], "step 10 twice"),
        "reordered": ([files[0], files[2], files[1]], "comes after", "training order"),
        "no step": ([files[0], renamed], "no step number in its name", "--steps"),
        "not a checkpoint": ([files[0], junk], "ckpt-50.weights.h5: not a checkpoint"),
        "wrong shape": (
            [files[0], tmp_path / "wider" / "ckpt-1.weights.h5"],
            "has shape (64, 32), the model's is (64, 16)",
        ),
    }
    for name, (paths, *expected) in cases.items():
        out = tmp_path / name.replace(" ", "_")
        done = import_run(config, *paths, "--out", out)
        assert done.exit_code == 2, (name, done.output)
        assert_one_line_error(done.stderr, *expected)
        assert not (out / "trajectory.zarr").exists(), name  # nothing left behind
    given = import_run(config, files[0], renamed, "--steps", "0,10", "--out", tmp_path / "given")
    assert given.exit_code == 0, given.output


def test_imported_torch_safetensors_are_the_run_and_allocate_bit_for_bit(trained_runs, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from lca.storage import read_fixed_weights
    from lca.torch.models import parameter_names

    source = tmp_path / "recorded"
    shutil.copytree(trained_runs("tiny_fc", TORCH_FC), source)
    recorded = open_trajectory(source)
    names = parameter_names(recorded.layout_json)
    shapes = [tuple(e["shape"]) for e in recorded.layout_json]
    fixed = {n: torch.from_numpy(v) for n, v in read_fixed_weights(recorded.group) or []}
    folder = tmp_path / "torch"
    folder.mkdir()
    theta = recorded.theta[:]
    for step in range(17):
        parts, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            parts[name] = torch.from_numpy(theta[step, offset : offset + size].reshape(shape))
            offset += size
        save_file({**parts, **fixed}, str(folder / f"step_{step}.safetensors"))
    config_file = tmp_path / "tiny_fc.yaml"
    config_file.write_text(load_config(CONFIGS / "tiny_fc.yaml", list(TORCH_FC)).to_yaml())
    out = tmp_path / "imported"
    done = import_run(config_file, folder, "--out", out)
    assert done.exit_code == 0, done.output
    imported = open_trajectory(out)
    np.testing.assert_array_equal(imported.theta[:], theta)
    assert [n for n, _ in read_fixed_weights(imported.group)] == list(fixed)
    for run_dir in (source, out):
        lca.allocate(run_dir, splits=["train"], progress=False)
    want, got = lca.open_run(source), lca.open_run(out)
    assert got.lca("train")[:].tobytes() == want.lca("train")[:].tobytes()
    assert got.loss("train").tobytes() == want.loss("train").tobytes()
