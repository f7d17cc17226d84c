"""What report sections write: numbers (results.json), page parts (title, Markdown or figure) and CSV rows.

The report's context is one (``app.sections.base.ReportContext``); a command that shares a section's code
(``vit-lens-clip neurons``) writes into a fresh one and saves it its own way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True)
class ReportOutput:
    """Numbers by section name, the page's (title, content) parts in order, and the rows of results.csv."""

    numbers: dict[str, Any] = field(default_factory=dict)
    page: list[tuple[str, Any]] = field(default_factory=list)
    csv_rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self, section: str, metric: str, value: Any, **extra: Any) -> None:
        """One row of results.csv."""
        self.csv_rows.append({"section": section, "metric": metric, "value": value, **extra})
