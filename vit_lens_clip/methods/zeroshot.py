"""Zero-shot classification: class names × templates → a classifier (open_clip's builder), and accuracy."""

from __future__ import annotations

from typing import Callable, Sequence, Union

import open_clip
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.errors import BadInputError

Template = Union[str, Callable[[str], str]]


def build_classifier(
    loaded, classnames: Sequence[str], templates: Sequence[Template], progress: bool = False, classes_per_batch: int = 10
) -> Float[Tensor, "d_out n_classes"]:
    """Each class: embed every template, normalise, average, normalise again (open_clip's builder).

    Templates are format strings with one ``{}`` (for the class name) or callables name → text.
    """
    for what, given in (("classnames", classnames), ("templates", templates)):
        if isinstance(given, str):
            raise BadInputError(f"{what} must be a list, got the string {given!r}")
    if not classnames or not templates:
        raise ValueError("build_classifier needs at least one class name and one template")
    for template in templates:
        if isinstance(template, str) and "{}" not in template:
            raise BadInputError(f"template {template!r} has no '{{}}' for the class name: every class would get "
                                "the same text")
    templates = list(templates)
    if any(isinstance(t, str) for t in templates) and not all(isinstance(t, str) for t in templates):
        templates = [t.format if isinstance(t, str) else t for t in templates]  # open_clip takes one kind only
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(
            loaded.clip,
            tokenizer=loaded.tokenizer,
            classnames=list(classnames),
            templates=templates,
            num_classes_per_batch=classes_per_batch,
            device=loaded.device,
            use_tqdm=progress,
        )
    return weights.float()


def imagenet_classifier(loaded, progress: bool = True) -> Float[Tensor, "d_out 1000"]:
    """The ImageNet classifier from open_clip's class names and its 80 OpenAI templates."""
    return build_classifier(loaded, open_clip.IMAGENET_CLASSNAMES, open_clip.OPENAI_IMAGENET_TEMPLATES, progress)


def logits(
    embeddings: Float[Tensor, "batch d_out"], classifier: Float[Tensor, "d_out n_classes"]
) -> Float[Tensor, "batch n_classes"]:
    """Cosine logits: normalise(embedding) · classifier."""
    if embeddings.ndim != 2 or classifier.ndim != 2 or embeddings.shape[1] != classifier.shape[0]:
        raise BadInputError(f"embeddings [batch, d] and classifier [d, n_classes] disagree: got "
                            f"{tuple(embeddings.shape)} and {tuple(classifier.shape)}")
    return F.normalize(embeddings.float(), dim=-1) @ classifier.to(embeddings.device).float()


def accuracy(
    scores: Float[Tensor, "batch n_classes"], labels: Int[Tensor, " batch"], topk: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy (fractions) for each k ≤ n_classes; labels are class indices in [0, n_classes)."""
    labels = torch.as_tensor(labels)
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise BadInputError(f"scores [batch, n_classes] and labels [batch] disagree: got {tuple(scores.shape)} "
                            f"and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise BadInputError("accuracy of no images: the dataset is empty")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise BadInputError(f"labels must be integer class indices, got dtype {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= scores.shape[1]:
        raise BadInputError(f"labels must lie in 0..{scores.shape[1] - 1} (the classes), got {low}..{high}")
    out = {}
    labels = labels.to(scores.device)
    for k in topk:
        if k > scores.shape[1]:
            continue
        top = scores.topk(k, dim=-1).indices
        out[f"top{k}"] = (top == labels[:, None]).any(-1).float().mean().item()
    return out
