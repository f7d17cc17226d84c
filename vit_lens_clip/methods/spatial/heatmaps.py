"""Text heatmaps from the spatial decomposition (docs/segmentation.md).

Each (layer l, head h, source patch m) piece ĉ_{l,h,m} of the image embedding (folded through the final
LayerNorm and the projection, ``decompose.parts``) is scored against a unit text embedding t. The map of t is

    M_t[m] = Σ_l Σ_h ĉ_{l,h,m} · t        (m over patches; the CLS source is left out)

computed from ``decompose(..., texts=...)``: the text is pulled back to the residual width, so the
[L, H, N, D] pieces are never built. Each piece carries its share of b_O, μ and β (the "equal_share" fold by
default), which adds the same constant to every patch of a map; segmentation min-max normalises it away.

The published segmentation text is the predicted class's classifier column minus the mean column
(``class_heatmap``); by linearity this is one pulled-back direction per image, not C maps.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.datasets.geometry import PreprocessGeometry, upsample_patch_map
from vit_lens_clip.decompose.fold import Convention
from vit_lens_clip.decompose.parts import DecompositionCapture, decompose
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.pooling import compute_dtype, patch_slice
from vit_lens_clip.validation import head_indices, layer_indices, text_embeddings

HeadIndex = tuple[int, int]


def _resolve_selection(
    model: HookedViT, layers: Optional[Sequence[int]], heads: Optional[Sequence[HeadIndex]]
) -> tuple[list[int], Optional[set[HeadIndex]]]:
    """Layers to decompose and, when ``heads`` is given, the (layer, head) pairs to keep (layers mod L)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    chosen_layers = None if layers is None else set(layer_indices(layers, n_layers))
    if heads is None:
        if chosen_layers is not None and not chosen_layers:
            raise ValueError("layers is empty: the map would be a sum over nothing")
        return sorted(chosen_layers if chosen_layers is not None else range(n_layers)), None
    pairs = set(head_indices(heads, n_layers, n_heads))
    if not pairs:
        raise ValueError("heads is empty: the map would be a sum over nothing")
    if chosen_layers is not None and any(l not in chosen_layers for l, _ in pairs):
        raise ValueError(f"heads {sorted(pairs)} lie outside the chosen layers {sorted(chosen_layers)}")
    return sorted({l for l, _ in pairs}), pairs


def _head_mask(kept_layers: Sequence[int], n_heads: int, pairs: Optional[set[HeadIndex]]) -> Tensor:
    """[n_kept, H] float mask of the (layer, head) pairs that enter the sum."""
    mask = torch.ones(len(kept_layers), n_heads)
    if pairs is not None:
        mask.zero_()
        for i, l in enumerate(kept_layers):
            for h in range(n_heads):
                mask[i, h] = float((l, h) in pairs)
    return mask


def _to_grid(model: HookedViT, per_patch: Float[Tensor, "batch n_patches n_texts"]) -> Tensor:
    grid_h, grid_w = model.cfg.grid_size
    return einops.rearrange(per_patch, "b (gh gw) k -> b k gh gw", gh=grid_h, gw=grid_w)


def _sum_sources(
    model: HookedViT,
    source_scores: Float[Tensor, "batch n_kept n_heads n_src n_texts"],
    kept_layers: Sequence[int],
    pairs: Optional[set[HeadIndex]],
) -> Float[Tensor, "batch n_texts grid_h grid_w"]:
    mask = _head_mask(kept_layers, model.cfg.n_heads, pairs).to(source_scores)
    per_patch = torch.einsum("blhmk,lh->bmk", source_scores[:, :, :, patch_slice(model.cfg.n_prefix)], mask)
    return _to_grid(model, per_patch)


def text_heatmap(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    texts: Union[Float[Tensor, "n_texts d_out"], Float[Tensor, " d_out"], str, Sequence[str]],  # one text: joint_map
    layers: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[HeadIndex]] = None,
    convention: Convention = "equal_share",
    normalize: bool = False,
) -> Float[Tensor, "batch n_texts grid_h grid_w"]:
    """M_t[m] = Σ_{l,h} ĉ_{l,h,m} · t over patches m (CLS source excluded), for each text t.

    ``layers`` restricts the sum to those layers (all heads); ``heads`` to those (layer, head) pairs. Given
    both, every pair must lie in ``layers``. ``normalize`` divides by ‖image embedding‖ (cosine-like scores).
    Texts may be unit embeddings [K, D] or strings (encoded with the model's attached text encoder).
    """
    texts = text_embeddings(texts, model.cfg.output_dim, model.text_encoder)
    texts = texts.to(device=model.W_proj.device, dtype=compute_dtype(model.W_proj.dtype))  # float64 models: exact
    kept_layers, pairs = _resolve_selection(model, layers, heads)
    dec = decompose(model, images, layers=kept_layers, texts=texts,
                    convention=convention, normalize=normalize)
    return _sum_sources(model, dec.source_scores, kept_layers, pairs)


def joint_map(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    layer: int,
    head: int,
    text: Union[Float[Tensor, " d_out"], Float[Tensor, "1 d_out"], str],  # one text, maybe as a row (report)
    convention: Convention = "equal_share",
    normalize: bool = False,
) -> Float[Tensor, "batch grid_h grid_w"]:
    """Where head (layer, head) writes the direction ``text`` (e.g. its TextSpan text): ĉ_{l,h,m} · t per patch."""
    if isinstance(text, Tensor) and text.ndim == 2 and text.shape[0] != 1:
        raise BadInputError(f"joint_map takes one text, got {text.shape[0]}: use text_heatmap for several")
    return text_heatmap(model, images, text, heads=[(layer, head)], convention=convention, normalize=normalize)[:, 0]


def class_directions(
    classifier: Float[Tensor, "d_out n_classes"], labels: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_out"]:
    """The published segmentation text per image: classifier[:, label] − mean_c classifier[:, c]."""
    classifier = classifier.float()
    labels = _class_labels(labels, len(labels), classifier.shape[1])  # a label of -1 would pick the last class
    return classifier[:, labels].T - classifier.mean(1)


def predict_classes(
    model: HookedViT, images: Float[Tensor, "batch channel height width"], classifier: Float[Tensor, "d_out n_classes"]
) -> Int[Tensor, " batch"]:
    """argmax_c of image embedding · classifier[:, c] (the zero-shot prediction)."""
    if classifier.ndim != 2 or classifier.shape[0] != model.cfg.output_dim:
        raise BadInputError(f"the classifier must be [{model.cfg.output_dim}, n_classes] (one column per class), "
                            f"got {tuple(classifier.shape)}")
    with torch.no_grad():
        embedding = model(images).float()
    return (embedding @ classifier.to(embedding)).argmax(-1)


def _class_labels(labels, n_images: int, n_classes: int) -> Tensor:
    """``labels`` as a long tensor [n_images] of class indices in [0, n_classes); anything else raises."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != n_images or labels.is_floating_point() or labels.dtype == torch.bool:
        raise BadInputError(f"labels must be {n_images} integer class indices, got {labels.dtype} {tuple(labels.shape)}")
    if n_images and not bool(((labels >= 0) & (labels < n_classes)).all()):
        raise BadInputError(f"labels must lie in 0..{n_classes - 1} (the classifier's classes), got "
                            f"{int(labels.min())}..{int(labels.max())}")
    return labels.long()


def class_heatmap(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    classifier: Float[Tensor, "d_out n_classes"],
    labels: Optional[Int[Tensor, " batch"]] = None,
    convention: Convention = "equal_share",
) -> Float[Tensor, "batch grid_h grid_w"]:
    """Map of the predicted class (or of ``labels``) minus the mean class, per image, in one forward pass.

    M[m] = Σ_{l,h} ĉ_{l,h,m} · (w_ŷ − mean_c w_c), with ŷ = argmax_c embedding · w_c. The activations are
    captured during the pass, the prediction read from its embedding, and only the distinct directions of
    the batch are pulled back (never all C classes).
    """
    if classifier.ndim != 2 or classifier.shape[0] != model.cfg.output_dim:
        raise ValueError(f"classifier must be [{model.cfg.output_dim}, n_classes], got {tuple(classifier.shape)}")
    if classifier.shape[1] < 2:
        raise BadInputError("class_heatmap needs at least 2 classes: with one, the class minus the mean class is zero")
    classifier = classifier.to(model.W_proj.device).float()
    capture = DecompositionCapture(model, texts=classifier.T[:1], convention=convention, reduce_values=False)
    with torch.no_grad():
        model.run_with_hooks(images, fwd_hooks=capture.hooks())
    if labels is None:
        labels = (capture.store["hook_image_embed"].float() @ classifier).argmax(-1)
    labels = _class_labels(labels, len(capture.store["hook_image_embed"]), classifier.shape[1]).to(classifier.device)
    distinct, which = torch.unique(labels, return_inverse=True)
    capture.texts = class_directions(classifier, distinct)
    dec = capture.finish()
    maps = _sum_sources(model, dec.source_scores, dec.layers, None)  # [B, n_distinct, gh, gw]
    return maps[torch.arange(maps.shape[0], device=maps.device), which.to(maps.device)]


def heatmap_to_pixels(
    patch_maps: Float[Tensor, "*batch grid_h grid_w"],
    image_size: Union[int, Sequence[int]],
    geometries: Optional[Sequence[PreprocessGeometry]] = None,
) -> Union[Float[Tensor, "*batch H W"], list[Float[Tensor, "... H0 W0"]]]:
    """Bilinear upsampling of patch maps to the model input size; with one ``PreprocessGeometry`` per image
    (first axis), each map is carried back onto its original image instead (a list: sizes differ; NaN where
    the centre crop cut the image)."""
    if geometries is None:
        return upsample_patch_map(patch_maps.float(), image_size)
    if len(geometries) != patch_maps.shape[0]:
        raise ValueError(f"{len(geometries)} geometries for {patch_maps.shape[0]} maps")
    pixels = upsample_patch_map(patch_maps.float(), image_size)
    return [g.model_map_to_original(p) for g, p in zip(geometries, pixels)]
