"""θ every k optimizer steps (``training.record_every``): one trajectory row per segment.

The training loop still takes every step; at the end of each segment (the steps
`lca.storage.trajectory.stored_steps` lists) it records θ with the segment's
metrics: the mean mini-batch loss and accuracy of its steps, the examples of all its steps
(one row, ``-1`` after a shorter last segment's), and the validation accuracy of θ at its
end where a ``log_every`` point falls inside it. And how much θ a run stores at a given k,
or which k fits a disk budget (``lca describe``).
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..config import ConfigError
from ..storage.trajectory import stored_steps


class SegmentMetrics:
    """Collects the metrics of the steps of the current segment until its θ is recorded."""

    def __init__(self, steps: np.ndarray, batch_size: int | None) -> None:
        self.ends = {int(s) for s in steps[1:]}  # steps whose θ is stored (θ_0 aside)
        self.width = None if batch_size is None else batch_size * int(max(np.diff(steps)))
        self._reset()

    def _reset(self) -> None:
        self.losses: list[float] = []
        self.accuracies: list[float] = []
        self.batches: list[np.ndarray] = []
        self.flags = (False, False)

    def add(
        self, t: int, metrics: dict, logged: bool, printed: bool
    ) -> tuple[dict | None, bool, bool]:
        """Take the metrics of update ``t``; at a segment's end, the segment's row.

        Returns ``(row or None, logged, printed)``: whether a ``log_every`` (and a print)
        point fell inside the segment, so that its end θ is evaluated (and printed).
        """
        self.losses.append(metrics["loss"])
        self.accuracies.append(metrics["accuracy"])
        if "batch_indices" in metrics:
            self.batches.append(np.asarray(metrics["batch_indices"], np.int64))
        self.flags = (self.flags[0] or bool(logged), self.flags[1] or bool(printed))
        if t + 1 not in self.ends:
            return None, False, False
        row: dict = {
            "loss": float(np.mean(self.losses)),
            "accuracy": float(np.mean(self.accuracies)),
        }
        if self.width is not None:
            indices = np.full(self.width, -1, np.int64)
            joined = np.concatenate(self.batches)
            indices[: len(joined)] = joined
            row["batch_indices"] = indices
        logged, printed = self.flags
        self._reset()
        return row, logged, printed


# --- how much θ a run stores (lca describe --record-every / --disk-budget) -----------------

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_size(text: str) -> int:
    """``50GB``, ``1.5 TiB``, ``800mb`` as bytes (GB = 10⁹ bytes, GiB = 2³⁰)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ConfigError(f"--disk-budget: {text!r} is not a size such as 50GB or 200GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def theta_bytes(num_params: int, iterations: int, record_every: int) -> int:
    """Bytes of θ a run of ``iterations`` steps stores every ``record_every`` steps."""
    return len(stored_steps(iterations, record_every)) * num_params * 4


def record_every_for(num_params: int, iterations: int, budget: int) -> int | None:
    """The smallest k whose θ fits ``budget`` bytes (None: not even θ_0 and θ_T fit)."""
    rows = budget // (4 * num_params)  # θ rows that fit
    if rows < 2:
        return None
    k = max(1, math.ceil(iterations / (rows - 1)))
    while theta_bytes(num_params, iterations, k) > budget:
        k += 1
    return k


def storage_lines(
    num_params: int, iterations: int, record_every: int, budget: int | None = None
) -> list[str]:
    """What ``lca describe`` says of θ's storage at ``record_every`` and within ``budget``."""
    size = theta_bytes(num_params, iterations, record_every)
    rows = len(stored_steps(iterations, record_every))
    every = "every step" if record_every == 1 else f"every {record_every} steps"
    lines = [
        f"θ storage: {_show(size)} ({rows} rows of {num_params} float32 parameters: θ "
        f"{every} over {iterations} steps); the allocation takes at least one gradient per "
        f"stored θ ({(rows - 1) / max(iterations, 1):.3g} per optimizer step)"
    ]
    if budget is not None:
        k = record_every_for(num_params, iterations, budget)
        if k is None:
            lines.append(f"disk budget {_show(budget)}: not even θ_0 and θ_T fit")
        else:
            fits = _show(theta_bytes(num_params, iterations, k))
            lines.append(
                f"disk budget {_show(budget)}: training.record_every: {k} fits ({fits} of θ)"
            )
    return lines


def _show(size: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"
