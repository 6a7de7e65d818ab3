"""``lca report``: the paper's tables and pictures from allocated runs.

Every number comes from :mod:`lca.analysis`, which streams the (T, K) stores in blocks; this
module only chooses what to measure, lays the numbers out as ``report.md`` / ``report.json``
and hands small arrays to :mod:`lca.report.figures`. Several runs of one configuration
(different seeds) give mean ± std and a per-layer sign test; ``vs`` adds a second group to
compare with. Per-layer measures work on every store level (``allocate.store``); what a store
did not keep is skipped, with a line saying how to get it. A run allocated on both splits adds
"Train vs validation by component" (:mod:`lca.report.splits`); one allocated with ``--causes``
adds "Why parameters hurt" (:mod:`lca.report.causes`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import analysis
from ..analysis import statistics
from ..storage import Run, RunError, is_remote, location, open_run
from ..storage.base import writing_to
from . import causes as report_causes
from . import figures as report_figures
from . import plots, plots_parameters
from . import splits as report_splits
from .measures import (
    PER_CLASS_NA,
    TOP_MOMENTS,
    Report,
    RunMeasures,
    _neuron_view_layer,
    _per_class,
    _per_parameter_skip,
    _skipped_views,
    loss_unit,
    measure,
)
from .sections import _group_rows, _img, _markdown, _per_class_markdown, _skip_lines

# --- measurements of one run ----------------------------------------------------------------


# --- the report object ----------------------------------------------------------------------


# --- formatting -----------------------------------------------------------------------------


# --- the report -----------------------------------------------------------------------------


def _open_allocated(run_dirs: Sequence[str | Path], split: str) -> list[Run]:
    runs = []
    for run_dir in run_dirs:
        run = open_run(run_dir)
        run.require_allocated()
        run.loss(split)  # a one-line RunError when the split was not allocated
        runs.append(run)
    return runs


def _group_stats(measures: list[RunMeasures]) -> tuple[dict, dict | None]:
    """across_runs of the headline numbers, and the per-layer sign test (two runs or more)."""
    numbers = [m.headline() for m in measures]
    stats = statistics.across_runs(numbers)
    stats["sync_p_value"]["max"] = max(n["sync_p_value"] for n in numbers)
    sign = None
    if len(measures) > 1:
        sign = statistics.sign_test(np.stack([m.totals for m in measures]))
    return stats, sign


def _label(run_dirs: Sequence[Path], vs: bool = False) -> str:
    """Column name of a group: the run's name, or how many runs; ``vs`` marks the second."""
    prefix = "vs " if vs else ""
    if len(run_dirs) == 1:
        path = location(run_dirs[0])
        return prefix + ((path if is_remote(path) else path.resolve()).name or "run")
    return f"{prefix}{len(run_dirs)} runs"


def make_report(
    run_dirs: Sequence[str | Path],
    split: str = "train",
    out_dir: str | Path | None = None,
    vs: Sequence[str | Path] | None = None,
    frames: int = 40,
    chunk_rows: int = 64,
) -> Report:
    """Measure allocated runs the paper's way; write report.md, report.json and the figures.

    ``run_dirs`` are runs of one configuration (seeds); figures of a single run show the
    first. ``vs`` is a second group compared layer by layer. Runs must share their layers.
    ``frames`` (at most 40) is the number of iterations the animation samples.
    """
    if not run_dirs:
        raise RunError("no run directories given")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    frames = min(frames, 40)
    runs = _open_allocated(run_dirs, split)
    others = _open_allocated(vs, split) if vs else []
    layers = list(runs[0].layout.layers)
    for run in runs[1:] + others:
        if list(run.layout.layers) != layers:
            raise RunError(
                f"{run.path}: layers {run.layout.layers} differ from {runs[0].path}'s {layers}"
            )
    units = {loss_unit(r) for r in runs + others}
    if len(units) > 1:
        raise RunError(f"runs with different losses ({', '.join(sorted(units))}) in one report")
    token = plots.LOSS_UNIT.set(units.pop())
    target = out_dir if out_dir is not None else runs[0].path / "report"
    # Each figure's cycles are collected as soon as it is written (plots._save); the objects
    # that were there before the report (TensorFlow's, in a notebook or a test process: a
    # full collection of them takes ~0.2 s) are set aside meanwhile, as they outlive it.
    freeze = gc.get_freeze_count() == 0  # a caller's own gc.freeze() is left as it is
    if freeze:
        gc.freeze()
    try:
        with writing_to(  # disk full, read-only, no permission: the runs are only read
            f"the report to {target}",
            "the runs are not changed: free space or fix the permissions, then rerun "
            "`lca report`, or pass --out DIR for another folder",
        ):
            return _make_report(runs, others, layers, split, out_dir, frames, chunk_rows)
    finally:
        if freeze:
            gc.unfreeze()
        plots.LOSS_UNIT.reset(token)


def write_text(path: Path, text: str) -> None:
    """Write a report file whole or not at all: a failed write leaves the previous copy."""
    if is_remote(path):
        path.write_text(text)
        return
    temp = path.with_name(f".{path.name}.partial")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _make_report(runs, others, layers, split, out_dir, frames, chunk_rows) -> Report:
    """make_report's work, with the loss unit set."""
    target = location(out_dir) if out_dir is not None else runs[0].path / "report"
    # Figures are drawn into a local folder; for a URL target they are uploaded at the end.
    out = Path(tempfile.mkdtemp(prefix="lca-report-")) if is_remote(target) else target
    out.mkdir(parents=True, exist_ok=True)

    group = [measure(r, split, chunk_rows, compare_splits=True) for r in runs]
    vs_group = [measure(r, split, chunk_rows) for r in others]
    first = group[0]
    stats, sign = _group_stats(group)
    columns = [_label([r.path for r in runs])]
    cells = [_group_rows(layers, stats, sign)]
    vs_stats, vs_sign = (None, None)
    if vs_group:
        vs_stats, vs_sign = _group_stats(vs_group)
        columns.append(_label([r.path for r in others], vs=True))
        cells.append(_group_rows(layers, vs_stats, vs_sign))
    rows = [(label, [c[i][1] for c in cells]) for i, (label, _) in enumerate(cells[0])]

    figures = report_figures.run_figures(first, out, TOP_MOMENTS)
    figures.update(
        report_figures.comparison_figures(group, vs_group, columns, sign, vs_sign, layers, out)
    )
    views = report_figures.views(runs[0], split, frames, chunk_rows, out)
    figures.update(views["figures"])
    skipped = _skipped_views(runs[0])
    splits = None
    if report_splits.has_both_splits(runs[0]):
        series = {split: first.series, first.other_split: first.other_series}
        splits = report_splits.compare_splits(
            runs[0], series, first.sync_min_fraction, TOP_MOMENTS, chunk_rows
        )
        figures.update(report_splits.figures(splits, out))
    causes = None
    if runs[0].has_causes:
        causes = report_causes.causes_section(runs[0], split, out)
        figures.update(causes.figures)
    per_class = _per_class(runs[0], split, first.sync_min_fraction, chunk_rows)
    if per_class is not None and _neuron_view_layer(runs[0]) and per_class["neuron"] is None:
        skipped.append(_per_parameter_skip(runs[0], "a neuron's input weights as an image (S22)"))
    if per_class is not None and per_class["neuron"] is not None:
        n = per_class["neuron"]
        figures["s22_neuron"] = plots_parameters.neuron_view(
            n["layer"], n["unit"], n["class_curves"], n["input_lca"], out / "s22_neuron.png"
        )
        per_class["neuron"] = {"layer": n["layer"], "unit": n["unit"]}

    data = {
        "split": split,
        "run_dirs": [str(r.path) for r in runs],
        "vs_run_dirs": [str(r.path) for r in others],
        "layers": layers,
        "headline": {"columns": columns, "rows": [[label, c] for label, c in rows]},
        "runs": [m.to_dict() for m in group],
        "across_runs": stats,
        "sign_test": sign,
        "vs_runs": [m.to_dict() for m in vs_group],
        "vs_across_runs": vs_stats,
        "vs_sign_test": vs_sign,
        "views": views["info"],
        "skipped": [
            {"run_dir": str(m.run_dir), **dataclasses.asdict(k)}
            for m in group + vs_group
            for k in m.skipped
        ]
        + [{"run_dir": str(runs[0].path), **dataclasses.asdict(k)} for k in skipped],
        "train_vs_validation": splits.to_dict() if splits is not None else None,
        "per_class": per_class,
        "causes": causes.data if causes is not None else None,
        "figures": {k: p.name for k, p in figures.items()},
    }
    data = analysis.jsonable(data)
    report = Report(
        out_dir=out,
        markdown=out / "report.md",
        json=out / "report.json",
        figures=figures,
        columns=columns,
        rows=rows,
        data=data,
    )
    write_text(report.json, json.dumps(data, separators=(",", ":"), allow_nan=False))
    markdown = _markdown(
        report, group, vs_group, stats, sign, _skip_lines(group, vs_group, skipped)
    )
    if splits is not None:
        markdown = markdown.rstrip("\n") + "\n\n" + report_splits.markdown(splits, figures)
    if causes is not None:
        markdown = markdown.rstrip("\n") + "\n\n" + causes.markdown
    model_cfg = runs[0].config.model
    if not model_cfg.classification:  # say why the class sections are absent
        markdown = markdown.rstrip("\n") + "\n\n" + PER_CLASS_NA.format(loss=model_cfg.loss)
    if per_class is not None:
        markdown = markdown.rstrip("\n") + "\n\n" + _per_class_markdown(per_class) + "\n"
        if "s22_neuron" in figures:
            n = per_class["neuron"]
            markdown += (
                f"\n{_img(report, 's22_neuron', 'one neuron by class')}\n\nHow to read (S22): "
                f"unit {n['unit']} of {n['layer']}, the one that helped most: its LCA summed "
                "over training per class (left; the classes it serves fall below zero) and "
                "the total LCA of each of its input weights laid out as the input image "
                "(right; green pixels helped).\n"
            )
    write_text(report.markdown, markdown)
    if out is not target:
        return _upload(report, target)
    return report


def _upload(report: Report, target) -> Report:
    """Copy a report drawn locally to its URL (``s3://…/report``); return it with URL paths."""
    target.fs.put(str(report.out_dir) + "/", target.path, recursive=True)
    shutil.rmtree(report.out_dir, ignore_errors=True)
    return dataclasses.replace(
        report,
        out_dir=target,
        markdown=target / report.markdown.name,
        json=target / report.json.name,
        figures={k: target / p.name for k, p in report.figures.items()},
    )


# --- report.md ------------------------------------------------------------------------------
