"""What θ every k steps loses: the chord LCA of k-step segments against the path LCA.

    python scripts/bench.py segments runs/mnist_fc_sgd --k 1,2,5,10,20,50,110 --out runs/segments

RUN is a run of every optimizer step, allocated with per-parameter rows
(``allocate.store: parameters``). For each k, the run of θ every k steps (steps 0, k, 2k, …
and the last) is made from RUN's θ rows, allocated with RUN's settings (timed), and compared
with the sum of RUN's per-step LCA over the same segments (the path LCA):

- per-layer totals of the chord and of the path, and the share of each layer's path LCA the
  chord keeps (net: Σ chord / Σ path; gross: Σ |chord| / Σ |path| over segments × parameters);
- % helped: the share of negative entries among non-zero ones, chord vs path;
- sign agreement: the share of (segment, parameter) whose chord LCA has the sign of its
  path LCA (where the path LCA is not zero);
- gradients per stored step (the allocation's gradient evaluations per segment) and time
  (the first k's includes building the objective).

The table is printed as markdown and written with the numbers to OUT/segments.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import lca
from lca.storage import (
    CONFIG_FILE,
    TrajectoryWriter,
    open_trajectory,
    read_fixed_weights,
    write_fixed_weights,
)
from lca.storage.trajectory import stored_steps

BOOKKEEPING = {"num_iterations", "steps_recorded", "complete", "status", "resume", "resumed_at"}


def subsampled_run(source: Path, out: Path, k: int) -> np.ndarray:
    """``out``: the run of ``source``'s θ at steps 0, k, 2k, … and the last; its steps."""
    run = open_trajectory(source)
    steps = stored_steps(run.num_iterations, k)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy(source / CONFIG_FILE, out / CONFIG_FILE)
    if (source / "data.zarr").exists():
        shutil.copytree(source / "data.zarr", out / "data.zarr")
    attrs = {key: value for key, value in run.attrs.items() if key not in BOOKKEEPING}
    writer = TrajectoryWriter(
        out,
        num_iterations=len(steps) - 1,
        num_params=run.theta.shape[1],
        batch_size=None,
        train_indices=run.group["train_indices"][:],
        val_indices=run.group["val_indices"][:],
        attrs=attrs,
        steps=steps,
    )
    fixed = read_fixed_weights(run.group)
    if fixed is not None:
        write_fixed_weights(writer.group, fixed)
    writer.append(run.theta[0], None)
    for step in steps[1:]:
        writer.append(run.theta[int(step)], {})
    writer.close("complete")
    return steps


def compare(path_run: Path, chord_run: Path, steps: np.ndarray, split: str) -> dict:
    """The chord LCA of ``chord_run``'s segments against ``path_run``'s summed step LCA."""
    path, chord = lca.open_run(path_run), lca.open_run(chord_run)
    layers = path.layer_names
    index = path.layout.layer_index()
    L = len(layers)
    sums = {
        name: np.zeros(L) for name in ("chord", "path", "chord_abs", "path_abs")
    }  # fmt: skip
    helped = {"chord": [0, 0], "path": [0, 0]}  # negative, non-zero
    agree = [0, 0]
    step_lca, chord_lca = path.lca(split), chord.lca(split)
    for j in range(len(steps) - 1):
        p = step_lca[int(steps[j]) : int(steps[j + 1])].sum(axis=0, dtype=np.float64)
        c = np.asarray(chord_lca[j], np.float64)
        for name, values in (("chord", c), ("path", p)):
            sums[name] += np.bincount(index, weights=values, minlength=L)
            sums[f"{name}_abs"] += np.bincount(index, weights=np.abs(values), minlength=L)
            helped[name][0] += int(np.count_nonzero(values < 0))
            helped[name][1] += int(np.count_nonzero(values))
        moved = p != 0
        agree[0] += int(np.count_nonzero(np.sign(c[moved]) == np.sign(p[moved])))
        agree[1] += int(np.count_nonzero(moved))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "layers": layers,
            "chord_total": sums["chord"].tolist(),
            "path_total": sums["path"].tolist(),
            "kept_net": (sums["chord"] / sums["path"]).tolist(),
            "kept_gross": (sums["chord_abs"] / sums["path_abs"]).tolist(),
            "helped_chord_pct": 100 * helped["chord"][0] / max(helped["chord"][1], 1),
            "helped_path_pct": 100 * helped["path"][0] / max(helped["path"][1], 1),
            "sign_agreement": agree[0] / max(agree[1], 1),
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN",
        type=Path,
        help="an allocated run of every step (store: parameters)",
    )
    parser.add_argument("--k", default="1,2,5,10,20,50,110", help="segment lengths")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, help="where the k runs go (default: RUN-segments)")


def run(args: argparse.Namespace) -> None:
    source = args.source
    out = args.out or source.with_name(f"{source.name}-segments")
    if open_trajectory(source).segmented:
        sys.exit(f"{source}: stores θ in segments already; give a run of every step")
    rows = []
    for k in [int(v) for v in args.k.split(",")]:
        run_dir = out / f"k{k}"
        steps = subsampled_run(source, run_dir, k)
        start = time.perf_counter()
        summary = lca.allocate(run_dir, splits=[args.split], progress=False)
        seconds = time.perf_counter() - start
        result = compare(source, run_dir, steps, args.split)
        result.update(
            k=k,
            segments=len(steps) - 1,
            gradients_per_stored_step=summary.gradient_evaluations / max(len(steps) - 1, 1),
            seconds=seconds,
            verify_passed=bool(lca.verify_error(run_dir).passed),
        )
        rows.append(result)
        print(f"k={k}: {len(steps) - 1} segments in {seconds:.1f} s", file=sys.stderr)
    (out / "segments.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


def table(rows: list[dict]) -> str:
    layers = rows[0]["layers"]
    head = ["k", "segments", "% helped chord / path", "sign agreement"]
    head += [f"{n}: chord / path total (kept net, gross)" for n in layers]
    head += ["gradients / stored step", "seconds", "verify"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [
            str(r["k"]),
            str(r["segments"]),
            f"{r['helped_chord_pct']:.1f} / {r['helped_path_pct']:.1f}",
            f"{r['sign_agreement']:.3f}",
        ]
        cells += [
            f"{c:+.4f} / {p:+.4f} ({n:.2f}, {g:.2f})"
            for c, p, n, g in zip(r["chord_total"], r["path_total"], r["kept_net"], r["kept_gross"])
        ]
        cells += [
            f"{r['gradients_per_stored_step']:.1f}",
            f"{r['seconds']:.1f}",
            "pass" if r["verify_passed"] else "FAIL",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
