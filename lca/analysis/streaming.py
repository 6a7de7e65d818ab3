"""Streaming a (T, K) LCA array in row blocks: the readers and reducers every measurement shares."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any, Protocol

import numpy as np

from ..layout import GroupSums


class RowSliceable(Protocol):
    """What the streaming functions need: a shape and row slicing into numpy."""

    shape: tuple[int, ...]

    def __getitem__(self, key: slice) -> Any: ...


def jsonable(value: Any) -> Any:
    """Plain Python types for json.dumps(allow_nan=False): NaN and ±inf become None."""
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


class _Result:
    """Mixin: ``to_dict()`` for the result dataclasses."""

    _per_parameter: tuple[str, ...] = ()  # (K,) fields, left out of to_dict() by default

    def to_dict(self, include_per_parameter: bool = False) -> dict[str, Any]:
        """JSON-friendly dict; per-parameter (K,) arrays only on request (they can be huge)."""
        return {
            f.name: jsonable(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if include_per_parameter or f.name not in self._per_parameter
        }


def _blocks(n: int, chunk_rows: int) -> Iterator[tuple[int, int]]:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    for start in range(0, n, chunk_rows):
        yield start, min(n, start + chunk_rows)


def _read(a: RowSliceable, start: int, stop: int) -> np.ndarray:
    block = np.asarray(a[start:stop])
    if block.ndim != 2 or block.shape[0] != stop - start:
        raise ValueError(f"expected a ({stop - start}, K) block, got shape {block.shape}")
    return block


def _shape2(a: RowSliceable) -> tuple[int, int]:
    shape = tuple(a.shape)
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D (rows, K) array, got shape {shape}")
    return int(shape[0]), int(shape[1])


WORK_ELEMENTS = 1 << 21  # elements per piece that is computed on (float64 temporaries: 16 MB)


def _row_groups(a: RowSliceable, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) pieces of ``a`` in order.

    Reads ``chunk_rows`` rows at a time (what suits the store), then hands them on in views
    of at most ``WORK_ELEMENTS`` elements (one row at least), so that the float64 and mask
    temporaries stay small even when a block of 64 rows of 1.4 M parameters is 358 MB.
    """
    rows, K = _shape2(a)
    step = max(1, WORK_ELEMENTS // max(K, 1))
    for start, stop in _blocks(rows, chunk_rows):
        block = _read(a, start, stop)
        for i in range(0, stop - start, step):
            yield start + i, block[i : i + step]


def _stream(a: RowSliceable, chunk_rows: int, accumulators: Sequence[Any]) -> None:
    """One pass over ``a``'s rows feeding every accumulator: one read serves many measures."""
    for start, block in _row_groups(a, chunk_rows):
        for acc in accumulators:
            acc.update(block, start)


class _LayerReducer(GroupSums):
    """Per-row, per-layer sums of a (b, K) block (`lca.layout.GroupSums`), checked
    against the arrays an analysis streams."""

    def __init__(self, layer_index: np.ndarray, num_layers: int, num_params: int) -> None:
        index = np.asarray(layer_index).reshape(-1)
        if index.size != num_params:
            raise ValueError(f"layer_index has {index.size} entries, arrays have {num_params}")
        if index.size and (index.min() < 0 or index.max() >= num_layers):
            raise ValueError(f"layer_index values must lie in [0, {num_layers})")
        super().__init__(index, num_layers)
        self.L = self.num_groups


def _check_layers(num_layers: int) -> None:
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
