"""The synthetic shapes world as the datasets the methods and the report read (items in the formats of
``datasets.folder`` and ``datasets.segmentation``). Every shapes-world adapter lives here."""

from __future__ import annotations

from typing import Any, Callable

from vit_lens_clip.datasets.segmentation import make_item
from vit_lens_clip.datasets.shapes_world import ATTRIBUTES, ShapesDataset, ShapesWorld, label_of, zero_shot_labels


class ShapesScenes(ShapesDataset):
    """Held-out synthetic scenes with every attribute's label; items follow ``datasets.folder``'s format."""

    def __init__(self, n: int, preprocess: Callable, seed: int = 0, task: str = "shape"):
        super().__init__(n, seed)
        self.preprocess, self.task = preprocess, task
        self.scenes = [self.scene(i) for i in range(n)]
        self.attribute_labels = {a: [label_of(s.attributes, a) for s in self.scenes] for a in ATTRIBUTES}

    def __getitem__(self, i: int) -> dict[str, Any]:
        label = self.attribute_labels[self.task][i]
        return {"index": i, "name": f"scene-{i}", "label": -1 if label is None else label,
                "image": self.preprocess(self.scenes[i].pil())}


class ShapesSegmentation(ShapesDataset):
    """Scenes of the synthetic shapes world as a segmentation dataset (foreground = every object's pixels).

    A view over ``ShapesDataset``: scene ``i`` comes from its own seeded stream, so items are reproducible and
    independent of order. Items have the keys of ``vit_lens_clip.datasets.segmentation`` plus ``caption`` and
    ``shape``.
    """

    def __init__(self, n_scenes: int, preprocess: Callable, image_size: int = 64, seed: int = 0,
                 include_original: bool = True):
        if n_scenes < 1:
            raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
        super().__init__(n_scenes, seed, world=ShapesWorld(image_size=image_size, seed=seed))
        self.preprocess, self.include_original = preprocess, include_original

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} scenes")
        scene = self.scene(index)
        item = make_item(index, f"scene-{index}", scene.image, scene.foreground, self.preprocess,
                         self.include_original)
        item["caption"] = scene.caption
        item["shape"] = scene.attributes.shape
        return item


def shapes_classes() -> tuple[list[str], list[Callable[[str], str]]]:
    """Class names and templates for the shapes world's zero-shot segmentation (the shape of the objects)."""
    return zero_shot_labels("shape")
