"""``lca report``: the paper's tables and pictures from allocated runs.

Every number comes from [`lca.analysis`][lca.analysis], which streams the (T, K) stores in blocks;
this
module only chooses what to measure, lays the numbers out as ``report.md`` / ``report.json``
and hands small arrays to `lca.report.figures`. Several runs of one configuration
(different seeds) give mean ± std and a per-layer sign test; ``vs`` adds a second group to
compare with. Per-layer measures work on every store level (``allocate.store``); what a store
did not keep is skipped, with a line saying how to get it. The report is a list of sections
(`SECTIONS`, each of the shape `lca.report.section.Section`): each is built from
the measured runs, draws its figures and writes its part of report.md and report.json.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import analysis
from ..storage import Run, RunError, location, open_run
from ..storage.base import writing_to
from ..storage.outputs import local_folder, write_text
from .causes import CausesSection
from .measures import Report, loss_unit
from .per_class import PerClassSection
from .section import ReportRuns, Section
from .sections import HeadlineSection, MeasuresSection, SkippedSection
from .splits import SplitsSection
from .style import PlotStyle
from .views import ViewsSection

__all__ = ["JSON_LAYOUT", "SECTIONS", "make_report", "write_text"]

#: The report's sections in reading order (report.md and the figures follow it).
SECTIONS: tuple[type[Section], ...] = (
    HeadlineSection,
    SkippedSection,
    MeasuresSection,
    ViewsSection,
    SplitsSection,
    CausesSection,
    PerClassSection,
)
#: report.json's top-level keys in the order written: a fixed layout for readers of the file,
#: whatever the order of the sections ("figures": every figure's file name, by key).
JSON_LAYOUT = (
    "split",
    "run_dirs",
    "vs_run_dirs",
    "layers",
    "headline",
    "runs",
    "across_runs",
    "sign_test",
    "vs_runs",
    "vs_across_runs",
    "vs_sign_test",
    "views",
    "skipped",
    "train_vs_validation",
    "per_class",
    "causes",
    "figures",
)


def _open_allocated(run_dirs: Sequence[str | Path], split: str) -> list[Run]:
    runs = []
    for run_dir in run_dirs:
        run = open_run(run_dir)
        run.require_allocated()
        run.loss(split)  # a one-line RunError when the split was not allocated
        runs.append(run)
    return runs


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
    target = location(out_dir) if out_dir is not None else runs[0].path / "report"
    # Each figure's cycles are collected as soon as it is written (PlotStyle.save); the
    # objects that were there before the report (TensorFlow's, in a notebook or a test
    # process: a full collection of them takes ~0.2 s) are set aside meanwhile, as they
    # outlive it.
    freeze = gc.get_freeze_count() == 0  # a caller's own gc.freeze() is left as it is
    if freeze:
        gc.freeze()
    try:
        with writing_to(  # disk full, read-only, no permission: the runs are only read
            f"the report to {target}",
            "the runs are not changed: free space or fix the permissions, then rerun "
            "`lca report`, or pass --out DIR for another folder",
        ):
            inputs = ReportRuns.measure(runs, others, split, frames, chunk_rows)
            with local_folder(target, "lca-report-") as out:
                report = _write_report(inputs, out)
    finally:
        if freeze:
            gc.unfreeze()
    return report if report.out_dir == target else report.moved_to(target)


def _segment_notes(inputs: ReportRuns) -> list[str]:
    """What an iteration is, for runs that store θ every k steps or from checkpoints."""
    notes = {run.trajectory.segment_note() for run in [*inputs.runs, *inputs.others]}
    return [
        f"> {note}. Measures counted in iterations (oscillation periods, iterations per "
        "direction change) count segments, not optimizer steps."
        for note in sorted(n for n in notes if n)
    ]


def _write_report(inputs: ReportRuns, out: Path) -> Report:
    """Build, draw and write every section into the local folder ``out``."""
    style = PlotStyle(loss_unit=inputs.loss_unit)
    entries: dict[str, Any] = {}
    figures: dict[str, Path] = {}
    texts = []
    for kind in SECTIONS:
        section = kind.from_runs(inputs)
        drawn = section.figures(out, style)
        figures.update(drawn)
        entries.update(section.data)
        texts.append(section.markdown(drawn))
    notes = _segment_notes(inputs)
    if notes:  # under the title, before the headline table
        head, sep, rest = texts[0].partition("\n\n## ")
        texts[0] = "\n\n".join([head, *notes]) + sep + rest
    entries["figures"] = {k: p.name for k, p in figures.items()}
    unknown = entries.keys() - set(JSON_LAYOUT)
    if unknown:
        raise AssertionError(f"report.json entries missing from JSON_LAYOUT: {sorted(unknown)}")
    data = analysis.jsonable({key: entries[key] for key in JSON_LAYOUT})
    headline = data["headline"]
    report = Report(
        out_dir=out,
        markdown=out / "report.md",
        json=out / "report.json",
        figures=figures,
        columns=headline["columns"],
        rows=[(label, cells) for label, cells in headline["rows"]],
        data=data,
    )
    write_text(report.json, json.dumps(data, separators=(",", ":"), allow_nan=False))
    write_text(report.markdown, "\n\n".join(t.rstrip("\n") for t in texts if t) + "\n")
    return report
