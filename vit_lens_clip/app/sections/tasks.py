"""Zero-shot tasks of the report: the shapes world's five attributes, or one task over a dataset's classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vit_lens_clip.app.sections.base import ReportContext, Task
from vit_lens_clip.datasets.shapes_world import zero_shot_labels
from vit_lens_clip.methods.zeroshot import build_classifier

SIMPLE_TEMPLATES = (lambda c: f"a photo of a {c}.", lambda c: f"a {c}.", lambda c: f"an image of a {c}.")
SHAPES_TASKS = ("shape", "colour", "position", "place", "count")


def class_names_file(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def shapes_tasks(ctx: ReportContext, attribute_labels: dict[str, Sequence[int | None]]) -> list[Task]:
    """One task per shapes-world attribute; labels per dataset index (−1 where the attribute is undefined)."""
    tasks = []
    for attribute in SHAPES_TASKS:
        names, templates = zero_shot_labels(attribute)
        labels = torch.tensor([-1 if v is None else v for v in attribute_labels[attribute]])
        tasks.append(Task(attribute, names, build_classifier(ctx.loaded, names, templates), labels))
    return tasks


def class_task(ctx: ReportContext, names: list[str], labels: torch.Tensor) -> Task:
    """One task over ``names`` (simple templates); ``labels`` per dataset index, −1 = unlabelled."""
    return Task("classes", names, build_classifier(ctx.loaded, names, SIMPLE_TEMPLATES), labels)
