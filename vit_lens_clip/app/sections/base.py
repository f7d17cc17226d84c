"""What a report section is: a name, the values it needs from earlier sections, the values it gives, and a
``run`` that reads the shared context and adds its numbers, CSV rows and page parts.

Adding a section: one file in this folder with one class following ``Section``, plus one entry in
``SECTIONS`` (``vit_lens_clip/app/sections/__init__.py``); the report runs them in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from vit_lens_clip.app.config import ReportConfig
from vit_lens_clip.loading import LoadedCLIP


@dataclass
class Task:
    """A zero-shot task: classifier columns, per-image labels (−1 = undefined for that image)."""

    name: str
    classnames: list[str]
    classifier: torch.Tensor
    labels: torch.Tensor


@dataclass
class ReportContext:
    """Everything sections share: the settings, the model, values passed between sections, and the outputs."""

    config: ReportConfig
    loaded: LoadedCLIP
    values: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    page: list[tuple[str, Any]] = field(default_factory=list)
    csv_rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # value name -> why no section gives it (one line)

    @property
    def out(self) -> Path:
        return self.config.out

    @property
    def progress(self) -> bool:
        return not self.config.quiet

    def record(self, section: str, metric: str, value: Any, **extra: Any) -> None:
        """One row of results.csv."""
        self.csv_rows.append({"section": section, "metric": metric, "value": value, **extra})

    def why_missing(self, name: str) -> str:
        """One line on why value ``name`` is absent (the reason a section that needs it is skipped)."""
        return self.missing.get(name, f"no earlier section gave {name!r}")

    def has(self, name: str) -> bool:
        """Whether an earlier section gave a usable value ``name`` (None and empty lists count as missing)."""
        value = self.values.get(name)
        return value is not None and not (isinstance(value, (list, tuple, dict)) and len(value) == 0)


@runtime_checkable  # so that run-time checks (beartype) can check annotations naming it
class Section(Protocol):
    """One part of the report. ``needs``: values it cannot run without (it is skipped when one is missing);
    ``uses``: values it reads when present; ``gives``: values it adds to ``ReportContext.values``."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]
    uses: ClassVar[tuple[str, ...]]
    gives: ClassVar[tuple[str, ...]]
    skippable: ClassVar[bool]
    grad: ClassVar[bool]  # False: run under torch.no_grad()

    def run(self, ctx: ReportContext) -> None: ...
