"""Numbers and tables as report.md writes them (shared by the report's sections)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def num(v: float | None, spec: str) -> str:
    """``v`` formatted, or "n/a" for a missing or non-finite value."""
    return format(v, spec) if v is not None and math.isfinite(v) else "n/a"


def escape(text: str) -> str:
    """A table cell: a bare | would end the cell."""
    return text.replace("|", "\\|")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(escape(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)
