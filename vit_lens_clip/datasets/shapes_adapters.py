"""The synthetic shapes world as the datasets the methods and the report read (items in the formats of
``datasets.folder`` and ``datasets.segmentation``), and the defaults of its tasks (class names, templates, the
spurious-cue set, its groups and place queries). Every shapes-world adapter lives here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens_clip.datasets.segmentation import make_item
from vit_lens_clip.datasets.shapes_world import (
    ATTRIBUTES,
    BIRDS,
    COLOURS,
    COUNTS,
    PLACE_GROUPS,
    PLACES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapesDataset,
    ShapesWorld,
    SpuriousBirdsDataset,
    label_of,
    place_phrase,
    position_phrase,
    zero_shot_labels,
)


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


def sample_scenes(n: int, seed: int, image_size: int = 64) -> list[Scene]:
    """``n`` shapes-world scenes from the seeded stream ``seed`` (the shipped SAE's training and figures)."""
    world = ShapesWorld(image_size=image_size, seed=seed)
    rng = np.random.default_rng([seed, 2_000_003])
    return [world.sample(rng) for _ in tqdm(range(n), desc="rendering scenes", disable=n < 500)]


def scene_images(preprocess: Callable, scenes: Sequence[Scene]) -> Float[Tensor, "n channel height width"]:
    """The scenes as model inputs."""
    return torch.stack([preprocess(s.pil()) for s in scenes])


def shapes_images(preprocess: Callable, n: int, seed: int, task: str = "shape", progress: bool = False) -> tuple[
        Float[Tensor, "n channel height width"], Int[Tensor, " n"]]:
    """``n`` shapes-world scenes as model inputs and their labels for ``task`` (−1 where undefined)."""
    data = ShapesDataset(n, seed=seed)

    def image_and_label(i: int) -> tuple[Tensor, int]:
        scene = data.scene(i)
        label = label_of(scene.attributes, task)
        return preprocess(scene.pil()), -1 if label is None else label

    items = [image_and_label(i) for i in tqdm(range(n), desc="rendering scenes", disable=not progress)]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def shapes_texts() -> dict[str, list[str]]:
    """Attribute → short texts naming each of its values, worded like the world's captions."""
    return {
        "colour": [f"a {c} shape" for c in COLOURS],
        "shape": [f"a {s}" for s in SHAPES],
        "position": [f"a shape {position_phrase(p)}" for p in POSITIONS],
        "place": [f"a shape {place_phrase(p)}" for p in PLACES],
        "count": ["one shape", "two shapes", "three shapes"][: len(COUNTS)],
        "size": [f"a {z} shape" for z in SIZES],
    }


def shapes_classes() -> tuple[list[str], list[Callable[[str], str]]]:
    """Class names and templates for the shapes world's zero-shot segmentation (the shape of the objects)."""
    return zero_shot_labels("shape")


# ------------------------------------------------------------------------------------- the spurious-cue task
# the shapes world's text tower only knows its own captions' words, so it is asked about places in them
SHAPES_PLACE_QUERIES: tuple[str, ...] = tuple(place_phrase(p) for p in PLACES)


def shapes_group_names() -> dict[int, str]:
    """Names of the shapes world's four bird groups (group = 2 * bird index + place-group index)."""
    return {2 * b + p: f"{bird} on {place}" for b, bird in enumerate(BIRDS) for p, place in enumerate(PLACE_GROUPS)}


def shapes_bird_classes() -> tuple[list[str], list[Callable[[str], str]]]:
    """Class names and templates for the shapes world's landbird / waterbird zero-shot task."""
    return zero_shot_labels("bird")


def shapes_eval_set(preprocess: Callable, n_images: int = 400, seed: int = 0,
                    bird_size: str | None = None) -> SpuriousBirdsDataset:
    """The shapes world's balanced spurious evaluation set (item i is in group i % 4).

    Birds are drawn at the training size by default; ``bird_size="large"`` draws bigger glyphs than training
    used (a shifted set where the bird is easier to read).
    """
    return SpuriousBirdsDataset(n_images, seed=seed, split="eval", transform=preprocess, bird_size=bird_size)
