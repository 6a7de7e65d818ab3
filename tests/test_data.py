"""Dataset loading and the paper's train/val split, all offline on tiny fake files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error

from lca.config import DataConfig, SyntheticConfig
from lca.data import Dataset, DatasetError, load_dataset, make_synthetic, split_indices

CIFAR_PER_BATCH = 20


def synthetic_config(**data: object) -> DataConfig:
    synth = SyntheticConfig(image_shape=[6, 5, 3], num_classes=4, num_examples=120, seed=3)
    return DataConfig(**{"name": "synthetic", "val_size": 30, "synthetic": synth, **data})


# --- synthetic and the split ------------------------------------------------------------


def test_synthetic_is_deterministic_with_right_shapes_dtypes_and_ranges() -> None:
    a, b = load_dataset(synthetic_config()), load_dataset(synthetic_config())
    for field in ("x_train", "y_train", "x_val", "y_val", "train_indices", "val_indices"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes()  # bitwise
    assert a.name == "synthetic" and a.num_classes == 4
    assert a.input_shape == (6, 5, 3)
    assert a.x_train.shape == (90, 6, 5, 3) and a.x_val.shape == (30, 6, 5, 3)
    assert a.x_train.dtype == a.x_val.dtype == np.float32
    assert a.y_train.dtype == a.y_val.dtype == np.int32
    assert a.train_indices.dtype == a.val_indices.dtype == np.int64
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert set(np.unique(np.concatenate([a.y_train, a.y_val]))) == {0, 1, 2, 3}


def test_synthetic_depends_on_seed_and_is_balanced() -> None:
    cfg = SyntheticConfig(num_classes=10, num_examples=600, seed=0)
    x0, y0 = make_synthetic(cfg)
    x1, _ = make_synthetic(SyntheticConfig(num_classes=10, num_examples=600, seed=1))
    assert not np.array_equal(x0, x1)
    assert np.bincount(y0).tolist() == [60] * 10
    assert not np.array_equal(y0, np.arange(600) % 10)  # shuffled, not in class order


def test_synthetic_is_learnable_by_nearest_class_mean() -> None:
    """Class templates must stand out of the noise, or training runs learn nothing."""
    data = load_dataset(DataConfig(name="synthetic", val_size=100))
    flat = data.x_train.reshape(len(data.x_train), -1)
    means = np.stack([flat[data.y_train == k].mean(0) for k in range(data.num_classes)])
    val = data.x_val.reshape(len(data.x_val), -1)
    predicted = ((val[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == data.y_val).mean() > 0.9


def test_split_is_disjoint_sorted_covering_and_matches_the_arrays() -> None:
    data = load_dataset(synthetic_config())
    train, val = data.train_indices, data.val_indices
    assert len(val) == 30 and len(train) == 90
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert not set(train) & set(val)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(120))
    x, y = make_synthetic(synthetic_config().synthetic)
    assert np.array_equal(data.x_train, x[train]) and np.array_equal(data.y_val, y[val])
    assert data.split("train")[0] is data.x_train and data.split("val")[1] is data.y_val
    with pytest.raises(ValueError, match="test"):
        data.split("test")


def test_split_follows_the_seeded_permutation() -> None:
    perm = np.random.default_rng(7).permutation(50)
    train, val = split_indices(50, 10, 7)
    assert np.array_equal(val, np.sort(perm[:10]))
    assert np.array_equal(train, np.sort(perm[10:]))
    assert not np.array_equal(split_indices(50, 10, 8)[1], val)


def test_train_size_keeps_the_first_training_examples() -> None:
    full = load_dataset(synthetic_config())
    small = load_dataset(synthetic_config(train_size=25))
    assert np.array_equal(small.train_indices, full.train_indices[:25])
    assert np.array_equal(small.x_train, full.x_train[:25])
    assert np.array_equal(small.val_indices, full.val_indices)  # validation untouched


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        (synthetic_config(train_size=91), "data.train_size=91"),  # 120 - 30 = 90 available
        (synthetic_config(val_size=120), "data.val_size=120"),  # nothing left to train on
    ],
)
def test_impossible_sizes_are_one_line_errors(cfg: DataConfig, needle: str) -> None:
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(cfg)
    assert_one_line_error(excinfo, needle)


# --- MNIST ------------------------------------------------------------------------------


def write_fake_mnist(path: Path, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.uint8)
    x_test = np.zeros((10, 28, 28), np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=np.zeros(10, np.uint8))
    return x, y


def test_mnist_npz_from_data_path(tmp_path: Path) -> None:
    x, y = write_fake_mnist(tmp_path / "mnist.npz")
    data = load_dataset(DataConfig(name="mnist", path=str(tmp_path / "mnist.npz"), val_size=50))
    train, val = split_indices(200, 50, 0)
    assert np.array_equal(data.train_indices, train) and np.array_equal(data.val_indices, val)
    assert data.input_shape == (28, 28, 1) and data.num_classes == 10
    assert data.x_train.shape == (150, 28, 28, 1) and data.x_val.shape == (50, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    np.testing.assert_array_equal(data.x_val[..., 0], x[val].astype(np.float32) / 255)
    np.testing.assert_array_equal(data.y_train, y[train])
    assert data.x_train.max() <= 1.0 and data.x_train.max() > 0.99  # scaled, not raw bytes


def test_missing_path_is_a_one_line_error_naming_data_path(tmp_path: Path) -> None:
    for name in ("mnist", "cifar10"):
        with pytest.raises(DatasetError) as excinfo:
            load_dataset(DataConfig(name=name, path=str(tmp_path / "nowhere.npz")))
        assert_one_line_error(excinfo, "data.path", "nowhere.npz")


def test_corrupt_mnist_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"PK\x03\x04 this is not\na zip file\n")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(DataConfig(name="mnist", path=str(bad)))
    assert_one_line_error(excinfo, "data.path", str(bad))


def test_failed_mnist_download_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keras = pytest.importorskip("keras")

    def offline(*args: object, **kwargs: object) -> None:
        raise Exception(  # what keras.utils.get_file raises for a URLError
            "URL fetch failure on https://storage.googleapis.com/mnist.npz: None --\n"
            "[Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(DataConfig(name="mnist"))
    assert_one_line_error(
        excinfo, "MNIST not available", "name resolution", "~/.keras/datasets/", "data.path"
    )


def test_synthetic_does_not_import_tensorflow() -> None:
    code = (
        "import sys; from lca.config import DataConfig; from lca.data import load_dataset; "
        "load_dataset(DataConfig(name='synthetic', val_size=100)); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    root = Path(__file__).parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --- CIFAR-10 ---------------------------------------------------------------------------


def fake_cifar_batches() -> dict[str, bytes]:
    """Five pickled batches whose pixels encode (example, channel) so layout is checkable."""
    rng = np.random.default_rng(1)
    batches = {}
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(CIFAR_PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=CIFAR_PER_BATCH)]
        batch = {b"batch_label": f"batch {i}".encode(), b"labels": labels, b"data": data}
        batches[f"data_batch_{i}"] = pickle.dumps(batch)
    return batches


@pytest.fixture
def cifar_sources(tmp_path: Path) -> dict[str, Path]:
    batches = fake_cifar_batches()
    plain = tmp_path / "plain"
    nested = tmp_path / "nested" / "cifar-10-batches-py"
    for folder in (plain, nested):
        folder.mkdir(parents=True)
        for name, blob in batches.items():
            (folder / name).write_bytes(blob)
    (plain / "test_batch").write_bytes(b"never read")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(nested, arcname="cifar-10-batches-py")
    return {"plain": plain, "nested": nested.parent, "archive": archive}


def load_cifar(path: Path, val_size: int = 30) -> Dataset:
    return load_dataset(DataConfig(name="cifar10", path=str(path), val_size=val_size))


def test_cifar_directory_nested_directory_and_tar_agree(cifar_sources: dict[str, Path]) -> None:
    loaded = {kind: load_cifar(path) for kind, path in cifar_sources.items()}
    ref = loaded["plain"]
    assert ref.input_shape == (32, 32, 3) and ref.num_classes == 10
    assert ref.x_train.shape == (70, 32, 32, 3) and ref.x_val.shape == (30, 32, 32, 3)
    assert ref.x_train.dtype == np.float32 and ref.y_train.dtype == np.int32
    for kind in ("nested", "archive"):
        for field in ("x_train", "y_train", "x_val", "y_val", "train_indices"):
            assert np.array_equal(getattr(loaded[kind], field), getattr(ref, field)), kind


def test_cifar_pixels_are_nhwc(cifar_sources: dict[str, Path]) -> None:
    """Row-major CHW rows: channel c, row r, column k sits at c*1024 + r*32 + k."""
    batches = fake_cifar_batches()
    data = load_cifar(cifar_sources["archive"])
    where = {int(i): ("train", p) for p, i in enumerate(data.train_indices)}
    where.update({int(i): ("val", p) for p, i in enumerate(data.val_indices)})
    split, pos = where[2 * CIFAR_PER_BATCH + 7]  # the 8th example of data_batch_3
    x, y = data.split(split)
    batch = pickle.loads(batches["data_batch_3"])
    row = batch[b"data"][7]
    r, k = 5, 11
    for c in range(3):
        assert x[pos, r, k, c] == np.float32(row[c * 1024 + r * 32 + k]) / np.float32(255)
    assert y[pos] == batch[b"labels"][7]


def test_cifar_missing_batch_and_bad_archive_are_one_line_errors(
    cifar_sources: dict[str, Path], tmp_path: Path
) -> None:
    (cifar_sources["plain"] / "data_batch_4").unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_cifar(cifar_sources["plain"])
    assert_one_line_error(excinfo, "data_batch_4", "data.path")

    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(cifar_sources["archive"].read_bytes()[:300])
    with pytest.raises(DatasetError) as excinfo:
        load_cifar(broken)
    assert_one_line_error(excinfo, "broken.tar.gz", "data.path")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as excinfo:
        load_cifar(empty)
    assert_one_line_error(excinfo, "data_batch_1", "data.path")


def test_a_cifar_batch_that_would_run_code_is_refused(
    cifar_sources: dict[str, Path], tmp_path: Path
) -> None:
    """A pickle naming anything but numpy arrays and builtins is not unpickled: no code runs."""
    import shutil

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    bad = tmp_path / "bad"
    shutil.copytree(cifar_sources["plain"], bad)
    (bad / "data_batch_2").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(DatasetError) as excinfo:
        load_cifar(bad)
    assert_one_line_error(excinfo, "data_batch_2", "data.path")
    assert "refusing to load" in str(excinfo.value)
    assert not (tmp_path / "ran").exists()


def test_mnist_from_the_keras_cache_without_its_hash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cached mnist.npz is read directly, even a copy whose bytes Keras would not accept."""
    cache = tmp_path / "datasets"
    cache.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 300).astype(np.uint8)
    np.savez(cache / "mnist.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    data = load_dataset(DataConfig(name="mnist", val_size=50))
    assert data.x_train.shape == (250, 28, 28, 1)
    np.testing.assert_array_equal(data.y_val, y[data.val_indices])


@pytest.mark.parametrize(
    ("operation", "rule"),
    [
        ("add", lambda a, b, p: (a + b) % p),
        ("subtract", lambda a, b, p: (a - b) % p),
        ("divide", lambda a, b, p: next(c for c in range(p) if (c * b) % p == a)),
        ("poly", lambda a, b, p: (a * a + a * b + b * b + a) % p),
    ],
)
def test_modular_data_label_every_pair_and_split_by_fraction(operation, rule) -> None:
    from lca.config import ModularConfig

    p = 11
    cfg = DataConfig(
        name="modular",
        split_seed=3,
        modular=ModularConfig(p=p, operation=operation, train_fraction=0.4),
    )
    data = load_dataset(cfg)
    x = np.concatenate([data.x_train, data.x_val])
    y = np.concatenate([data.y_train, data.y_val])
    pairs = p * (p - 1) if operation == "divide" else p * p  # no division by 0
    assert len(y) == pairs and len({(a, b) for a, b, _ in x.tolist()}) == pairs
    assert (x[:, 2] == p).all() and x.dtype == np.int32 and data.num_classes == p
    for (a, b, _), label in zip(x.tolist(), y.tolist()):
        assert label == rule(a, b, p), (a, b)
    assert len(data.y_train) == round(0.4 * pairs)
    assert not set(data.train_indices) & set(data.val_indices)
    again = load_dataset(cfg)
    np.testing.assert_array_equal(again.x_train, data.x_train)
    other = load_dataset(DataConfig(name="modular", split_seed=4, modular=cfg.modular))
    assert not np.array_equal(other.train_indices, data.train_indices)


def test_modular_config_needs_a_prime_and_a_sequence_model() -> None:
    from lca.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="data.modular.p: must be a prime"):
        config_from_dict({"data": {"name": "modular", "modular": {"p": 12}}})
    with pytest.raises(ConfigError, match="token sequences: the built-in image networks cannot"):
        config_from_dict({"data": {"name": "modular"}})
    with pytest.raises(ConfigError, match="model.name: the transformer reads token sequences"):
        config_from_dict({"model": {"name": "transformer"}, "data": {"name": "mnist"}})
    with pytest.raises(ConfigError, match="model.num_heads: must divide d_model"):
        config_from_dict(
            {
                "model": {"name": "transformer", "d_model": 10, "num_heads": 4},
                "data": {"name": "modular"},
            }
        )
    assert config_from_dict({"model": {"name": "transformer"}, "data": {"name": "modular"}})
