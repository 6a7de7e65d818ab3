"""scripts/torch_mnist/: a plain torch loop recorded, then allocate, verify-error and report.

The example runs as a user runs it (a fresh process, ``--synthetic``: small random images
instead of MNIST), and the run it leaves conserves the loss, read from the stores.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import cli_env

torch = pytest.importorskip("torch")

import lca  # noqa: E402

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "scripts" / "torch_mnist" / "run_example.py"


def test_torch_example_records_allocates_verifies_and_reports(tmp_path):
    out = tmp_path / "torch_mnist"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--synthetic", "--out", str(out), "--frames", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASS: every iteration within the threshold" in done.stdout
    assert "wall time: train" in done.stdout
    assert (out / "report" / "report.md").is_file()

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["framework"] == "torch"
    assert config["model"]["builder"] == "cnn:build"  # rebuilt from the user's module
    run = lca.open_run(out)
    assert run.layout.layers == ["conv1", "conv2", "fc1", "fc2"]
    for split in ("train", "val"):
        loss = run.loss(split)
        sums = run.lca(split)[:].sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(sums + run.error(split), np.diff(loss), rtol=0, atol=1e-9)
        assert np.all(np.abs(run.error(split)) < 1e-3)
        assert abs(sums.sum() - (loss[-1] - loss[0])) < 1e-2 * abs(loss[-1] - loss[0])
    assert run.loss("train")[-1] < run.loss("train")[0] - 0.2  # it learned
    batches = run.trajectory.group["batch_indices"][:]
    assert batches.shape == (20, 30) and (batches >= 0).all()  # recorder.batch every step
