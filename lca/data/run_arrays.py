"""The examples a recorded ``model.fit`` trained on, stored inside its run (``RUN/data.zarr``)."""

from __future__ import annotations

from ..storage import DATA_STORE, RunError, checksummed, location, open_group
from .datasets import Dataset, DatasetError

RUN_ARRAYS = "lca.data:run_arrays"  # the data.builder of data stored inside a run


def run_arrays(run_dir) -> tuple:
    """``data.builder`` of a run that carries its own data (``RUN/data.zarr``).

    ``TrajectoryRecorder(..., train_data=(x, y))`` stores the arrays ``model.fit`` saw, so a
    notebook user needs no data module; the run directory stays movable (nothing absolute).
    """

    try:
        group = open_group(location(run_dir) / DATA_STORE, "r")
    except RunError as exc:
        raise DatasetError(f"{run_dir}: the run's stored data is missing ({exc})") from None
    train = (group["x_train"][...], group["y_train"][...])
    val = (group["x_val"][...], group["y_val"][...]) if "x_val" in group else None
    return train, val


def write_run_arrays(run_dir, dataset: Dataset) -> None:
    """Store a dataset's splits in ``RUN/data.zarr`` (read back by `run_arrays`)."""

    group = open_group(location(run_dir) / DATA_STORE, "w")
    group.attrs["description"] = "the examples model.fit trained on, stored by the recorder"
    parts = {"x_train": dataset.x_train, "y_train": dataset.y_train}
    if len(dataset.y_val):
        parts |= {"x_val": dataset.x_val, "y_val": dataset.y_val}
    for name, values in parts.items():
        dims = ("example",) + tuple(f"{name[0]}_{i}" for i in range(1, values.ndim))
        group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            dimension_names=dims,
            compressors=checksummed(),
        )[...] = values
