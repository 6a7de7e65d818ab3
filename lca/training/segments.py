"""θ every k optimizer steps (``training.record_every``): one trajectory row per segment.

The training loop still takes every step; at the end of each segment (the steps
:func:`lca.storage.trajectory.stored_steps` lists) it records θ with the segment's
metrics: the mean mini-batch loss and accuracy of its steps, the examples of all its steps
(one row, ``-1`` after a shorter last segment's), and the validation accuracy of θ at its
end where a ``log_every`` point falls inside it.
"""

from __future__ import annotations

import numpy as np


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
