"""Head-specific retrieval: nearest images by one head's (or a set of heads') direct contribution.

For a set S of heads, image i is represented by c_S(i) = Σ_{(l,h) ∈ S} ĉ_{l,h}(i) (folded parts, e.g. from
``ShardWriter`` or ``collect_head_contributions``). A query is an image (cosine between c_S vectors,
after centring by the dataset mean so the shared component does not dominate) or a text (score c_S(i) · t).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.errors import BadInputError
from vit_lens_clip.validation import head_index, is_int_like, layer_index

Head = tuple[int, int]


def head_representation(
    heads: Float[Tensor, "n n_kept n_heads d_out"], layers: Sequence[int], selected: Sequence[Head], n_layers: int
) -> Float[Tensor, "n d_out"]:
    """c_S(i) = Σ over the selected (layer, head) of the head's part, for every image."""
    if not selected:
        raise ValueError("select at least one (layer, head)")
    layers = [layer_index(l, n_layers) for l in layers]
    if heads.ndim != 4 or len(layers) != heads.shape[1] or len(set(layers)) != len(layers):
        raise BadInputError(f"layers {layers} must name each of the {heads.shape[1] if heads.ndim == 4 else '?'} "
                            f"collected layers of heads {tuple(heads.shape)} once, in order")
    total = torch.zeros(heads.shape[0], heads.shape[-1], dtype=heads.dtype, device=heads.device)
    for layer, head in selected:
        layer, head = head_index(layer, head, n_layers, heads.shape[2])
        if layer not in layers:
            raise ValueError(f"layer {layer} is not among the collected layers {layers}")
        if not 0 <= head < heads.shape[2]:
            raise ValueError(f"head {head} out of range ({heads.shape[2]} heads)")
        total = total + heads[:, layers.index(layer), head]
    return total


def nearest_images(
    heads: Float[Tensor, "n n_kept n_heads d_out"],
    layers: Sequence[int],
    selected: Sequence[Head],
    query: int | Float[Tensor, " d_out"],
    n_layers: int,
    top: int = 8,
) -> tuple[Tensor, Tensor]:
    """(indices, scores) of the ``top`` images nearest to ``query`` through the selected heads.

    ``query``: an image index (centred cosine; the query image itself is excluded) or a text embedding [D].
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise BadInputError(f"top must be a non-negative integer, got {top!r}")
    rep = head_representation(heads, layers, selected, n_layers).float()
    if is_int_like(query) and not isinstance(query, bool):
        query = int(query)
        if not 0 <= query < rep.shape[0]:
            raise ValueError(f"query image {query} out of range ({rep.shape[0]} images)")
        centred = F.normalize(rep - rep.mean(0), dim=-1)
        scores = centred @ centred[query]
        scores[query] = -float("inf")
    else:
        if not isinstance(query, Tensor) or query.shape != (rep.shape[1],):
            shape = tuple(query.shape) if isinstance(query, Tensor) else type(query).__name__
            raise BadInputError(f"query must be an image index or a text embedding [{rep.shape[1]}], got {shape}")
        scores = rep @ query.float().to(rep.device)
    top = min(top, rep.shape[0] - (1 if isinstance(query, int) else 0))
    values, indices = scores.topk(top)
    return indices, values
