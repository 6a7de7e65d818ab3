"""The command line: thin over the library, one-line errors, non-zero exits on bad input."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

from lca.cli import main
from lca.storage import open_trajectory

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize(
    ("config", "total", "layers"),
    [
        ("mnist_fc_sgd", "84,060", ["dense_1", "dense_2", "dense_3"]),
        ("mnist_lenet_sgd", "808,970", ["conv_1", "conv_2", "dense_1", "dense_2"]),
        ("cifar_resnet_sgd", "273,066", ["stem", "s1b1_conv1", "s2b1_shortcut", "dense"]),
        ("cifar_allcnn_sgd", "1,371,658", ["conv_1", "conv_9"]),
    ],
)
def test_describe_prints_the_layer_table_and_total(runner, config, total, layers):
    result = runner.invoke(main, ["describe", str(CONFIGS / f"{config}.yaml")])
    assert result.exit_code == 0, result.output
    assert total in result.output
    for layer in layers:
        assert layer in result.output


def test_train_cli_writes_a_run_with_overrides(runner, tmp_path):
    out = tmp_path / "r"
    args = [
        "train",
        str(CONFIGS / "tiny_fc.yaml"),
        "--out",
        str(out),
        "--seed",
        "3",
        "--iterations",
        "12",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "recorded 13 steps" in result.output
    traj = open_trajectory(out)
    assert traj.theta.shape[0] == 13 and traj.attrs["seed"] == 3
    assert "iterations: 12" in (out / "config.yaml").read_text()
    before = traj.theta[:]
    again = runner.invoke(main, args)
    assert again.exit_code == 2
    assert "already exists; pass --overwrite" in again.output
    assert np.array_equal(open_trajectory(out).theta[:], before)  # nothing lost
    assert runner.invoke(main, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "optimizer.lr=0"], "error: optimizer.lr: must be > 0 in "),
        (["--set", "training.epochs=3"], "error: training.epochs: unknown key"),
        (["--set", "data.name=mnist", "--set", "data.path=/nonexistent/mnist.npz"], "data.path"),
        (["--set", "data.name=cifar10", "--set", "data.path=/nonexistent/cifar"], "data.path"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(runner, tmp_path, extra, message):
    result = runner.invoke(
        main, ["train", str(CONFIGS / "tiny_fc.yaml"), "--out", str(tmp_path / "r"), *extra]
    )
    assert_one_line_error(result, message, alone=True)


def test_missing_run_directory(runner, tmp_path):
    for command in ("allocate", "verify-error"):
        result = runner.invoke(main, [command, str(tmp_path / "nope")])
        assert_one_line_error(result, alone=True)


def test_help_lists_the_commands_in_pipeline_order_with_an_example_each():
    from click.testing import CliRunner

    from lca.cli import PIPELINE, main

    text = CliRunner().invoke(main, ["--help"]).output
    section = text.split("Commands, in pipeline order:")[1]
    positions = [section.index(f"\n  {name} ") for name in PIPELINE]
    assert positions == sorted(positions)
    assert set(PIPELINE) == set(main.commands)  # a new command gets its place and example
    for example in PIPELINE.values():
        assert f"$ {example}" in section
