"""Datasets: MNIST, CIFAR-10, synthetic, modular and user-built (`datasets`), and the
examples a recorded ``model.fit`` stores inside its run (`run_arrays`).
"""

from .datasets import (
    CIFAR_ARCHIVE,
    CIFAR_BATCHES,
    CIFAR_DIR,
    Dataset,
    DatasetError,
    dataset_from_parts,
    input_spec,
    keras_cache_dir,
    load_builder_dataset,
    load_dataset,
    load_modular,
    make_synthetic,
    modular_pairs,
    pow_mod,
    split_indices,
)
from .run_arrays import (
    RUN_ARRAYS,
    run_arrays,
    write_run_arrays,
)

__all__ = [
    "CIFAR_ARCHIVE",
    "CIFAR_BATCHES",
    "CIFAR_DIR",
    "Dataset",
    "DatasetError",
    "RUN_ARRAYS",
    "dataset_from_parts",
    "input_spec",
    "keras_cache_dir",
    "load_builder_dataset",
    "load_dataset",
    "load_modular",
    "make_synthetic",
    "modular_pairs",
    "pow_mod",
    "run_arrays",
    "split_indices",
    "write_run_arrays",
]
