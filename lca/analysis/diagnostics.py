"""How well an allocation conserves the loss: the paper's Table S1, as numbers and a verdict.

Conservation is the oracle of LCA: Σ_i A_t,i must equal L(θ_t+1) − L(θ_t). ``allocate``
stores each iteration's error, (L(θ_t+1) − L(θ_t)) − Σ_i A_t,i (ΔL − Σ LCA: the one sign of
every error here, per iteration, in total and per rule); this module aggregates them, re-sums
the stored LCA array chunk by chunk (or, where ``allocate.store`` kept only unit or layer
sums, the stored per-layer sums) to prove the stored values are the ones the errors describe,
and decides whether the allocation can be trusted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..storage import LCA_STORE, RunError, location, open_group
from ..storage.lca_arrays import read_array

TOTAL_ERROR_LIMIT_PCT = 1.0
#: How every error in the table is signed, said once above it.
ERROR_SIGN = "error = ΔL − Σ LCA = L(θ_t+1) − L(θ_t) − Σ_i A_t,i (totals: summed, % of |ΔL|)"
RULE_NOTES = {
    "simpson": ' (composite Simpson, the paper\'s "RK4")',
    "adaptive": " (trapezoid on the endpoints, Simpson where its error is too large)",
}


@dataclass
class SplitErrors:
    """Table S1 for one split, over the iterations allocated so far."""

    split: str
    iterations_done: int
    loss_start: float
    loss_end: float
    loss_change: float  # Σ_t (L(θ_t+1) − L(θ_t)) over allocated iterations
    lca_total: float  # Σ_t Σ_i A_t,i over allocated iterations, re-summed from the store
    total_error_pct: float  # (ΔL − Σ A) / |ΔL| · 100; negative: the loss fell more than Σ A
    total_error_first_order_pct: float  # the same for gradient × step
    mean_abs_error: float
    mean_abs_error_first_order: float
    max_abs_error: float
    max_abs_error_first_order: float
    intervals_used: dict[int, int]  # sub-intervals -> iterations
    over_threshold: int
    stored_mismatch: float  # max |Σ_i A_t,i (re-summed) − (ΔL_t − error_t)|
    # by the rule that produced each iteration (trapezoid: 1 sub-interval; simpson: 2 or more)
    rule_iterations: dict[str, int] = field(default_factory=dict)
    rule_mean_abs_error: dict[str, float] = field(default_factory=dict)
    rule_total_error: dict[str, float] = field(default_factory=dict)  # Σ (ΔL − Σ A) of those
    fallbacks: int = 0  # iterations recomputed in float32 (reduced precision only)
    # iterations whose loss change is known: allocated, and L after them stored too (in a
    # partial allocation the loss after a finished stretch belongs to the next, unfinished block)
    iterations_measured: int = 0
    nonfinite_loss_steps: list[int] = field(default_factory=list)  # stored L(θ_t) not finite
    nonfinite_error_iterations: list[int] = field(default_factory=list)  # error not finite

    @property
    def loss_unchanged(self) -> bool:
        """The measured loss did not change: a relative total error is undefined."""
        return self.iterations_measured > 0 and self.loss_change == 0.0


@dataclass
class SubsetCheck:
    """How the subset LCA compares with the exact full-set LCA on the checked iterations."""

    checked_iterations: int
    layer_rel_error_mean: float  # |Σ_layer A_subset − Σ_layer A_full| / |Σ_layer A_full|
    layer_rel_error_max: float
    correlation_mean: float  # Pearson, per-parameter
    sign_agreement_mean: float  # share of parameters (A_full ≠ 0) with the same sign
    helped_error_abs_mean: float  # |% helped (subset) − % helped (full)|, percentage points
    full_error_abs_max: float  # the full-set LCA's own conservation error


@dataclass
class ErrorReport:
    run_dir: str
    iterations_total: int
    iterations_done: int
    threshold: float
    max_intervals: int
    splits: dict[str, SplitErrors] = field(default_factory=dict)
    subset_size: int | None = None  # train split allocated on this many examples …
    num_train: int | None = None  # … of this many
    subset_check: SubsetCheck | None = None
    rule: str = "simpson"  # the refinement sequence that produced the arrays
    precision: str = "float32"  # the arithmetic of the gradients (losses: float32)
    store: str = "parameters"  # what was kept per iteration (allocate.store)

    @property
    def label(self) -> str:
        """How the tables name the allocation's own rule: its setting (adaptive, simpson)."""
        return self.rule

    @property
    def complete(self) -> bool:
        return self.iterations_done == self.iterations_total

    def failures(self) -> list[str]:
        """Why the allocation fails the check (empty when it passes)."""
        problems = []
        if not self.complete:
            problems.append(
                f"allocation incomplete: {self.iterations_done} of {self.iterations_total} "
                "iterations allocated"
            )
        for name, s in self.splits.items():
            if s.nonfinite_loss_steps:
                problems.append(
                    f"{name}: the loss is not finite at steps {_list(s.nonfinite_loss_steps)}"
                )
            if s.nonfinite_error_iterations:
                problems.append(
                    f"{name}: the conservation error is not finite at iterations "
                    f"{_list(s.nonfinite_error_iterations)}"
                )
            if s.over_threshold:
                problems.append(
                    f"{name}: {s.over_threshold} iterations have |error| > "
                    f"{self.threshold:g} even at {self.max_intervals} sub-intervals"
                )
            if math.isfinite(s.total_error_pct) and abs(s.total_error_pct) > TOTAL_ERROR_LIMIT_PCT:
                problems.append(
                    f"{name}: total {self.label} error {s.total_error_pct:+.3f}% exceeds "
                    f"±{TOTAL_ERROR_LIMIT_PCT:g}% of the loss change"
                )
            if s.stored_mismatch > 1e-6 * max(1.0, abs(s.loss_change)):
                problems.append(
                    f"{name}: the stored LCA does not sum to the recorded errors "
                    f"(off by {s.stored_mismatch:.3g}); the store is corrupt"
                )
        return problems

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict:
        data = _finite_or_none(asdict(self))  # strict JSON: no NaN
        data["passed"] = self.passed
        data["failures"] = self.failures()
        data["notes"] = self.notes()
        return data

    def notes(self) -> list[str]:
        """What the numbers leave out or cannot say (a partial allocation, ΔL = 0)."""
        notes = []
        if self.store != "parameters":
            notes.append(
                f"store: {self.store}: Σ LCA per iteration is re-summed from the stored "
                "per-layer sums (layer_lca), not from a per-parameter array"
            )
        if self.iterations_done and not self.complete:
            notes.append(
                f"partial allocation: {self.iterations_done} of {self.iterations_total} "
                f"iterations allocated; finish it with `lca allocate {self.run_dir}`"
            )
        for name, s in self.splits.items():
            if s.iterations_measured < s.iterations_done:
                notes.append(
                    f"{name}: totals cover the {s.iterations_measured} allocated iterations "
                    "whose loss after the step is stored too (the loss after the last "
                    "iteration of a finished stretch is stored by the next block)"
                )
            if s.loss_unchanged:
                notes.append(
                    f"{name}: the loss did not change (ΔL = 0), so a relative total error is "
                    "undefined; the per-iteration errors alone judge the allocation"
                )
        return notes

    def to_text(self) -> str:
        if not self.iterations_done:
            return (
                f"{self.run_dir}: nothing allocated yet (0 of {self.iterations_total} "
                f"iterations); run `lca allocate {self.run_dir}`\nFAIL: "
                + "; ".join(self.failures())
            )
        names = list(self.splits)
        rows: list[tuple[str, list[str]]] = [
            (
                "loss L(θ_0) → L(θ_T)",
                [f"{s.loss_start:.5f} → {s.loss_end:.5f}" for s in self.splits.values()],
            ),
            ("actual loss change", [f"{s.loss_change:+.6f}" for s in self.splits.values()]),
            ("Σ LCA", [f"{s.lca_total:+.6f}" for s in self.splits.values()]),
            (
                f"total error, {self.label}",
                [_pct_text(s.total_error_pct, s) for s in self.splits.values()],
            ),
            (
                "total error, first order",
                [_pct_text(s.total_error_first_order_pct, s) for s in self.splits.values()],
            ),
            (
                f"mean |error| per iteration, {self.label}",
                [_num(s.mean_abs_error, ".3e") for s in self.splits.values()],
            ),
            (
                "mean |error| per iteration, first order",
                [_num(s.mean_abs_error_first_order, ".3e") for s in self.splits.values()],
            ),
            (
                f"max |error|, {self.label}",
                [_num(s.max_abs_error, ".3e") for s in self.splits.values()],
            ),
            (
                "max |error|, first order",
                [_num(s.max_abs_error_first_order, ".3e") for s in self.splits.values()],
            ),
        ]
        first = 0 if self.rule == "adaptive" else 1
        levels = [2**k for k in range(first, int(math.log2(self.max_intervals)) + 1)]
        for n in levels:
            rows.append(
                (
                    "iterations with 1 sub-interval (trapezoid)"
                    if n == 1
                    else f"iterations with {n} sub-intervals",
                    [str(s.intervals_used.get(n, 0)) for s in self.splits.values()],
                )
            )
        if self.rule != "simpson":
            for rule in ("trapezoid", "simpson"):
                rows.append(
                    (
                        f"{rule}: mean |error|, total error",
                        [
                            _num(s.rule_mean_abs_error.get(rule, math.nan), ".2e")
                            + ", "
                            + _pct_text(_pct(s.rule_total_error.get(rule, 0.0), s.loss_change), s)
                            for s in self.splits.values()
                        ],
                    )
                )
        if self.precision != "float32":
            rows.append(
                (
                    "iterations recomputed in float32",
                    [str(s.fallbacks) for s in self.splits.values()],
                )
            )
        rows.append(
            (
                f"iterations with |error| > {self.threshold:g}",
                [str(s.over_threshold) for s in self.splits.values()],
            )
        )
        width = max(len(r[0]) for r in rows) + 2
        col = max([len(v) for r in rows for v in r[1]] + [len(n) for n in names]) + 2
        lines = [
            f"{self.run_dir}: {self.iterations_done} of {self.iterations_total} iterations "
            f"allocated (threshold {self.threshold:g}, at most {self.max_intervals} sub-intervals)",
            f"rule {self.rule}{RULE_NOTES[self.rule]}; gradients in {self.precision}"
            + ("" if self.precision == "float32" else ", losses in float32"),
            ERROR_SIGN,
            " " * width + "".join(n.rjust(col) for n in names),
        ]
        if self.subset_size is not None:
            lines.insert(1, f"train (subset of {self.subset_size} of {self.num_train} examples)")
        lines += [
            label.ljust(width) + "".join(v.rjust(col) for v in values) for label, values in rows
        ]
        if self.subset_check is not None:
            lines += self._subset_check_lines(self.subset_check)
        lines += [f"note: {note}" for note in self.notes()]
        failures = self.failures()
        lines.append(
            "PASS: every iteration within the threshold, total error within "
            f"±{TOTAL_ERROR_LIMIT_PCT:g} %"
            if not failures
            else "FAIL: " + "; ".join(failures)
        )
        return "\n".join(lines)

    @staticmethod
    def _subset_check_lines(c: SubsetCheck) -> list[str]:
        if not c.checked_iterations:
            return ["subset vs full train set: no checked iteration is allocated yet"]
        return [
            f"subset vs full train set, {c.checked_iterations} checked iterations:",
            f"  per-layer relative error of Σ LCA   mean {c.layer_rel_error_mean:.4f}, "
            f"max {c.layer_rel_error_max:.4f}",
            f"  per-parameter correlation           mean {c.correlation_mean:.4f}",
            f"  sign agreement                      mean {c.sign_agreement_mean:.4f}",
            f"  |helped % error|                    mean {c.helped_error_abs_mean:.3f} points",
            f"  full-set |error|, same quadrature   max {c.full_error_abs_max:.3e}",
        ]


def _nanstat(fn, values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(fn(values)) if values.size else float("nan")


def _subset_check(store) -> SubsetCheck | None:
    """Aggregate ``subset_check/`` over the iterations checked (and allocated) so far."""
    if "subset_check" not in store:
        return None
    check = store["subset_check"]
    rows = check["iteration"][:] >= 0
    layer = check["layer_rel_error"][:][rows]
    get = {name: check[name][:][rows] for name in ("correlation", "sign_agreement")}
    return SubsetCheck(
        checked_iterations=int(rows.sum()),
        layer_rel_error_mean=_nanstat(np.mean, layer.ravel()),
        layer_rel_error_max=_nanstat(np.max, layer.ravel()),
        correlation_mean=_nanstat(np.mean, get["correlation"]),
        sign_agreement_mean=_nanstat(np.mean, get["sign_agreement"]),
        helped_error_abs_mean=_nanstat(np.mean, np.abs(check["helped_error"][:][rows])),
        full_error_abs_max=_nanstat(np.max, np.abs(check["full_error"][:][rows])),
    )


def _pct(part: float, whole: float) -> float:
    return float(part / abs(whole) * 100.0) if whole else float("nan")


def _num(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "n/a"


def _pct_text(value: float, s: SplitErrors) -> str:
    """A total error in percent, or why there is none (instead of ``+nan %``)."""
    if math.isfinite(value):
        return f"{value:+.4f} %"
    if s.loss_unchanged:
        return "undefined (ΔL = 0)"
    return "n/a"


def _list(values: list[int], most: int = 8) -> str:
    """``3, 4, 9`` or ``3, 4, … (12 in all)``."""
    shown = ", ".join(map(str, values[:most]))
    return shown if len(values) <= most else f"{shown}, … ({len(values)} in all)"


def _finite_or_none(value):
    """A nested structure with every non-finite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _lca_sums(group, done_blocks: np.ndarray, c: int, T: int) -> np.ndarray:
    """Σ_i A[t, i] of every done iteration (NaN elsewhere), one chunk of rows at a time.

    From the (T, K) array where it is stored; else from the float64 per-layer sums that
    ``allocate.store: units`` or ``layers`` keeps instead (Σ over layers of Σ within each).
    """
    sums = np.full(T, np.nan)
    stored = group["lca"] if "lca" in group else group["layer_lca"]
    for k in done_blocks:
        a, b = k * c, min(T, (k + 1) * c)
        sums[a:b] = stored[a:b].sum(axis=1, dtype=np.float64)
    return sums


def verify_error(run_dir: str | Path) -> ErrorReport:
    """Aggregate the conservation errors of an (even partially) allocated run."""
    run_dir = location(run_dir)
    path = run_dir / LCA_STORE
    if not path.exists():
        raise RunError(f"{run_dir}: no {LCA_STORE}; run `lca allocate {run_dir}` first")
    store = open_group(path, "r")
    settings = store.attrs.get("settings")
    if not settings:
        raise RunError(
            f"{path}: its creation did not finish (no settings recorded), so nothing is "
            f"allocated; run `lca allocate {run_dir}`"
        )
    T = int(store.attrs["num_iterations"])
    c = int(settings["chunk_iterations"])
    done_blocks = np.flatnonzero(store["done"][:])
    done = np.zeros(T, dtype=bool)
    for k in done_blocks:
        done[k * c : (k + 1) * c] = True
    report = ErrorReport(
        str(run_dir),
        T,
        int(done.sum()),
        float(settings["threshold"]),
        int(settings["max_splits"]),
        rule=settings.get("rule", "simpson"),
        precision=settings.get("precision", "float32"),
        store=settings.get("store", "parameters"),
    )
    if settings.get("subset_size") is not None:
        report.subset_size = int(settings["subset_size"])
        report.num_train = int(store["train"].attrs["num_examples_full"])
        report.subset_check = _subset_check(store)
    # L(θ_t) is stored by the block of iteration t; L(θ_T) by the last block
    stored = np.append(
        done, bool(done_blocks.size) and done_blocks[-1] == store["done"].shape[0] - 1
    )
    for split in settings["splits"]:
        group = store[split]
        loss = group["loss"][:]
        error_all = group["error"][:]
        nonfinite_loss = np.flatnonzero(stored & ~np.isfinite(loss))
        nonfinite_error = np.flatnonzero(done & ~np.isfinite(error_all))
        # the iterations whose loss change is known, and finite
        measured = done & stored[1:] & np.isfinite(np.diff(loss))
        dl = np.diff(loss)[measured]
        ok = done & np.isfinite(error_all)
        error = error_all[ok]
        error_fo = group["error_fo"][:][measured]
        intervals = read_array(group, "intervals")[:]
        used = intervals[done]
        sums = _lca_sums(group, done_blocks, c, T)
        loss_change = float(dl.sum())
        lca_total = float(sums[measured].sum())
        first = int(np.argmax(measured)) if measured.any() else 0
        last = int(T - 1 - np.argmax(measured[::-1])) if measured.any() else -1
        values, counts = np.unique(used, return_counts=True)
        mismatch = np.abs(sums[measured] - (dl - error_all[measured]))
        report.splits[split] = SplitErrors(
            split=split,
            iterations_done=int(done.sum()),
            loss_start=float(loss[first]) if measured.any() else math.nan,
            loss_end=float(loss[last + 1]) if measured.any() else math.nan,
            loss_change=loss_change,
            lca_total=lca_total,
            total_error_pct=_pct(loss_change - lca_total, loss_change),
            total_error_first_order_pct=_pct(float(error_fo.sum()), loss_change),
            mean_abs_error=float(np.abs(error).mean()) if error.size else math.nan,
            mean_abs_error_first_order=_nanstat(np.mean, np.abs(group["error_fo"][:][done])),
            max_abs_error=float(np.abs(error).max()) if error.size else math.nan,
            max_abs_error_first_order=_nanstat(np.max, np.abs(group["error_fo"][:][done])),
            intervals_used={int(v): int(n) for v, n in zip(values, counts)},
            over_threshold=int((np.abs(error) > report.threshold).sum()),
            stored_mismatch=float(np.nanmax(mismatch)) if np.isfinite(mismatch).any() else 0.0,
            fallbacks=int(group["fallback"][:][done].sum()) if "fallback" in group else 0,
            iterations_measured=int(measured.sum()),
            nonfinite_loss_steps=[int(t) for t in nonfinite_loss],
            nonfinite_error_iterations=[int(t) for t in nonfinite_error],
        )
        stats = report.splits[split]
        for rule, rows in {"trapezoid": intervals == 1, "simpson": intervals >= 2}.items():
            stats.rule_iterations[rule] = int((rows & done).sum())
            stats.rule_total_error[rule] = float(error_all[rows & measured].sum())
            stats.rule_mean_abs_error[rule] = _nanstat(np.mean, np.abs(error_all[rows & done]))
    return report
