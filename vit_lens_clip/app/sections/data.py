"""The images and the zero-shot tasks every later section reads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from vit_lens_clip.app.sections.base import ReportContext, Task
from vit_lens_clip.app.sections.collection import load_collection
from vit_lens_clip.app.sections.tasks import class_names_file, class_task, shapes_tasks
from vit_lens_clip.datasets.folder import ImageFolder
from vit_lens_clip.datasets.shapes_adapters import ShapesScenes


def load_dataset(ctx: ReportContext) -> Dataset:
    """``--images`` as an image folder (class sub-folders give labels), else held-out synthetic scenes."""
    config = ctx.config
    if config.images:
        root = Path(config.images)
        labelled = root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())  # hidden: not a class
        return ImageFolder(root, ctx.loaded.preprocess, labelled=labelled)
    return ShapesScenes(config.n_images, ctx.loaded.preprocess, seed=config.seed)


def zero_shot_tasks(ctx: ReportContext, dataset: Dataset) -> list[Task]:
    """The shapes world's five attribute tasks, or one task over the folder's classes (none if unlabelled and
    no ``--classes``)."""
    config = ctx.config
    if isinstance(dataset, ShapesScenes):
        return shapes_tasks(ctx, dataset.attribute_labels)
    if not isinstance(dataset, ImageFolder):
        raise TypeError(f"the report reads an ImageFolder or ShapesScenes, got {type(dataset).__name__}")
    if dataset.classes:
        names = [c.replace("_", " ") for c in dataset.classes]
        if config.classes:  # e.g. ImageNet folders named by WordNet id: readable names, one per folder, in order
            names = class_names_file(config.classes)
            if len(names) != len(dataset.classes):
                raise ValueError(f"--classes has {len(names)} names for {len(dataset.classes)} class folders")
        labels = torch.tensor(dataset.labels)
    elif config.classes:
        names = class_names_file(config.classes)
        labels = None
    else:
        return []
    if labels is None:  # unlabelled: the model's own predictions are the reference (agreement curves)
        labels = torch.full((len(dataset),), -1)
    return [class_task(ctx, names, labels)]


class DataSection:
    """The images and tasks; with ``--from DIR`` the collection folder's parts instead (no images)."""

    name, needs, uses, skippable, grad = "data", (), (), False, False
    gives = ("dataset", "images", "tasks", "parts", "means", "contributions")  # the last three with --from

    def run(self, ctx: ReportContext) -> None:
        if ctx.config.source:
            load_collection(ctx)
            return
        ctx.values.images = True  # sections that draw their own images run only when the report has images
        dataset = load_dataset(ctx)
        ctx.values.dataset = dataset
        ctx.values.tasks = zero_shot_tasks(ctx, dataset)
        if not ctx.values.tasks:
            ctx.missing["tasks"] = "the images have no class labels; pass --classes FILE"
