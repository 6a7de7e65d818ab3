"""The trapezoid's acceptance threshold of `rule: adaptive`, swept over the paper's allocation.

    python scripts/bench.py thresholds runs/mnist_fc_sgd runs/mnist_fc_adam --thresholds 1e-3,1e-4
    python scripts/bench.py thresholds configs/tiny_fc.yaml --thresholds 1e-3,1e-4,inf

A config is trained first; a run directory is used as it is (its own lca.zarr is never
touched). Each run is allocated once with the paper's rule (``simpson``, ``float32``) into a
scratch directory that links the run's trajectory. From that store's losses and endpoint
gradients every iteration's trapezoid, A = Δθ ⊙ (g_t + g_t+1) / 2, and its conservation
error are computed in numpy as the allocator computes them (`lca.quadrature.integrate_step`).
For each threshold, ``adaptive`` keeps the trapezoid where every split's |error| is at most
the threshold (at most ``allocate.threshold``: the allocator's first level takes the smaller
of the two) and elsewhere takes Simpson, bit for bit the rows of the simpson store; ``inf``
is the trapezoid alone, ``simpson`` (threshold 0) the paper's rule itself. The run's default
(``allocate.trapezoid_threshold``, else threshold / 10) is always swept and marked.

Per run and threshold it prints the share of iterations that keep the trapezoid, gradients
per iteration as the allocator counts them (1 for a trapezoid, n for Simpson on n
sub-intervals, and one per block for its first θ), and per split the sign agreement with
the simpson array (share of its non-zero A[t, i] with the same sign) and the total error,
(ΔL − Σ A) in % of |ΔL| as ``lca verify-error`` computes it. A check line per run confirms
that the simpson row reproduces verify-error's totals and the allocator's gradient count.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .common import add_target_arguments, copy_run, run_from_target, scratch

DEFAULT_THRESHOLDS = "1e-3,3e-4,1e-4,inf"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, many=True)
    parser.add_argument(
        "--thresholds",
        default=DEFAULT_THRESHOLDS,
        help=f"acceptance thresholds to sweep, comma-separated; inf: the trapezoid alone "
        f"[{DEFAULT_THRESHOLDS}]",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")


def parse_thresholds(spec: str) -> list[float]:
    values = [float(part) for part in spec.split(",") if part.strip()]
    if not values or any(math.isnan(v) or v < 0 for v in values):
        raise SystemExit(f"--thresholds {spec}: give thresholds >= 0 (or inf), comma-separated")
    return values


def threshold_text(value: float) -> str:
    """``1e-3``, ``3e-4``, ``inf``, ``0``."""
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    return np.format_float_scientific(value, trim="-", exp_digits=1)


# --- the paper's allocation ---------------------------------------------------------------


def allocate_paper(run_dir: Path) -> int:
    """Allocate ``run_dir`` with simpson + float32, every array the sweep reads kept; answers
    the allocator's count of gradient evaluations."""
    from lca.allocation import allocate
    from lca.storage import read_run_config

    config = read_run_config(run_dir).allocate
    settings = replace(
        config,
        rule="simpson",
        trapezoid_threshold=None,  # applies to adaptive only
        precision="float32",
        store="parameters",
        store_grad=True,
        causes=False,
        per_class=False,
        per_class_full=False,
    )
    summary = allocate(run_dir, settings, progress=False)
    if not summary.complete:
        raise SystemExit(f"{run_dir}: the simpson allocation did not finish")
    return summary.gradient_evaluations


# --- the sweep, in numpy ------------------------------------------------------------------


@dataclass
class TrapezoidPass:
    """What every threshold's row is made of, one value per iteration (and split)."""

    splits: list[str]
    iterations: int
    blocks: int
    threshold: float  # allocate.threshold of the store
    max_intervals: int
    intervals: np.ndarray  # (T,) the simpson allocation's sub-intervals
    loss_change: dict[str, float]  # Σ_t ΔL_t, as verify-error sums it
    trapezoid_error: dict[str, np.ndarray]  # (T,) ΔL_t − Σ_i A_trap[t, i], as the allocator
    trapezoid_sums: dict[str, np.ndarray]  # (T,) Σ_i A_trap[t, i], as verify-error re-sums
    simpson_sums: dict[str, np.ndarray]  # (T,) Σ_i A_simpson[t, i], the same way
    nonzero: dict[str, np.ndarray]  # (T,) simpson's non-zero entries per iteration
    agree: dict[str, np.ndarray]  # (T,) of those, the trapezoid's with the same sign


def trapezoid_pass(run_dir: Path) -> TrapezoidPass:
    """Read a simpson store (and θ) once, a block of rows at a time, float32 → float64."""
    from lca.storage import LCA_STORE, open_group, open_trajectory

    store = open_group(run_dir / LCA_STORE, "r")
    settings = store.attrs["settings"]
    T = int(store.attrs["num_iterations"])
    c = int(settings["chunk_iterations"])  # the allocator's blocks, one chunk of rows each
    splits = list(settings["splits"])
    theta = open_trajectory(run_dir).theta
    groups = {s: store[s] for s in splits}
    loss = {s: groups[s]["loss"][:] for s in splits}
    per_split = {s: np.zeros(T) for s in splits}
    out = TrapezoidPass(
        splits=splits,
        iterations=T,
        blocks=-(-T // c),
        threshold=float(settings["threshold"]),
        max_intervals=int(settings["max_splits"]),
        intervals=groups[splits[0]]["intervals"][:].astype(np.int64),
        loss_change={s: float(np.diff(loss[s]).sum()) for s in splits},
        trapezoid_error={s: v.copy() for s, v in per_split.items()},
        trapezoid_sums={s: v.copy() for s, v in per_split.items()},
        simpson_sums={s: v.copy() for s, v in per_split.items()},
        nonzero={s: np.zeros(T, np.int64) for s in splits},
        agree={s: np.zeros(T, np.int64) for s in splits},
    )
    for a in range(0, T, c):
        b = min(T, a + c)
        thetas = theta[a : b + 1]
        delta = thetas[1:].astype(np.float64) - thetas[:-1]  # as the allocator's Δθ
        for s in splits:
            g = groups[s]["grad"][a : b + 1]
            # integrate_step's trapezoid: ḡ = ½ g_t + ½ g_t+1 in float64, A = (Δθ ḡ) as float32
            mean = 0.5 * g[:-1].astype(np.float64)
            mean += 0.5 * g[1:].astype(np.float64)
            trap = (delta * mean).astype(np.float32)
            del mean
            dl = loss[s][a + 1 : b + 1] - loss[s][a:b]
            out.trapezoid_error[s][a:b] = [
                dl[r] - trap[r].sum(dtype=np.float64) for r in range(b - a)
            ]
            simpson = groups[s]["lca"][a:b]
            out.trapezoid_sums[s][a:b] = trap.sum(axis=1, dtype=np.float64)
            out.simpson_sums[s][a:b] = simpson.sum(axis=1, dtype=np.float64)
            moved = simpson != 0
            out.nonzero[s][a:b] = moved.sum(axis=1)
            out.agree[s][a:b] = (moved & (np.sign(trap) == np.sign(simpson))).sum(axis=1)
    return out


def accepted_at(p: TrapezoidPass, threshold: float) -> np.ndarray:
    """The iterations where ``adaptive`` with ``trapezoid_threshold=threshold`` keeps the
    trapezoid: every split's |error| within its first level's threshold (``inf``: all; 0:
    none, the paper's rule)."""
    if math.isinf(threshold) or threshold == 0:
        return np.full(p.iterations, threshold > 0)
    worst = np.max([np.abs(p.trapezoid_error[s]) for s in p.splits], axis=0)
    return worst <= effective(p, threshold)  # integrate_step's test


def effective(p: TrapezoidPass, threshold: float) -> float:
    """The threshold the allocator's first level applies: at most ``allocate.threshold``."""
    from lca.quadrature import refinement_levels

    if threshold == 0 or math.isinf(threshold):
        return threshold
    return refinement_levels("adaptive", p.threshold, p.max_intervals, threshold)[0].threshold


def pct(part: float, whole: float) -> float:
    """A total error in % of |ΔL| (lca.analysis.diagnostics: NaN where ΔL = 0)."""
    return float(part / abs(whole) * 100.0) if whole else float("nan")


def row(p: TrapezoidPass, threshold: float) -> dict:
    """One threshold's share accepted, gradients per iteration and per-split measures."""
    accepted = accepted_at(p, threshold)
    gradients = np.where(accepted, 1, p.intervals).sum() + p.blocks
    splits = {}
    for s in p.splits:
        sums = np.where(accepted, p.trapezoid_sums[s], p.simpson_sums[s])
        agree = p.agree[s][accepted].sum() + p.nonzero[s][~accepted].sum()
        nonzero = p.nonzero[s].sum()
        splits[s] = {
            "sign_agreement_pct": 100 * agree / nonzero if nonzero else float("nan"),
            "total_error_pct": pct(p.loss_change[s] - float(sums.sum()), p.loss_change[s]),
        }
    return {
        "threshold": threshold,
        "effective_threshold": effective(p, threshold),
        "accepted_pct": 100 * float(accepted.mean()),
        "gradients_per_iteration": float(gradients / p.iterations),
        "splits": splits,
    }


def default_threshold(run_dir: Path) -> float:
    """The trapezoid threshold an ``adaptive`` allocation of the run's config accepts at."""
    from lca.quadrature import refinement_levels
    from lca.storage import read_run_config

    a = read_run_config(run_dir).allocate
    return refinement_levels("adaptive", a.threshold, a.max_intervals, a.trapezoid_threshold)[
        0
    ].threshold


def sweep(run_dir: Path, thresholds: list[float], evaluations: int | None = None) -> dict:
    """Every threshold's row for a run allocated with simpson (``run_dir`` holds the store).

    ``evaluations``: the simpson allocation's own gradient count, to check the sweep's.
    """
    from lca.analysis.diagnostics import verify_error

    p = trapezoid_pass(run_dir)
    default = default_threshold(run_dir)
    wanted = {0.0, *thresholds}  # the trapezoid alone (inf) first, simpson (0) last
    if not any(math.isclose(t, default, rel_tol=1e-9) for t in wanted):
        wanted.add(default)
    rows = []
    for t in sorted(wanted, reverse=True):
        r = row(p, t)
        r["default"] = math.isclose(t, default, rel_tol=1e-9)
        rows.append(r)
    report = verify_error(run_dir)
    simpson = rows[-1]
    check = {
        "verify_error_total_pct": {s: report.splits[s].total_error_pct for s in p.splits},
        "allocator_gradients_per_iteration": (
            evaluations / p.iterations if evaluations is not None else None
        ),
    }
    same_totals = all(
        simpson["splits"][s]["total_error_pct"] == check["verify_error_total_pct"][s]
        or (math.isnan(simpson["splits"][s]["total_error_pct"]) and report.splits[s].loss_unchanged)
        for s in p.splits
    )
    same_count = evaluations is None or (
        round(simpson["gradients_per_iteration"] * p.iterations) == evaluations
    )
    check["passed"] = bool(same_totals and same_count)
    return {
        "iterations": p.iterations,
        "threshold": p.threshold,
        "default_threshold": default,
        "splits": p.splits,
        "rows": rows,
        "check": check,
    }


# --- the table ----------------------------------------------------------------------------


def header(splits: list[str]) -> str:
    cells = "".join(f" {s + ' sign %':>13} {s + ' error %':>13}" for s in splits)
    return f"{'run':<20} {'threshold':<16} {'trapez. %':>9} {'grad/it':>7}{cells}"


def table_row(name: str, r: dict) -> str:
    t = r["threshold"]
    label = "0 (simpson)" if t == 0 else threshold_text(t)
    if math.isinf(t):
        label += " (trapezoid)"
    elif r["effective_threshold"] != t:
        label += f" (as {threshold_text(r['effective_threshold'])})"
    if r["default"]:
        label += " (default)"
    cells = "".join(
        f" {m['sign_agreement_pct']:13.3f} {m['total_error_pct']:+13.4f}"
        for m in r["splits"].values()
    )
    return (
        f"{name:<20} {label:<16} {r['accepted_pct']:9.1f} {r['gradients_per_iteration']:7.2f}"
        f"{cells}"
    )


def check_line(name: str, result: dict) -> str:
    c = result["check"]
    totals = ", ".join(f"{s} {v:+.4f} %" for s, v in c["verify_error_total_pct"].items())
    count = c["allocator_gradients_per_iteration"]
    counted = f", the allocator's {count:.2f} gradients/iteration" if count is not None else ""
    verdict = "OK" if c["passed"] else "MISMATCH"
    return f"check {name}: the simpson row is verify-error's total ({totals}){counted}: {verdict}"


LEGEND = (
    "threshold: the trapezoid is kept where every split's |ΔL_t − Σ_i A[t, i]| ≤ it, "
    "Simpson taken elsewhere (at most the refinement threshold, as the allocator)",
    "trapez. %: iterations that keep it; grad/it: gradients per iteration "
    "(1 a trapezoid, n Simpson on n sub-intervals, +1 per block)",
    "sign %: share of the simpson array's non-zero A[t, i] with the same sign; "
    "error %: (ΔL − Σ A) in % of |ΔL|, as verify-error",
)


def run(args: argparse.Namespace) -> int:
    thresholds = parse_thresholds(args.thresholds)
    results = []
    with scratch() as tmp:
        for target in args.targets:
            run_dir = run_from_target(target, args.overrides, tmp)
            paper = copy_run(run_dir, tmp / f"{run_dir.name}-simpson-float32", link=True)
            print(f"allocating {run_dir} with simpson, float32 …", file=sys.stderr, flush=True)
            evaluations = allocate_paper(paper)
            result = sweep(paper, thresholds, evaluations)
            result["run"] = run_dir.name
            shutil.rmtree(paper)  # an allocation of MNIST-FC's 880 steps is ~4 GB
            results.append(result)
    refinement = ", ".join(sorted({threshold_text(r["threshold"]) for r in results}))
    print(
        f"the paper's allocation (simpson, float32; refinement threshold {refinement}) of each "
        "run, and the trapezoid on its stored endpoint gradients"
    )
    print("\n".join(LEGEND))
    lines, shown = [], None
    for result in results:
        if result["splits"] != shown:
            lines.append(header(result["splits"]))
            shown = result["splits"]
        lines += [table_row(result["run"], r) for r in result["rows"]]
    print("\n".join(lines))
    for result in results:
        print(check_line(result["run"], result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["check"]["passed"] for r in results) else 1
