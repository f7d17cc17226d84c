"""One direction per neuron: the first singular vector of its largest centred effects.

δ_n(I) = φ_n(I) − φ̄_n (φ̄_n: mean over the images). Take the ``top_k`` images with the largest ‖δ_n(I)‖,
stack their δ_n (centred by the GLOBAL mean, not re-centred), and keep the first right singular vector
r_n (unit); flip its sign so that most of those images have ⟨δ_n, r_n⟩ > 0. Then φ_n(I) ≈ x_n(I)·r_n + φ̄_n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens_clip.methods.neurons.effects import NeuronEffects


@dataclass
class NeuronDirections:
    """r_n [N, D] (unit), and for each neuron its top images (rows) and their ‖δ_n‖, largest first."""

    directions: Float[Tensor, "neurons d_out"]
    top_rows: Int[Tensor, "neurons k"]
    top_norms: Float[Tensor, "neurons k"]
    top_variance_explained: Float[Tensor, " neurons"]


def neuron_directions(
    effects: NeuronEffects,
    mean: Float[Tensor, "neurons d_out"],
    norms: Float[Tensor, "images neurons"],
    top_k: int = 100,
    neuron_batch: int = 256,
    progress: bool = False,
) -> NeuronDirections:
    """r_n from the SVD of each neuron's top-``top_k`` centred effects (batched over neurons)."""
    k = min(top_k, norms.shape[0])
    if k < 1:
        raise ValueError("no images to take directions from")
    top = norms.topk(k, dim=0)  # values, indices: [k, N]
    directions, explained = [], []
    starts = range(0, norms.shape[1], neuron_batch)
    for start in tqdm(starts, desc="neuron directions", disable=not progress):
        neurons = torch.arange(start, min(start + neuron_batch, norms.shape[1]))
        delta = effects.effects_at(top.indices[:, neurons], neurons) - mean[neurons]  # [k, c, D]
        delta = delta.transpose(0, 1)  # [c, k, D]
        _, sing, vh = torch.linalg.svd(delta, full_matrices=False)
        r = vh[:, 0]  # [c, D]
        flip = ((delta @ r[..., None])[..., 0] > 0).sum(-1) * 2 <= k
        r = torch.where(flip[:, None], -r, r)
        directions.append(r)
        explained.append(sing[:, 0] ** 2 / sing.pow(2).sum(-1).clamp_min(1e-30))
    return NeuronDirections(torch.cat(directions), top.indices.T.contiguous(), top.values.T.contiguous(), torch.cat(explained))


def variance_explained(
    effects: NeuronEffects,
    mean: Float[Tensor, "neurons d_out"],
    directions: Float[Tensor, "neurons d_out"],
    batch_size: int = 64,
) -> tuple[Float[Tensor, " neurons"], float]:
    """Per neuron Σ_I ⟨δ_n(I), r_n⟩² / Σ_I ‖δ_n(I)‖², and the same pooled over all neurons."""
    along = torch.zeros(directions.shape[0], dtype=torch.float64)
    total = torch.zeros_like(along)
    for rows in effects.chunks(batch_size):
        batch_along, batch_total = explained_parts(effects.effects(rows) - mean, directions)
        along += batch_along
        total += batch_total
    return explained_ratios(along, total)


def explained_parts(delta: Float[Tensor, "batch neurons d_out"],
                    directions: Float[Tensor, "neurons d_out"]) -> tuple[Float[Tensor, " neurons"], Float[Tensor, " neurons"]]:
    """One batch's Σ_I ⟨δ_n(I), r_n⟩² and Σ_I ‖δ_n(I)‖² (float64), to be summed over batches."""
    delta = delta.double()
    return torch.einsum("bnd,nd->bn", delta, directions.double()).pow(2).sum(0), delta.pow(2).sum((0, 2))


def explained_ratios(along: Float[Tensor, " neurons"],
                     total: Float[Tensor, " neurons"]) -> tuple[Float[Tensor, " neurons"], float]:
    """Per neuron along / total, and the same pooled over all neurons."""
    return (along / total.clamp_min(1e-30)).float(), float(along.sum() / total.sum())
