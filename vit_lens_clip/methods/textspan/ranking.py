"""Which heads carry a text: heads ranked by the share of their variance along the text's direction."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor


def rank_heads_by_text(
    head_contributions: Float[Tensor, "heads n_images d_out"],
    direction: Float[Tensor, " d_out"],
    labels: Sequence[Hashable],
) -> list[tuple[Hashable, float]]:
    """Heads sorted by the fraction of their centred variance along a text direction, highest first.

    fraction_h = |C_c t_hat|^2 / |C_c|_F^2 with C_c = C_h - mean over images and t_hat = t / |t|; it lies in
    [0, 1] and is 1 exactly when every centred contribution of the head is a multiple of t. A head with no
    variance scores 0. Ties keep the order of ``labels``.
    """
    if head_contributions.ndim != 3 or direction.ndim != 1 or direction.shape[0] != head_contributions.shape[-1]:
        raise ValueError(
            f"need head_contributions [heads, n, D] and direction [D]; got "
            f"{tuple(head_contributions.shape)} and {tuple(direction.shape)}"
        )
    if len(labels) != head_contributions.shape[0]:
        raise ValueError(f"got {len(labels)} labels for {head_contributions.shape[0]} heads")
    C = head_contributions.to(torch.float64)
    t = direction.to(device=C.device, dtype=torch.float64)
    norm = t.norm()
    if norm == 0:
        raise ValueError("direction is the zero vector")
    centred = C - C.mean(dim=1, keepdim=True)
    along = (centred @ (t / norm)).pow(2).sum(-1)  # [heads]
    total = centred.pow(2).sum(dim=(1, 2))
    fractions = torch.where(total > 0, along / torch.where(total > 0, total, torch.ones_like(total)), 0.0)
    ranked = sorted(zip(labels, fractions.tolist()), key=lambda item: -item[1])
    return ranked
