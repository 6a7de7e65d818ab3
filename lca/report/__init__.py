"""``lca report`` and ``lca describe``: what allocated runs show, in tables, text and figures.

:mod:`.make` runs a report (``report.md``, ``report.json``, figures) as a list of sections of
one shape (:mod:`.section`), built from the measurements of :mod:`.measures`: the headline and
paper sections :mod:`.sections` (their figures chosen by :mod:`.figures`), the direct views
:mod:`.views`, train vs validation :mod:`.splits`, the causes :mod:`.causes`, per class
:mod:`.per_class` (Markdown helpers in :mod:`.markdown`). Figures are drawn by :mod:`.plots`,
:mod:`.plots_overview`, :mod:`.plots_parameters`, :mod:`.plots_splits` and
:mod:`.plots_causes` in the look of :mod:`.style`. :mod:`.describe` summarises one run
directory; :mod:`.tensorboard` writes ``lca tensorboard``'s event files.
"""

from .describe import (
    RunDescription,
    describe_run,
)
from .make import (
    make_report,
    write_text,
)
from .measures import (
    Report,
    RunMeasures,
    Skipped,
    loss_unit,
    measure,
)
from .section import ReportRuns, Section
from .style import PlotStyle

__all__ = [
    "PlotStyle",
    "Report",
    "ReportRuns",
    "RunDescription",
    "RunMeasures",
    "Section",
    "Skipped",
    "describe_run",
    "loss_unit",
    "make_report",
    "measure",
    "write_text",
]
