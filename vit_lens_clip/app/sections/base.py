"""What a report section is: a name, the values it needs from earlier sections, the values it gives, and a
``run`` that reads the shared context and adds its numbers, CSV rows and page parts.

Values pass between sections through ``ReportValues``, one typed field per value; a section declares the field
names it needs, uses and gives, and the report checks after each run that it set only the ones it gives.

Adding a section: one file in this folder with one class following ``Section``, plus one entry in
``SECTIONS`` (``vit_lens_clip/app/sections/__init__.py``); the report runs them in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Optional, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from vit_lens_clip.app.config import ReportConfig
from vit_lens_clip.app.report_output import ReportOutput
from vit_lens_clip.decompose import Decomposition
from vit_lens_clip.loading import LoadedCLIP
from vit_lens_clip.methods.textspan.runs import HeadContributions, TextSpanTable


@dataclass
class Task:
    """A zero-shot task: classifier columns, per-image labels (−1 = undefined for that image)."""

    name: str
    classnames: list[str]
    classifier: torch.Tensor
    labels: torch.Tensor


@dataclass
class ReportValues:
    """The values sections give each other (None: no section gave it)."""

    dataset: Optional[Dataset] = None  # the report's images, one item per image
    images: Optional[bool] = None  # True when the report has images (sections that draw their own run then)
    tasks: Optional[list[Task]] = None  # zero-shot tasks, labels per dataset index
    parts: Optional[Decomposition] = None  # every image's folded parts
    means: Optional[dict[str, torch.Tensor]] = None  # the parts' dataset means
    contributions: Optional[HeadContributions] = None  # the kept layers' head contributions
    textspan_table: Optional[TextSpanTable] = None  # TextSpan of the kept heads
    pool: Optional[list[str]] = None  # the TextSpan text pool
    pool_emb: Optional[torch.Tensor] = None  # its unit text embeddings [n_texts, d_out]
    # the segmentation scenes' predicted shape labels and decomposition maps, with the scenes they are for
    # ({"seed", "n", "labels" [n], "decomposition" [n, grid_h, grid_w]}): the SAE section scores on the same scenes
    segmentation_maps: Optional[dict[str, Any]] = None

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    def has(self, name: str) -> bool:
        """Whether value ``name`` is usable (None and empty lists count as missing)."""
        value = getattr(self, name)
        return value is not None and not (isinstance(value, (list, tuple, dict)) and len(value) == 0)


@dataclass(kw_only=True)
class ReportContext(ReportOutput):
    """Everything sections share: the settings, the model, the values passed between them, and the outputs."""

    config: ReportConfig
    loaded: LoadedCLIP
    values: ReportValues = field(default_factory=ReportValues)
    timings: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # value name -> why no section gives it (one line)

    @property
    def out(self) -> Path:
        return self.config.out

    @property
    def progress(self) -> bool:
        return not self.config.quiet

    def why_missing(self, name: str) -> str:
        """One line on why value ``name`` is absent (the reason a section that needs it is skipped)."""
        return self.missing.get(name, f"no earlier section gave {name!r}")

    def has(self, name: str) -> bool:
        """Whether an earlier section gave a usable value ``name``."""
        return self.values.has(name)


class SectionSkipped(Exception):
    """Raised by a section's ``run`` before it writes anything, when the values it got cannot give its result
    (e.g. no image has a label); the message is listed as the reason it was skipped."""


@runtime_checkable  # so that run-time checks (beartype) can check annotations naming it
class Section(Protocol):
    """One part of the report. ``needs``: values it cannot run without (it is skipped when one is missing);
    ``uses``: values it reads when present; ``gives``: values it sets on ``ReportContext.values``. All three
    name fields of ``ReportValues``."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]
    uses: ClassVar[tuple[str, ...]]
    gives: ClassVar[tuple[str, ...]]
    skippable: ClassVar[bool]
    grad: ClassVar[bool]  # False: run under torch.no_grad()

    def run(self, ctx: ReportContext) -> None: ...
