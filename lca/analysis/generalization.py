"""Train vs validation LCA by component: what drives generalisation, what overfits.

The same trajectory allocated on the training and on the validation split gives, for every
layer or unit, two LCA series. A component whose *validation* LCA is negative lowered the
validation loss (it generalised); one whose validation LCA is positive raised it while
training went on (it overfit). The paper names this probe as future work. The
accuracy crossings say *when* to look: the interval before validation accuracy reaches 95 %
and the one after it.

Steps count updates: step s is θ_s, reached by iterations 0 … s−1, so the LCA of iterations
[a, b) is the loss change from θ_a to θ_b. The trajectory records ``accuracy[t]`` of θ_t
(before update t) and ``val_accuracy[t]`` of θ_t+1 (after it): train accuracy at index t is
step t, validation accuracy at index t is step t + 1. Pure numpy: testable without Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THRESHOLDS = (0.99, 0.95)
BOUNDARY_THRESHOLD = 0.95  # the validation crossing that splits the run in two intervals
TOP_K = 5
# Accuracies are k/n stored in float32: 57/60 reads back as 0.94999999, so "at least 95 %"
# allows float32 rounding.
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Crossing:
    """The first step whose accuracy reaches ``threshold``, or why there is none."""

    curve: str  # "train" or "val"
    threshold: float
    step: int | None  # θ_step is the first at or above the threshold
    status: str  # "reached", "not reached", "not recorded"
    best: float | None = None  # the highest recorded accuracy
    best_step: int | None = None

    def to_dict(self) -> dict:
        return {
            "curve": self.curve,
            "threshold": self.threshold,
            "step": self.step,
            "status": self.status,
            "best": self.best,
            "best_step": self.best_step,
        }


def accuracy_steps(accuracy: np.ndarray, curve: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, accuracies) of the recorded values (NaN dropped), on the step axis.

    ``curve`` "train": ``accuracy[t]`` is θ_t's; "val": ``val_accuracy[t]`` is θ_t+1's.
    """
    if curve not in ("train", "val"):
        raise ValueError(f"curve must be 'train' or 'val', got {curve!r}")
    values = np.asarray(accuracy, dtype=np.float64).reshape(-1)
    recorded = np.flatnonzero(np.isfinite(values))
    return recorded + (1 if curve == "val" else 0), values[recorded]


def first_crossing(
    steps: np.ndarray, accuracy: np.ndarray, threshold: float, curve: str
) -> Crossing:
    """The first recorded step with accuracy >= ``threshold`` (within float32 rounding)."""
    steps, accuracy = np.asarray(steps), np.asarray(accuracy, dtype=np.float64)
    if accuracy.size == 0:
        return Crossing(curve, threshold, None, "not recorded")
    best = int(np.argmax(accuracy))
    above = np.flatnonzero(accuracy >= threshold - TOLERANCE)
    return Crossing(
        curve,
        threshold,
        int(steps[above[0]]) if above.size else None,
        "reached" if above.size else "not reached",
        float(accuracy[best]),
        int(steps[best]),
    )


def crossings(
    train_accuracy: np.ndarray | None,
    val_accuracy: np.ndarray | None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[Crossing]:
    """Train and validation crossings of every threshold (None: the array was not recorded)."""
    out = []
    for curve, values in (("train", train_accuracy), ("val", val_accuracy)):
        steps, acc = accuracy_steps(np.zeros(0) if values is None else values, curve)
        out += [first_crossing(steps, acc, threshold, curve) for threshold in thresholds]
    return out


@dataclass(frozen=True)
class Interval:
    """Iterations [start, stop): the loss change from θ_start to θ_stop."""

    name: str
    start: int
    stop: int


def intervals(iterations: int, boundary: int | None) -> list[Interval]:
    """Before and after step ``boundary``; the whole run when there is none (or it is an end)."""
    if boundary is None or boundary <= 0 or boundary >= iterations:
        return [Interval("whole run", 0, iterations)]
    return [
        Interval(f"before step {boundary}", 0, boundary),
        Interval(f"from step {boundary}", boundary, iterations),
    ]


@dataclass(frozen=True)
class Ranked:
    """One component's LCA over an interval on both splits."""

    component: str
    val: float
    train: float

    def to_dict(self) -> dict:
        return {"component": self.component, "val": self.val, "train": self.train}


def rank_components(
    names: Sequence[str], train_totals: np.ndarray, val_totals: np.ndarray, k: int = TOP_K
) -> dict[str, list[Ranked]]:
    """The ``k`` most negative validation totals ("drives") and most positive ("overfits").

    Only components of that sign are listed (a component that lowered the validation loss
    did not overfit); ties keep the components' order.
    """
    train = np.asarray(train_totals, dtype=np.float64)
    val = np.asarray(val_totals, dtype=np.float64)
    if not (len(names) == train.size == val.size):
        raise ValueError(f"{len(names)} names, {train.size} train and {val.size} val totals")
    rising = np.argsort(val, kind="stable")
    falling = np.argsort(-val, kind="stable")

    def pick(order: np.ndarray, keep: np.ndarray) -> list[Ranked]:
        chosen = [i for i in order if keep[i]][:k]
        return [Ranked(names[i], float(val[i]), float(train[i])) for i in chosen]

    return {"drives": pick(rising, val < 0), "overfits": pick(falling, val > 0)}


def rank_by_interval(
    names: Sequence[str],
    train_series: np.ndarray,
    val_series: np.ndarray,
    spans: Sequence[Interval],
    k: int = TOP_K,
) -> list[dict]:
    """``rank_components`` of the (T, n) series summed over each interval."""
    train = np.asarray(train_series, dtype=np.float64)
    val = np.asarray(val_series, dtype=np.float64)
    if train.shape != val.shape or train.ndim != 2 or train.shape[1] != len(names):
        raise ValueError(f"series {train.shape} and {val.shape} do not match {len(names)} names")
    out = []
    for span in spans:
        ranked = rank_components(
            names,
            train[span.start : span.stop].sum(axis=0),
            val[span.start : span.stop].sum(axis=0),
            k,
        )
        out.append(
            {
                "interval": span.name,
                "start": span.start,
                "stop": span.stop,
                **{role: [r.to_dict() for r in rows] for role, rows in ranked.items()},
            }
        )
    return out


def cumulative(series: np.ndarray) -> np.ndarray:
    """(T+1, n) running totals on the step axis: row s is the LCA of iterations 0 … s−1."""
    s = np.asarray(series, dtype=np.float64)
    return np.concatenate([np.zeros((1, *s.shape[1:])), np.cumsum(s, axis=0)])
