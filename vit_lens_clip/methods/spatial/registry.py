"""Every patch-map method of the segmentation benchmark, in one registry with one call signature.

Each entry maps ``(model, images, classifier, labels)`` to patch maps [batch, grid_h, grid_w]: ``classifier``
holds the class texts as columns [d_out, n_classes] and ``labels`` the class to explain per image. Methods that
take no text (``needs_text=False``) ignore both. Adding a baseline: one function in ``baselines.py`` (or
anywhere) and one ``MapMethod`` entry below; the benchmark, the ``segment`` command and the report pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.methods.spatial.baselines import attention_rollout, chefer, gradcam, raw_attention
from vit_lens_clip.methods.spatial.heatmaps import class_heatmap
from vit_lens_clip.model.hooked_vit import HookedViT

MapFunction = Callable[
    [HookedViT, Float[Tensor, "batch channel height width"], Float[Tensor, "d_out n_classes"], Int[Tensor, " batch"]],
    Float[Tensor, "batch grid_h grid_w"],
]


@dataclass(frozen=True)
class MapMethod:
    """A registry entry: key, display title, whether it reads the class text, and the map function."""

    name: str
    title: str
    needs_text: bool
    compute: MapFunction


def _class_columns(classifier: Tensor, labels: Tensor) -> Tensor:
    """The explained class's text per image, [batch, d_out]."""
    return classifier[:, labels].T


MAP_METHODS: dict[str, MapMethod] = {m.name: m for m in (
    MapMethod("decomposition", "decomposition (this method)", True,
              lambda model, images, classifier, labels: class_heatmap(model, images, classifier, labels=labels)),
    MapMethod("raw_attention", "raw attention", False,
              lambda model, images, classifier, labels: raw_attention(model, images)),
    MapMethod("rollout", "rollout", False,
              lambda model, images, classifier, labels: attention_rollout(model, images)),
    MapMethod("gradcam", "GradCAM", True,
              lambda model, images, classifier, labels: gradcam(model, images, _class_columns(classifier, labels))),
    MapMethod("chefer", "Chefer et al. 2021", True,
              lambda model, images, classifier, labels: chefer(model, images, _class_columns(classifier, labels))),
)}
