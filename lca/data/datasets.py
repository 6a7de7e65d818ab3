"""Datasets as in the paper: MNIST, CIFAR-10 and an offline synthetic set, split train/val.

The paper holds a validation set out of the *source training set* (the test set is never
used), so every loader returns only the source training examples, and `load_dataset`
splits them with a seeded permutation. The recorded ``train_indices`` let a later
``lca allocate`` check that it sees exactly the data the run was trained on.

TensorFlow/Keras is imported only inside the download fallbacks, so synthetic runs and
local files never pay for it.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig, ModularConfig, SyntheticConfig
from ..locations import location

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

_MNIST_HINT = "put mnist.npz in ~/.keras/datasets/ or set data.path in the config"
_CIFAR_HINT = (
    f"set data.path in the config to {CIFAR_ARCHIVE} or to its extracted {CIFAR_DIR} directory"
)


class DatasetError(RuntimeError):
    """One-line message for a missing/broken dataset."""


@dataclass
class Dataset:
    """The split arrays; indices are positions in the source training set, for provenance."""

    name: str
    x_train: np.ndarray  # float32 (N_train, H, W, C) pixels in [0, 1]; int32 tokens (modular)
    y_train: np.ndarray  # int32, (N_train,)
    x_val: np.ndarray  # float32, (N_val, H, W, C)
    y_val: np.ndarray  # int32, (N_val,)
    train_indices: np.ndarray  # int64, positions of the train examples in the source set
    val_indices: np.ndarray  # int64, positions of the val examples in the source set
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (H, W, C) for images, as the model builders want it."""
        return tuple(int(s) for s in self.x_train.shape[1:])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the ``"train"`` or ``"val"`` split."""
        if name == "train":
            return self.x_train, self.y_train
        if name == "val":
            return self.x_val, self.y_val
        raise ValueError(f"unknown split {name!r} (expected 'train' or 'val')")


def load_dataset(cfg: DataConfig, run_dir=None) -> Dataset:
    """Load ``cfg.name`` and split it as the paper does; every failure is a DatasetError.

    ``run_dir`` is handed to a ``data.builder`` that takes a ``run_dir`` argument (data
    stored inside the run, such as `lca.data.run_arrays.run_arrays`).
    """
    if cfg.builder is not None:
        return load_builder_dataset(cfg, run_dir)
    if cfg.name == "mnist":
        x, y = _load_mnist(cfg.path)
        num_classes = 10
    elif cfg.name == "cifar10":
        x, y = _load_cifar10(cfg.path)
        num_classes = 10
    elif cfg.name == "synthetic":
        x, y = make_synthetic(cfg.synthetic)
        num_classes = cfg.synthetic.num_classes
    elif cfg.name == "modular":
        return load_modular(cfg)
    else:
        raise DatasetError(
            f"unknown dataset {cfg.name!r} (data.name: mnist, cifar10, synthetic, modular)"
        )
    if y.min(initial=0) < 0 or y.max(initial=0) >= num_classes:
        raise DatasetError(f"{cfg.name}: labels outside 0..{num_classes - 1}; is data.path right?")

    train_idx, val_idx = split_indices(len(y), cfg.val_size, cfg.split_seed, cfg.train_size)
    return Dataset(
        name=cfg.name,
        x_train=_to_float(x[train_idx]),
        y_train=y[train_idx].astype(np.int32),
        x_val=_to_float(x[val_idx]),
        y_val=y[val_idx].astype(np.int32),
        train_indices=train_idx,
        val_indices=val_idx,
        num_classes=num_classes,
    )


def load_builder_dataset(cfg: DataConfig, run_dir=None) -> Dataset:
    """The data of ``data.builder: "module:function"``, called with ``data.kwargs``.

    The function returns ``(train, val)``, each ``(x, y)`` numpy arrays or a ``tf.data.Dataset``
    of ``(x, y)`` (batched or not); ``val`` may be None (then allocate only ``train``). It is
    the user's split: ``val_size``, ``split_seed`` and ``train_size`` do not apply. Integer
    labels count classes (``num_classes`` = largest label + 1); float targets are regression
    targets (``num_classes`` = 0). A dataset is read twice and must give bitwise the same
    examples in the same order: shuffling or augmentation would make the loss that LCA
    integrates change from one evaluation to the next.
    """
    import inspect

    from ..config import ModelError, import_function

    try:
        fn = import_function(cfg.builder, "data.builder")
    except ModelError as exc:
        raise DatasetError(str(exc)) from None
    kwargs = dict(cfg.kwargs)
    if "run_dir" in inspect.signature(fn).parameters:
        if run_dir is None:
            raise DatasetError(f"data.builder: {cfg.builder} reads data stored in a run directory")
        kwargs["run_dir"] = run_dir
    return dataset_from_parts(fn(**kwargs), cfg.builder)


def dataset_from_parts(out, builder: str) -> Dataset:
    """A Dataset from ``(train, val)`` as a data builder returns them (see above)."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise DatasetError(
            f"data.builder: {builder} must return (train, val), each (x, y) or a "
            f"tf.data.Dataset; got {type(out).__name__}"
        )
    (x_train, y_train), val = (_split_arrays(out[0], "train", builder), out[1])
    if val is None:
        x_val, y_val = x_train[:0], y_train[:0]
    else:
        x_val, y_val = _split_arrays(val, "val", builder)
    if len(y_train) == 0:
        raise DatasetError(f"data.builder: {builder} returned an empty training set")
    if x_val.shape[1:] != x_train.shape[1:] or y_val.shape[1:] != y_train.shape[1:]:
        raise DatasetError(
            f"data.builder: train and val shapes differ ({x_train.shape[1:]} vs {x_val.shape[1:]})"
        )
    classes = 0
    if np.issubdtype(y_train.dtype, np.integer):
        labels = np.concatenate([y_train.reshape(-1), y_val.reshape(-1)])
        if labels.min() < 0:
            raise DatasetError(f"data.builder: {builder} returned negative labels")
        classes = int(labels.max()) + 1
        y_train, y_val = y_train.astype(np.int32), y_val.astype(np.int32)
    return Dataset(
        name=builder,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        train_indices=np.arange(len(y_train), dtype=np.int64),
        val_indices=np.arange(len(y_val), dtype=np.int64),
        num_classes=classes,
    )


def _split_arrays(part, split: str, builder: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays of one returned split; a tf.data.Dataset is read twice and compared."""
    if isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = (np.asarray(a) for a in part)
    elif hasattr(part, "as_numpy_iterator"):  # a tf.data.Dataset
        x, y = _read_dataset(part, split, builder)
        again = _read_dataset(part, split, builder)
        if not (np.array_equal(x, again[0]) and np.array_equal(y, again[1])):
            raise DatasetError(
                f"data.builder: the {split} tf.data.Dataset of {builder} gives other examples "
                "on a second pass (shuffle or random augmentation?); LCA needs a fixed set: "
                "remove them from the dataset"
            )
    else:
        raise DatasetError(
            f"data.builder: {split} must be (x, y) arrays or a tf.data.Dataset, "
            f"got {type(part).__name__}"
        )
    if len(x) != len(y):
        raise DatasetError(f"data.builder: {split} has {len(x)} inputs but {len(y)} targets")
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        x = x.astype(np.float32)
    if np.issubdtype(y.dtype, np.floating) and y.dtype != np.float32:
        y = y.astype(np.float32)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _read_dataset(ds, split: str, builder: str) -> tuple[np.ndarray, np.ndarray]:
    """All (x, y) of a dataset as two arrays; batched datasets are concatenated."""
    xs, ys = [], []
    for element in ds.as_numpy_iterator():
        if not isinstance(element, tuple) or len(element) != 2:
            raise DatasetError(
                f"data.builder: the {split} dataset of {builder} must yield (x, y) pairs"
            )
        xs.append(np.asarray(element[0]))
        ys.append(np.asarray(element[1]))
    if not xs:
        raise DatasetError(f"data.builder: the {split} dataset of {builder} is empty")
    batched = len(ds.element_spec[0].shape) > 0 and ds.element_spec[0].shape[0] is None
    if batched:
        return np.concatenate(xs), np.concatenate(ys)
    return np.stack(xs), np.stack(ys)


def input_spec(cfg: DataConfig) -> tuple[tuple[int, ...], int]:
    """Input shape and class count of a dataset, without loading it (for ``lca describe``)."""
    if cfg.name == "modular":
        return (3,), cfg.modular.p
    if cfg.name == "synthetic":
        h, w, c = cfg.synthetic.image_shape
        return (h, w, c), cfg.synthetic.num_classes
    return {"mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10)}[cfg.name]


def split_indices(
    n: int, val_size: int, seed: int, train_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) positions: a seeded permutation's head is validation."""
    if not 0 < val_size < n:
        raise DatasetError(
            f"data.val_size={val_size} must be between 1 and {n - 1}: the dataset has {n} examples"
        )
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    val = np.sort(perm[:val_size])
    train = np.sort(perm[val_size:])
    if train_size is not None:
        if not 0 < train_size <= len(train):
            raise DatasetError(
                f"data.train_size={train_size} must be between 1 and {len(train)}: "
                f"{n} examples minus data.val_size={val_size}"
            )
        train = train[:train_size]
    return train, val


def make_synthetic(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of one random template per class; same config -> identical arrays."""
    h, w, c = cfg.image_shape
    rng = np.random.default_rng(cfg.seed)
    templates = rng.uniform(0.0, 1.0, size=(cfg.num_classes, h, w, c))
    y = rng.permutation(np.arange(cfg.num_examples) % cfg.num_classes)
    noise = rng.standard_normal(size=(cfg.num_examples, h, w, c))
    x = np.clip(templates[y] + cfg.noise * noise, 0.0, 1.0)
    return x.astype(np.float32), y.astype(np.int32)


def modular_pairs(cfg: ModularConfig) -> tuple[np.ndarray, np.ndarray]:
    """All pairs as int32 tokens ``[a, b, =]`` (``=`` is token p) and their labels a ∘ b mod p."""
    p = cfg.p
    a, b = (g.reshape(-1).astype(np.int64) for g in np.meshgrid(np.arange(p), np.arange(p)))
    if cfg.operation == "divide":
        a, b = a[b != 0], b[b != 0]
        y = a * pow_mod(b, p - 2, p) % p  # Fermat: b^(p-2) is b's inverse mod a prime p
    else:
        y = {
            "add": a + b,
            "subtract": a - b,
            "poly": a * a + a * b + b * b + a,
        }[cfg.operation] % p
    x = np.stack([a, b, np.full_like(a, p)], axis=1)
    return x.astype(np.int32), y.astype(np.int32)


def pow_mod(base: np.ndarray, exponent: int, modulus: int) -> np.ndarray:
    """Elementwise ``base ** exponent % modulus`` in int64, by squaring."""
    result = np.ones_like(base)
    base = base % modulus
    while exponent:
        if exponent & 1:
            result = result * base % modulus
        base = base * base % modulus
        exponent >>= 1
    return result


def load_modular(cfg: DataConfig) -> Dataset:
    """The modular-arithmetic set: ``train_fraction`` of the pairs (``split_seed``) train."""
    x, y = modular_pairs(cfg.modular)
    n_train = round(cfg.modular.train_fraction * len(y))
    if not 0 < n_train < len(y):
        raise DatasetError(
            f"data.modular.train_fraction={cfg.modular.train_fraction} leaves no training or "
            f"no validation pair of {len(y)}"
        )
    perm = np.random.default_rng(cfg.split_seed).permutation(len(y)).astype(np.int64)
    train, val = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    return Dataset(
        name="modular",
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        train_indices=train,
        val_indices=val,
        num_classes=cfg.modular.p,
    )


# --- MNIST ------------------------------------------------------------------------------


def _load_mnist(path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Source training set, (N, 28, 28, 1) uint8 and labels, from data.path or Keras."""
    cached = keras_cache_dir() / "mnist.npz"
    if path is None and cached.is_file():
        # Read the cached copy ourselves: Keras insists on its own file hash and would try to
        # download again over a copy rebuilt elsewhere (e.g. on a machine without internet).
        path = str(cached)
    if path is not None:
        file = location(path)  # a local file or a URL (s3://…/mnist.npz)
        if not file.is_file():
            raise DatasetError(f"MNIST file not found: {file}; fix data.path in the config")
        try:
            with file.open("rb") as handle:
                if not zipfile.is_zipfile(handle):  # np.load would call it "pickled data"
                    raise DatasetError(
                        f"MNIST file {file} is not an .npz archive; fix data.path in the config"
                    )
                handle.seek(0)
                with np.load(handle, allow_pickle=False) as f:
                    x, y = f["x_train"], f["y_train"]
        except DatasetError:
            raise
        except Exception as exc:  # a zip, key or format error: all mean "not mnist.npz"
            raise DatasetError(
                f"MNIST file {file} is not a readable mnist.npz ({_one_line(exc)}); "
                "fix data.path in the config"
            ) from None
        where = str(file)
    else:
        (x, y), _ = _keras_download("mnist", "MNIST", _MNIST_HINT)
        where = "the Keras cache (~/.keras/datasets/mnist.npz)"
    x, y = np.asarray(x), np.asarray(y).reshape(-1)
    if x.ndim != 3 or x.dtype != np.uint8 or len(x) != len(y):
        raise DatasetError(
            f"MNIST in {where} has x_train {x.dtype} {x.shape} and y_train {y.shape}, "
            "expected uint8 (N, H, W) and (N,)"
        )
    return x[..., None], y


# --- CIFAR-10 ---------------------------------------------------------------------------


def _load_cifar10(path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Source training set (50000, 32, 32, 3) uint8 and labels, from data.path or Keras."""
    if path is None:
        (x, y), _ = _keras_download("cifar10", "CIFAR-10", _CIFAR_HINT)
        x, y = np.asarray(x), np.asarray(y).reshape(-1)
        if x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] != 3:  # channels_first Keras
            x = x.transpose(0, 2, 3, 1)
        if x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y):
            raise DatasetError(
                f"CIFAR-10 from the Keras cache has x_train {x.dtype} {x.shape}, expected uint8 "
                f"(N, 32, 32, 3); delete ~/.keras/datasets/cifar-10-batches-py* or {_CIFAR_HINT}"
            )
        return x, y

    source = location(path)  # a local path or a URL
    if source.is_dir():
        for candidate in (source, source / CIFAR_DIR):
            if (candidate / CIFAR_BATCHES[0]).is_file():
                return _read_batches(
                    str(candidate), lambda name, d=candidate: (d / name).read_bytes()
                )
        if (source / CIFAR_ARCHIVE).is_file():
            return _load_cifar_archive(source / CIFAR_ARCHIVE)
        raise DatasetError(
            f"CIFAR-10 not found in {source}: expected {CIFAR_BATCHES[0]}, {CIFAR_DIR}/ or "
            f"{CIFAR_ARCHIVE} there; {_CIFAR_HINT}"
        )
    if source.is_file():
        return _load_cifar_archive(source)
    raise DatasetError(f"CIFAR-10 path not found: {source}; {_CIFAR_HINT}")


def _load_cifar_archive(archive) -> tuple[np.ndarray, np.ndarray]:
    """Read the batches straight out of the tar (no extraction to disk)."""
    try:
        with archive.open("rb") as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
            members = {}
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in CIFAR_BATCHES:
                    members.setdefault(base, member)

            def read(name: str) -> bytes:
                if name not in members:
                    raise FileNotFoundError(f"{CIFAR_DIR}/{name} not in the archive")
                handle = tar.extractfile(members[name])
                assert handle is not None  # isfile() members always have a handle
                return handle.read()

            return _read_batches(str(archive), read)
    except DatasetError:
        raise
    except Exception as exc:  # not a tar, truncated gzip, I/O error
        raise DatasetError(
            f"CIFAR-10 archive {archive} cannot be read ({_one_line(exc)}); {_CIFAR_HINT}"
        ) from None


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, lists, dicts, bytes and numbers, nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("copyreg", "_reconstructor"),
        ("copy_reg", "_reconstructor"),  # the official files are Python 2 pickles
        ("builtins", "object"),
        ("__builtin__", "object"),
        ("_codecs", "encode"),  # bytes in protocol 2 written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays and lists"
            )
        return super().find_class(module, name)


def _read_batches(where: str, read: Callable[[str], bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle data_batch_1..5 (CHW rows) into NHWC uint8 images and labels."""
    xs, ys = [], []
    for name in CIFAR_BATCHES:
        try:
            # The official CIFAR-10 release is pickled: unpickle numpy arrays and builtins only,
            # so a data.path from someone else's config cannot run code
            batch = _ArraysOnly(io.BytesIO(read(name)), encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"]).reshape(-1)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
                raise ValueError(f"data {data.shape} and labels {labels.shape}")
        except Exception as exc:
            raise DatasetError(
                f"CIFAR-10 batch {name} in {where} is missing or unreadable "
                f"({_one_line(exc)}); {_CIFAR_HINT}"
            ) from None
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


# --- helpers ----------------------------------------------------------------------------


def keras_cache_dir() -> Path:
    """Where Keras caches datasets: ``$KERAS_HOME/datasets``, by default ~/.keras/datasets."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


def _keras_download(module: str, title: str, hint: str):
    """``keras.datasets.<module>.load_data()``, any failure turned into one DatasetError."""
    try:
        import keras

        return getattr(keras.datasets, module).load_data()
    except Exception as exc:  # Keras raises a bare Exception for URL/HTTP failures
        raise DatasetError(
            f"{title} not available: download failed ({_one_line(exc)}) and no local copy; {hint}"
        ) from None


def _to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]; float (synthetic) input is in [0, 1] already."""
    if np.issubdtype(x.dtype, np.floating):
        return np.ascontiguousarray(x, dtype=np.float32)
    return x.astype(np.float32) / np.float32(255)


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as a short single line, for embedding in a DatasetError message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
