"""What a run is, and what running it would execute: ``lca describe CONFIG|RUN``.

Read from the run's config and stores only: no model is built and no module the run names
is imported, so a run from someone else can be inspected before it is allocated.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config.user_code import (
    KERAS_CONFIG_BUILDER,
    RENAMED_BUILDERS,
    custom_classes,
    holds_bytecode,
)
from ..layout.describe import describe_layout
from ..locations import is_remote
from ..storage import LCA_STORE, TRAJECTORY_STORE, RunError, location, open_group


@dataclass
class RunDescription:
    """What ``lca describe RUN`` prints: read from the run's files, nothing built or imported."""

    run_dir: str
    name: str
    code: list[str]  # what allocating the run would execute, one entry per builder
    trajectory: str
    allocation: str
    versions: dict[str, str]
    checksums: str
    layout: str | None  # the parameter layout table, if the trajectory records one
    sizes: dict[str, int | None] = field(default_factory=dict)  # bytes per store on disk

    def to_text(self) -> str:
        lines = [f"{self.run_dir}: run {self.name}"]
        lines += ["code it runs when allocated:"] + [f"  {c}" for c in self.code]
        lines += [
            f"trajectory: {self.trajectory}{self._on_disk(TRAJECTORY_STORE)}",
            f"lca.zarr: {self.allocation}{self._on_disk(LCA_STORE)}",
        ]
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items()) or "not recorded"
        lines += [f"recorded with: {versions}", f"checksums: {self.checksums}"]
        if self.layout:
            lines += ["", self.layout]
        return "\n".join(lines)

    def _on_disk(self, store: str) -> str:
        """``, 884 MB on disk``: the store's files' bytes in decimal units (kB, MB, GB: 10³,
        10⁶, 10⁹ B) to 3 significant digits, as ``lca describe CONFIG``'s θ storage; empty
        for a store that is absent or whose filesystem cannot say."""
        from ..training.segments import _show

        size = self.sizes.get(store)
        return "" if size is None else f", {_show(size)} on disk"


def describe_run(run_dir: str | Path) -> RunDescription:
    """Describe a run directory without building its model or importing any of its code.

    Reads ``config.yaml`` (YAML safe load) and the stores' metadata only, so it is the way to
    inspect a run from someone else before ``lca allocate`` runs the builders it names.
    """
    from ..config import load_config
    from ..layout import ParameterLayout
    from ..storage import CONFIG_FILE

    run_dir = location(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: no {CONFIG_FILE}; is this a run directory of `lca train`?")
    config = load_config(run_dir / CONFIG_FILE)
    arrays: list = []
    sizes: dict[str, int | None] = {}
    trajectory, versions, layout = "absent (not trained)", {}, None
    if (run_dir / TRAJECTORY_STORE).exists():
        group = open_group(run_dir / TRAJECTORY_STORE, "r")
        attrs = group.attrs
        total = int(attrs.get("num_iterations", 0)) + 1
        steps = int(attrs.get("steps_recorded", 0))
        state = "complete" if attrs.get("complete", False) else "incomplete"
        trajectory = f"{steps} of {total} steps recorded, {state} (status: "
        trajectory += f"{attrs.get('status', 'unknown')})"
        if "steps" in group:  # θ every k steps, or from checkpoints
            from ..storage.trajectory import segment_note

            stored = group["steps"][:]
            note = segment_note(attrs.asdict(), stored)
            trajectory += f"; optimizer steps {stored[0]}..{stored[-1]}; {note}"
        versions = {str(k): str(v) for k, v in (attrs.get("versions") or {}).items()}
        if "layout" in attrs:
            layout = describe_layout(ParameterLayout.from_json(attrs["layout"]))
        arrays += _arrays(group, TRAJECTORY_STORE)
        sizes[TRAJECTORY_STORE] = size_on_disk(run_dir / TRAJECTORY_STORE)
    allocation = "absent (not allocated)"
    if (run_dir / LCA_STORE).exists():
        group = open_group(run_dir / LCA_STORE, "r")
        settings = group.attrs.get("settings")
        if not settings:
            allocation = "creation unfinished (no settings recorded); `lca allocate` remakes it"
        else:
            done = np.asarray(group["done"][:], bool)
            T = int(group.attrs["num_iterations"])
            c = int(settings["chunk_iterations"])
            iterations = int(sum(min(c, T - k * c) for k in np.flatnonzero(done)))
            allocation = (
                f"{int(done.sum())} of {done.size} blocks done ({iterations} of {T} "
                f"iterations; {'complete' if done.all() else 'partial'}), splits "
                f"{', '.join(settings['splits'])}, rule {group.attrs.get('rule', 'simpson')}, "
                f"gradients in {group.attrs.get('precision', 'float32')}, "
                f"LCA kept per {settings.get('store', 'parameters').removesuffix('s')}"
                f"{'' if settings.get('store_grad', True) else ', gradients not stored'}"
            )
        arrays += _arrays(group, LCA_STORE)
        sizes[LCA_STORE] = size_on_disk(run_dir / LCA_STORE)
    unchecked = [name for name, checked in arrays if not checked]
    if not arrays:
        checksums = "no arrays"
    elif not unchecked:
        checksums = f"all {len(arrays)} arrays carry per-chunk crc32c"
    else:
        checksums = (
            f"{len(unchecked)} of {len(arrays)} arrays without crc32c (written by an older lca: "
            f"damage shows only as a wrong size or a failed decompression), e.g. {unchecked[0]}"
        )
    return RunDescription(
        run_dir=str(run_dir),
        name=config.name,
        code=_code_of(config, run_dir),
        trajectory=trajectory,
        allocation=allocation,
        versions=versions,
        checksums=checksums,
        layout=layout,
        sizes=sizes,
    )


def size_on_disk(store: Path) -> int | None:
    """Bytes of the files under a store, summed (None: a URL whose filesystem cannot say)."""
    import os

    if is_remote(store):
        try:
            return int(store.fs.du(store.path, total=True))
        except Exception:  # noqa: BLE001 - a remote store's size is optional
            return None
    total = 0
    for folder, _, files in os.walk(store):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a chunk replaced meanwhile
                total += (Path(folder) / name).stat().st_size
    return total


def _arrays(group, prefix: str) -> list[tuple[str, bool]]:
    """(path, carries crc32c) of every array in a store."""
    import zarr

    out = []
    with warnings.catch_warnings():  # a half-made store's stray folders: not arrays
        warnings.simplefilter("ignore")
        members = list(group.members(max_depth=None))
    for path, node in members:
        if isinstance(node, zarr.Array):
            names = [codec.to_dict()["name"] for codec in node.metadata.codecs]
            out.append((f"{prefix}/{path}", "crc32c" in names))
    return out


def _code_of(config, run_dir: Path) -> list[str]:
    """What building the run's model and data would execute, in words."""
    import json

    from ..data import RUN_ARRAYS

    def call(builder: str, kwargs: dict) -> str:
        text = json.dumps(kwargs, default=str)
        text = text if len(text) <= 200 else text[:197] + "..."
        own = builder.split(":")[0].split(".")[0] == "lca"
        who = "lca's own code" if own else "USER CODE: imports and calls"
        return f"{who} {builder}(**{text})"

    model, data = config.model, config.data
    if model.builder is None:
        code = [f"model: only lca's built-in networks ({model.name})"]
    elif RENAMED_BUILDERS.get(model.builder, model.builder) == KERAS_CONFIG_BUILDER:
        raw = model.kwargs.get("config")
        try:
            tree = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            tree = None
        classes = sorted(custom_classes(tree))
        what = "a Keras model stored as JSON in config.yaml, rebuilt in Keras safe mode"
        if tree is not None and holds_bytecode(tree):
            what += "; it holds Python bytecode (a Lambda layer), which lca refuses to run"
        if classes:
            what += "; registered custom classes it needs: " + ", ".join(classes)
        code = [f"model: {what}"]
    else:
        code = [f"model: {call(model.builder, model.kwargs)}"]
    if data.builder is None:
        where = f" from {data.path}" if data.path else ""
        line = f"data: only lca's built-in loader ({data.name}{where})"
        if data.name == "cifar10" and data.path:
            line += (
                "; CIFAR-10 batches are Python pickles: point data.path only at the official files"
            )
        code.append(line)
    elif data.builder == RUN_ARRAYS:
        code.append(f"data: the arrays stored in {run_dir}/data.zarr (no code)")
    else:
        code.append(f"data: {call(data.builder, data.kwargs)}")
    return code
