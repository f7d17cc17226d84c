"""The images and the zero-shot tasks every later section reads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from vit_lens_clip.app.sections.base import ReportContext, Task
from vit_lens_clip.datasets.folder import ImageFolder
from vit_lens_clip.datasets.shapes_adapters import ShapesScenes
from vit_lens_clip.datasets.shapes_world import zero_shot_labels
from vit_lens_clip.methods.zeroshot import build_classifier

SIMPLE_TEMPLATES = (lambda c: f"a photo of a {c}.", lambda c: f"a {c}.", lambda c: f"an image of a {c}.")
SHAPES_TASKS = ("shape", "colour", "position", "place", "count")


def _class_names_file(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def load_dataset(ctx: ReportContext) -> Dataset:
    """``--images`` as an image folder (class sub-folders give labels), else held-out synthetic scenes."""
    config = ctx.config
    if config.images:
        root = Path(config.images)
        labelled = root.is_dir() and any(p.is_dir() for p in root.iterdir())
        return ImageFolder(root, ctx.loaded.preprocess, labelled=labelled)
    return ShapesScenes(config.n_images, ctx.loaded.preprocess, seed=config.seed)


def zero_shot_tasks(ctx: ReportContext, dataset: Dataset) -> list[Task]:
    """The shapes world's five attribute tasks, or one task over the folder's classes (none if unlabelled and
    no ``--classes``)."""
    loaded, config = ctx.loaded, ctx.config
    if isinstance(dataset, ShapesScenes):
        tasks = []
        for attribute in SHAPES_TASKS:
            names, templates = zero_shot_labels(attribute)
            labels = torch.tensor([-1 if v is None else v for v in dataset.attribute_labels[attribute]])
            tasks.append(Task(attribute, names, build_classifier(loaded, names, templates), labels))
        return tasks
    if not isinstance(dataset, ImageFolder):
        raise TypeError(f"the report reads an ImageFolder or ShapesScenes, got {type(dataset).__name__}")
    if dataset.classes:
        names = [c.replace("_", " ") for c in dataset.classes]
        if config.classes:  # e.g. ImageNet folders named by WordNet id: readable names, one per folder, in order
            names = _class_names_file(config.classes)
            if len(names) != len(dataset.classes):
                raise ValueError(f"--classes has {len(names)} names for {len(dataset.classes)} class folders")
        labels = torch.tensor(dataset.labels)
    elif config.classes:
        names = _class_names_file(config.classes)
        labels = None
    else:
        return []
    classifier = build_classifier(loaded, names, SIMPLE_TEMPLATES)
    if labels is None:  # unlabelled: the model's own predictions are the reference (agreement curves)
        labels = torch.full((len(dataset),), -1)
    return [Task("classes", names, classifier, labels)]


class DataSection:
    name, needs, uses, gives, skippable, grad = "data", (), (), ("dataset", "tasks"), False, False

    def run(self, ctx: ReportContext) -> None:
        dataset = load_dataset(ctx)
        ctx.values["dataset"] = dataset
        ctx.values["tasks"] = zero_shot_tasks(ctx, dataset)
