"""Config files: every shipped one loads, and every kind of mistake is a one-line error."""

from pathlib import Path

import pytest
from helpers import assert_one_line_error

from lca.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
PAPER = {  # name: (model, dataset, optimizer, lr, momentum, iterations)
    "mnist_fc_sgd_nomom": ("fc", "mnist", "sgd", 0.5, 0.0, 880),
    "mnist_fc_sgd": ("fc", "mnist", "sgd", 0.05, 0.9, 880),
    "mnist_fc_adam": ("fc", "mnist", "adam", 0.002, None, 880),
    "mnist_lenet_sgd": ("lenet", "mnist", "sgd", 0.02, 0.9, 880),
    "mnist_lenet_adam": ("lenet", "mnist", "adam", 0.002, None, 880),
    "cifar_resnet_sgd": ("resnet20", "cifar10", "sgd", 0.1, 0.9, 5000),
    "cifar_resnet_adam": ("resnet20", "cifar10", "adam", 0.005, None, 5000),
    "cifar_allcnn_sgd": ("allcnn", "cifar10", "sgd", 0.1, 0.9, 5000),
    "cifar_allcnn_adam": ("allcnn", "cifar10", "adam", 0.001, None, 5000),
}


def test_every_shipped_config_loads():
    names = {p.stem for p in CONFIGS}
    assert set(PAPER) <= names
    for path in CONFIGS:
        config = load_config(path)
        assert config.name == path.stem


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_setups_match_the_supplement(name):
    model, dataset, optimizer, lr, momentum, iterations = PAPER[name]
    config = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert (config.model.name, config.data.name, config.optimizer.name) == (
        model,
        dataset,
        optimizer,
    )
    assert config.optimizer.lr == lr
    if momentum is not None:
        assert config.optimizer.momentum == momentum
    assert config.training.iterations == iterations
    assert config.training.batch_size == 250
    assert config.data.val_size == 5000


def test_section4_configs_express_freezing_lr_and_momentum():
    root = Path(__file__).parents[1] / "configs"
    assert (
        load_config(root / "cifar_resnet_sgd_last_frozen.yaml")
        .optimizer.layers["dense"]
        .freeze_from
        == 0
    )
    assert load_config(root / "cifar_resnet_sgd_last_lr_div10.yaml").optimizer.layers[
        "dense"
    ].lr == pytest.approx(0.01)
    assert (
        load_config(root / "cifar_resnet_sgd_first_frozen.yaml")
        .optimizer.layers["stem"]
        .freeze_from
        == 0
    )
    swept = load_config(
        root / "cifar_resnet_sgd_last_momentum.yaml", ["optimizer.layers.dense.momentum=0.75"]
    )
    assert swept.optimizer.layers["dense"].momentum == 0.75


def _write(tmp_path, text):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optimizer: {lr: 0}", "optimizer.lr: must be > 0 in "),
        ("optimizer: {lr: -1.0}", "optimizer.lr: must be > 0 in "),
        ("optimizer: {learning_rate: 0.1}", "optimizer.learning_rate: unknown key"),
        ("model: {name: vgg}", "model.name: must be one of fc, lenet, resnet20, allcnn"),
        ("training: {iterations: ten}", "training.iterations: must be an integer"),
        ("training: {iterations: 2.5}", "training.iterations: must be an integer"),
        ("training: {batch_size: 0}", "training.batch_size: must be > 0"),
        ("optimizer: {momentum: 1.0}", "optimizer.momentum: must be in [0, 1)"),
        ("allocate: {max_intervals: 12}", "allocate.max_intervals: must be a power of two"),
        ("allocate: {splits: [train, test]}", "allocate.splits[1]: must be one of train, val"),
        ("allocate: {threshold: 0}", "allocate.threshold: must be > 0"),
        ("data: {name: imagenet}", "data.name: must be one of mnist, cifar10, synthetic"),
        ("data: {synthetic: {image_shape: [8, 8]}}", "data.synthetic.image_shape: must be"),
        ("optimizer: {layers: {dense_1: {lr: -0.1}}}", "optimizer.layers.dense_1.lr: must be >= 0"),
        ("optimizer: {layers: {dense_1: {speed: 1}}}", "optimizer.layers.dense_1.speed: unknown"),
        (
            "optimizer: {name: adam, layers: {dense_1: {momentum: 0.5}}}",
            "optimizer.layers.dense_1.momentum: only applies to sgd",
        ),
        ("training: [1, 2]", "training: must be a mapping"),
        ("colour: blue", "colour: unknown key"),
        ("model: {name: fc\n", "not valid YAML"),
    ],
)
def test_invalid_configs_give_one_line_errors(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line_error(info, message, str(path))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_validated_like_the_file(tmp_path):
    path = _write(tmp_path, "optimizer: {lr: 0.1}")
    assert load_config(path, ["optimizer.lr=0.5"]).optimizer.lr == 0.5
    assert load_config(path, ["data.path=/tmp/m.npz"]).data.path == "/tmp/m.npz"
    with pytest.raises(ConfigError, match="optimizer.lr: must be > 0"):
        load_config(path, ["optimizer.lr=0"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(path, ["optimizer.lr"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config(Path(__file__).parents[1] / "configs" / "tiny_fc.yaml")
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    again = load_config(path)
    assert again == config
