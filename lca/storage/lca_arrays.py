"""The arrays of ``lca.zarr``, described once.

`LCA_ARRAYS` is the one table of them: name, whose rows (a step, an iteration, a block
of iterations), shape after the first axis, dtype, fill value, dimension names, the settings
that ask for it and the names older stores gave it. Creating the store, a block's in-memory
buffers, the rows a block writes, the readers and the table on the storage page
(`markdown_table`) all read it.

Shapes are written in symbols so that the page can show them as they are: ``K`` parameters,
``L`` layer groups, ``U`` units of one layer, ``C`` classes, ``terms`` terms of the
optimiser's step. An array named with ``{layer}`` is one array per layer group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import zarr

from ..layout import ParameterLayout
from .groups import checksummed

#: What an array's first axis counts: ``step`` the T+1 points θ_0 … θ_T, ``iteration`` the T
#: updates, ``block`` the blocks of ``block_iterations`` iterations, ``example`` the examples
#: of the train subset.
PER = ("step", "iteration", "block", "example")
#: The first axis's dimension name.
FIRST_DIMENSION = {
    "step": "step",
    "iteration": "iteration",
    "block": "block",
    "example": "subset_example",
}


class StoreSettings(Protocol):
    """The allocation settings the table reads (``lca.allocation.AllocationSettings``)."""

    store: str
    store_grad: bool
    per_class: bool
    per_class_full: bool
    subset_size: int | None
    check_every: int | None
    causes: bool

    @property
    def reduced_precision(self) -> bool: ...


@dataclass(frozen=True)
class StoreSizes:
    """The sizes the symbols of the table's shapes stand for, and the facts of a run that
    decide which arrays a store holds beside its settings."""

    settings: StoreSettings
    iterations: int  # T
    params: int  # K
    layers: tuple[str, ...]
    units: Mapping[str, int]  # units of each layer group
    classes: int  # C
    block_iterations: int
    terms: int = 0  # terms of the optimiser's step (``causes`` only)
    carries_state: bool = False  # the replay needs a state at every block's start (Adam)
    subset_size: int = 0

    @classmethod
    def of_run(
        cls,
        settings: StoreSettings,
        layout_json: list[dict],
        iterations: int,
        classes: int,
        block_iterations: int,
        terms: int = 0,
        carries_state: bool = False,
    ) -> StoreSizes:
        """The sizes of a run's store from its trajectory's layout and attributes."""
        layout = ParameterLayout.from_json(layout_json)
        units = {layer: count for layer, (_, _, count) in layout.unit_index().items()}
        return cls(
            settings,
            iterations,
            layout.total,
            tuple(layout.layers),
            units,
            classes,
            block_iterations,
            terms,
            carries_state,
            settings.subset_size or 0,
        )

    @property
    def blocks(self) -> int:
        return -(-self.iterations // self.block_iterations)

    def size(self, symbol: str | int, layer: str | None) -> int:
        """The number a shape symbol stands for (``U``: the units of ``layer``)."""
        if isinstance(symbol, int):
            return symbol
        if symbol == "U":
            return int(self.units[layer])
        return {"K": self.params, "L": len(self.layers), "C": self.classes, "terms": self.terms}[
            symbol
        ]

    def first_axis(self, per: str) -> int:
        return {
            "step": self.iterations + 1,
            "iteration": self.iterations,
            "block": self.blocks,
            "example": self.subset_size,
        }[per]


@dataclass(frozen=True)
class ArraySpec:
    """One array (or, with ``{layer}`` in its name, one array per layer group) of lca.zarr."""

    name: str  # path inside its group; ``{layer}``: one per layer group
    per: str  # one of PER
    trailing: tuple[str | int, ...]  # shape after the first axis, in symbols
    dtype: str
    fill: Any
    dims: tuple[str, ...]  # names of the trailing dimensions; ``{layer}`` as in ``name``
    meaning: str  # what the storage page says of it
    when: Callable[[StoreSizes], bool] = lambda sizes: True
    condition: str = ""  # ``when`` in words, for the storage page
    where: str = "split"  # ``split``: every split's group; ``train``: the train split's; ``root``
    legacy_names: tuple[str, ...] = ()  # what older stores call it (read, never written)
    attrs: Mapping[str, str] = field(default_factory=dict)
    written_at_creation: bool = False  # every chunk written (at the fill): none reads as lost
    #: what fills its rows: ``quadrature`` a block's walk along its steps, ``level`` the store
    #: level's sums of A, ``causes`` the replay of the optimiser, ``check`` the full-set check,
    #: ``store`` the store itself (at creation, or a block's ``done`` flag)
    computed: str = "quadrature"

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.name

    def arrays(self, sizes: StoreSizes) -> Iterator[tuple[str, tuple[int, ...], tuple[str, ...]]]:
        """(name, full shape, dimension names) of every array this entry stands for."""
        for layer in sizes.layers if self.per_layer else (None,):
            trailing = tuple(sizes.size(s, layer) for s in self.trailing)
            dims = tuple(d.format(layer=layer) for d in self.dims)
            first = FIRST_DIMENSION[self.per]
            yield (
                self.name.format(layer=layer),
                (sizes.first_axis(self.per), *trailing),
                (first, *dims),
            )


def block_rows(per: str, start: int, stop: int, iterations: int, block: int) -> slice:
    """The rows of an array that the block of iterations start … stop−1 writes.

    An iteration array's rows are the block's iterations; a step array's the steps start …
    stop−1, and also step T for the last block; a block array's the block's own row.
    """
    if per == "block":
        return slice(block, block + 1)
    if per == "step" and stop == iterations:
        return slice(start, stop + 1)
    return slice(start, stop)


def _level(*levels: str) -> Callable[[StoreSizes], bool]:
    return lambda sizes: sizes.settings.store in levels


def _per_class(sizes: StoreSizes) -> bool:
    return sizes.settings.per_class


def _checked(sizes: StoreSizes) -> bool:
    return sizes.settings.check_every is not None


def _causes(sizes: StoreSizes) -> bool:
    return sizes.settings.causes


_PER_CLASS = "`per_class` only ([per-class LCA](case-studies/per-class.md))"
_CHECKED = "`subset_size` with `check_every` only ([subsets](accuracy.md#subsets))"
_CAUSES = "`causes` only"
_CAUSE_DIMS = ("term", "part")

#: ``subset_check/`` scalars of every checked iteration: name → meaning.
CHECK_SCALARS = {
    "correlation": "Pearson correlation of the subset's and the full set's A[t, i]",
    "sign_agreement": "share of the parameters with a full-set A ≠ 0 whose signs agree",
    "helped_error": "% helped on the subset − % helped on the full set (percentage points)",
    "full_loss_change": "L_full(θ_t+1) − L_full(θ_t)",
    "full_error": "`full_loss_change` − Σ_i A_full[t, i]",
}

#: The arrays of ``lca.zarr``, in the order the storage page lists them.
# fmt: off
LCA_ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec(
        "lca", "iteration", ("K",), "float32", np.nan, ("parameter",), "A[t, i]",
        when=_level("parameters"), condition="`store: parameters` (the default)",
        computed="level",
    ),
    ArraySpec(
        "unit_lca/{layer}", "iteration", ("U",), "float64", np.nan, ("{layer}_unit",),
        "Σ A[t, i] over the parameters of each unit",
        when=_level("units"), condition="`store: units`", computed="level",
    ),
    ArraySpec(
        "layer_lca", "iteration", ("L",), "float64", np.nan, ("layer",),
        "Σ A[t, i] over the parameters of each layer",
        when=_level("units", "layers"), condition="`store: units` or `layers`",
        computed="level",
    ),
    ArraySpec("loss", "step", (), "float64", np.nan, (), "L(θ_t) over the whole split"),
    ArraySpec(
        "grad", "step", ("K",), "float32", np.nan, ("parameter",),
        "∇L(θ_t) over the whole split",
        when=lambda sizes: sizes.settings.store_grad, condition="not with `store_grad: false`",
    ),
    ArraySpec(
        "intervals", "iteration", (), "int32", 0, (),
        "sub-intervals the accepted rule used (1: the trapezoid; 2, 4, …: Simpson)",
        legacy_names=("splits",),
    ),
    ArraySpec(
        "error", "iteration", (), "float64", np.nan, (),
        "(L(θ_t+1) − L(θ_t)) − Σ_i A[t, i] for the rule used",
    ),
    ArraySpec(
        "error_fo", "iteration", (), "float64", np.nan, (),
        "the same for the first-order estimate Σ_i Δθ_i ∇_iL(θ_t)",
    ),
    ArraySpec(
        "fallback", "iteration", (), "bool", False, (),
        "the iteration was recomputed in float32",
        when=lambda sizes: sizes.settings.reduced_precision,
        condition="reduced `precision` only",
    ),
    ArraySpec(
        "class_loss", "step", ("C",), "float64", np.nan, ("class",),
        "L_c(θ_t): the loss of each class's examples, divided by the split's size",
        when=_per_class, condition=_PER_CLASS,
    ),
    ArraySpec(
        "class_error", "iteration", ("C",), "float64", np.nan, ("class",),
        "each class's (L_c(θ_t+1) − L_c(θ_t)) − Σ_i A_c[t, i]",
        when=_per_class, condition=_PER_CLASS,
    ),
    ArraySpec(
        "class_layer_lca", "iteration", ("C", "L"), "float32", np.nan, ("class", "layer"),
        "Σ A_c[t, i] over each layer",
        when=_per_class, condition=_PER_CLASS,
    ),
    ArraySpec(
        "class_unit_lca/{layer}", "iteration", ("C", "U"), "float32", np.nan,
        ("class", "{layer}_unit"),
        "Σ A_c[t, i] over each unit",
        when=_per_class, condition=_PER_CLASS,
    ),
    ArraySpec(
        "class_lca", "iteration", ("C", "K"), "float32", np.nan, ("class", "parameter"),
        "A_c[t, i]: each class's share of A[t, i]",
        when=lambda sizes: sizes.settings.per_class and sizes.settings.per_class_full,
        condition="`per_class_full` only",
    ),
    ArraySpec(
        "causes/layer", "iteration", ("terms", 2, "L"), "float64", np.nan,
        (*_CAUSE_DIMS, "layer"),
        "A split by the terms of the optimiser's step (attribute `terms`: signal, deviation, "
        "momentum or history, weight_decay, residual) × `first_order` / `curvature` "
        "(attribute `parts`), summed per layer",
        when=_causes, condition=_CAUSES, computed="causes",
    ),
    ArraySpec(
        "causes/hurt_layer", "iteration", ("terms", 2, "L"), "float64", np.nan,
        (*_CAUSE_DIMS, "layer"),
        "the same over the entries with A[t, i] > 0 only",
        when=_causes, condition=_CAUSES, computed="causes",
    ),
    ArraySpec(
        "causes/unit/{layer}", "iteration", ("terms", 2, "U"), "float64", np.nan,
        (*_CAUSE_DIMS, "{layer}_unit"),
        "the same as `causes/layer` per unit",
        when=lambda sizes: sizes.settings.causes and sizes.settings.store != "layers",
        condition="`causes` with `store: parameters` or `units`", computed="causes",
    ),
    ArraySpec(
        "subset_indices", "example", (), "int64", 0, (),
        "the train examples of the subset the train split's LCA is computed on",
        when=lambda sizes: sizes.settings.subset_size is not None,
        condition="`subset_size` only ([subsets](accuracy.md#subsets))", where="train",
        computed="store",
    ),
    ArraySpec(
        "done", "block", (), "bool", False, (),
        "which blocks of iterations are finished (for resuming)", where="root",
        computed="store",
    ),
    ArraySpec(
        "replay_residual", "iteration", (), "float64", np.nan, (),
        "‖Δθ − Σ terms‖ / ‖Δθ‖ per iteration",
        when=_causes, condition=_CAUSES, where="root", computed="causes",
        attrs={
            "description": "‖Δθ_recorded − Σ_k u_k‖ / ‖Δθ‖ per iteration: how exactly the "
            "replayed optimiser reproduced the recorded step"
        },
    ),
    *(
        ArraySpec(
            f"replay_state/{name}", "block", ("K",), "float32", np.nan, ("parameter",),
            f"Adam's {moment} at each block's start",
            when=lambda sizes: sizes.settings.causes and sizes.carries_state,
            condition="`causes` of a stateful optimiser", where="root",
            written_at_creation=True, computed="causes",
        )
        for name, moment in (("m", "first moment m"), ("v", "second moment v"))
    ),
    ArraySpec(
        "subset_check/iteration", "iteration", (), "int64", -1, (),
        "the iteration, or -1 where it was not checked",
        when=_checked, condition=_CHECKED, where="root", computed="check",
    ),
    ArraySpec(
        "subset_check/layer_rel_error", "iteration", ("L",), "float64", np.nan, ("layer",),
        "abs(Σ A_subset − Σ A_full) / abs(Σ A_full) per layer",
        when=_checked, condition=_CHECKED, where="root", computed="check",
    ),
    *(
        ArraySpec(
            f"subset_check/{name}", "iteration", (), "float64", np.nan, (), meaning,
            when=_checked, condition=_CHECKED, where="root", computed="check",
        )
        for name, meaning in CHECK_SCALARS.items()
    ),
)
# fmt: on

_BY_NAME = {spec.name: spec for spec in LCA_ARRAYS}


def spec(name: str) -> ArraySpec:
    """The entry of an array as stored (``unit_lca/dense``: the entry ``unit_lca/{layer}``)."""
    found = _BY_NAME.get(name)
    if found is None and "/" in name:
        found = _BY_NAME.get(name.rsplit("/", 1)[0] + "/{layer}")
    if found is None:
        raise KeyError(f"lca.zarr has no array {name!r}")
    return found


def stored_arrays(sizes: StoreSizes, where: str) -> Iterator[tuple[ArraySpec, str, tuple, tuple]]:
    """(entry, name, shape, dims) of every array a store with ``sizes`` holds in a ``where``
    group (``split``, ``train`` or ``root``)."""
    for entry in LCA_ARRAYS:
        if entry.where == where and entry.when(sizes):
            for name, shape, dims in entry.arrays(sizes):
                yield entry, name, shape, dims


def block_buffers(sizes: StoreSizes, rows: int, where: str, computed: str) -> dict[str, np.ndarray]:
    """A block's in-memory rows (``rows`` iterations) of the arrays of a ``where`` group that
    ``computed`` fills, by name, at their fill values: a step array has one row more."""
    return {
        name: np.full((rows + (entry.per == "step"), *shape[1:]), entry.fill, entry.dtype)
        for entry, name, shape, _ in stored_arrays(sizes, where)
        if entry.computed == computed
    }


def create_arrays(group: zarr.Group, sizes: StoreSizes, where: str) -> None:
    """Create the arrays of a ``where`` group (chunks of one block of rows), all unwritten.

    Arrays along steps and iterations are chunked by the block, so that a block writes only
    its own chunks; block arrays have a chunk per block.
    """
    for entry, name, shape, dims in stored_arrays(sizes, where):
        rows = {"step": sizes.block_iterations, "iteration": sizes.block_iterations, "block": 1}
        chunks = (rows[entry.per], *shape[1:]) if entry.per in rows else "auto"
        array = group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=entry.dtype,
            dimension_names=dims,
            fill_value=entry.fill,
            compressors=checksummed(),
        )
        if entry.attrs:
            array.attrs.update(dict(entry.attrs))
        if entry.written_at_creation:
            array[:] = np.full(shape, entry.fill, entry.dtype)


def read_array(group: zarr.Group, name: str) -> zarr.Array:
    """Array ``name`` of a group of lca.zarr, under the name an older store gave it if so."""
    for candidate in (name, *spec(name).legacy_names):
        if candidate in group:
            return group[candidate]
    raise KeyError(f"{group.path or 'lca.zarr'} has no array {name!r}")


def _shape_text(entry: ArraySpec) -> str:
    first = {"step": "T+1", "iteration": "T", "block": "blocks", "example": "subset size"}
    symbols = [first[entry.per], *(str(s) for s in entry.trailing)]
    symbols = ["units" if s == "U" else s for s in symbols]
    dims = [FIRST_DIMENSION[entry.per], *entry.dims]
    dims = [d.replace("{layer}", "<layer>") for d in dims]
    fill = "NaN" if isinstance(entry.fill, float) and np.isnan(entry.fill) else entry.fill
    return f"({', '.join(symbols)}) `{', '.join(dims)}` {entry.dtype}, fill {fill}"


def markdown_table() -> str:
    """The storage page's table of lca.zarr: one row per entry of `LCA_ARRAYS`."""
    prefix = {"split": "lca.zarr/<split>/", "train": "lca.zarr/train/", "root": "lca.zarr/"}
    lines = ["| array | shape, dims, dtype, fill | meaning |", "| --- | --- | --- |"]
    for entry in LCA_ARRAYS:
        name = prefix[entry.where] + entry.name.replace("{layer}", "<layer>")
        meaning = entry.meaning
        if entry.condition:
            meaning += f"; {entry.condition}"
        if entry.legacy_names:
            meaning += f" (older stores: {', '.join(f'`{n}`' for n in entry.legacy_names)})"
        lines.append(f"| `{name}` | {_shape_text(entry)} | {meaning} |")
    return "\n".join(lines) + "\n"
