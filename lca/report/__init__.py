"""``lca report`` and ``lca describe``: what allocated runs show, in tables, text and figures.

:mod:`.make` runs a report (``report.md``, ``report.json``, figures) from the measurements of
:mod:`.measures`, laid out by :mod:`.sections` (Markdown helpers in :mod:`.markdown`), drawn by
:mod:`.figures` with :mod:`.plots`, :mod:`.plots_parameters` and :mod:`.plots_splits`; the
train-vs-validation section is :mod:`.splits`. :mod:`.describe` summarises one run directory.
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

__all__ = [
    "Report",
    "RunDescription",
    "RunMeasures",
    "Skipped",
    "describe_run",
    "loss_unit",
    "make_report",
    "measure",
    "write_text",
]
