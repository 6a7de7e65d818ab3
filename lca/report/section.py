"""The shape of a report section, and the measured runs every section is built from.

A section is made by one constructor, ``from_runs(runs: ReportRuns)``, which reads what it
needs; it then holds its ``report.json`` entries (``data``), draws its figures
(``figures(out_dir, style)``) and writes its ``report.md`` text (``markdown(figures)``).
[`lca.report.make_report`][lca.report.make.make_report] builds the sections in reading order and
puts their parts
together; nothing else passes between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..analysis import statistics
from ..locations import is_remote, location
from ..storage import Run
from .measures import RunMeasures, loss_unit, measure
from .style import PlotStyle


@dataclass
class ReportRuns:
    """The runs of one report, opened and measured once: what every section starts from.

    ``runs`` are one configuration's runs (the first is drawn alone), ``others`` the
    compared group; ``group`` and ``vs_group`` their measures, ``stats`` and ``sign`` (and
    ``vs_…``) their numbers across runs.
    """

    runs: list[Run]
    others: list[Run]
    split: str
    frames: int
    chunk_rows: int
    loss_unit: str
    group: list[RunMeasures]
    vs_group: list[RunMeasures]
    stats: dict
    sign: dict | None
    vs_stats: dict | None
    vs_sign: dict | None

    @classmethod
    def measure(
        cls, runs: list[Run], others: list[Run], split: str, frames: int, chunk_rows: int
    ) -> ReportRuns:
        """Measure every run (the first group also on its other split)."""
        group = [measure(r, split, chunk_rows, compare_splits=True) for r in runs]
        vs_group = [measure(r, split, chunk_rows) for r in others]
        stats, sign = group_stats(group)
        vs_stats, vs_sign = group_stats(vs_group) if vs_group else (None, None)
        return cls(
            runs=runs, others=others, split=split, frames=frames, chunk_rows=chunk_rows,
            loss_unit=loss_unit(runs[0]), group=group, vs_group=vs_group, stats=stats,
            sign=sign, vs_stats=vs_stats, vs_sign=vs_sign,
        )  # fmt: skip

    @property
    def first(self) -> RunMeasures:
        """The measures of the run the single-run figures show."""
        return self.group[0]

    @property
    def layers(self) -> list[str]:
        return self.first.layers

    @property
    def columns(self) -> list[str]:
        """The headline's column names: the group, and the compared group if any."""
        names = [label([r.path for r in self.runs])]
        if self.others:
            names.append(label([r.path for r in self.others], vs=True))
        return names


class Section(Protocol):
    """One part of a report: its report.json entries, its figures, its report.md text."""

    data: dict[str, Any]  # top-level entries of report.json (JSON-able)

    @classmethod
    def from_runs(cls, runs: ReportRuns) -> Section: ...

    def figures(self, out_dir: Path, style: PlotStyle) -> dict[str, Path]:
        """Draw this section's figures into ``out_dir``: name in report.json → file."""
        ...

    def markdown(self, figures: Mapping[str, Path]) -> str:
        """This section's report.md text (empty: none), linking ``figures`` (what it drew)."""
        ...


def image(figures: Mapping[str, Path], key: str, alt: str) -> str:
    """A Markdown image of a drawn figure, or "" when it was not drawn."""
    path = figures.get(key)
    return f"![{alt}]({path.name})" if path is not None else ""


def group_stats(measures: list[RunMeasures]) -> tuple[dict, dict | None]:
    """across_runs of the headline numbers, and the per-layer sign test (two runs or more)."""
    numbers = [m.headline() for m in measures]
    stats = statistics.across_runs(numbers)
    stats["sync_p_value"]["max"] = max(n["sync_p_value"] for n in numbers)
    sign = None
    if len(measures) > 1:
        sign = statistics.sign_test(np.stack([m.totals for m in measures]))
    return stats, sign


def label(run_dirs: Sequence[Path], vs: bool = False) -> str:
    """Column name of a group: the run's name, or how many runs; ``vs`` marks the second."""
    prefix = "vs " if vs else ""
    if len(run_dirs) == 1:
        path = location(run_dirs[0])
        return prefix + ((path if is_remote(path) else path.resolve()).name or "run")
    return f"{prefix}{len(run_dirs)} runs"
