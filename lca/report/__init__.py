"""``lca report`` and ``lca describe``: what allocated runs show, in tables, text and figures.

`make` runs a report (``report.md``, ``report.json``, figures) as a list of sections of
one shape (`section`), built from the measurements of `measures`: the headline and
paper sections `sections` (their figures chosen by `figures`), the direct views
`views`, train vs validation `splits`, the causes `causes`, per class
`per_class` (Markdown helpers in `markdown`). Figures are drawn by `plots`,
`plots_overview`, `plots_parameters`, `plots_splits` and
`plots_causes` in the look of `style`. `describe` summarises one run
directory; `tensorboard` writes ``lca tensorboard``'s event files.
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
