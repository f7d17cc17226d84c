"""Mean-ablation experiments on second-order effects, post hoc on the embedding (no re-forward).

In the space of ê = 100·e/‖e‖ (prediction argmax ê·C is scale-free), with φ̄_n the mean effect over a
reference set and δ_n = φ_n − φ̄_n:

    all neurons      ê − Σ_n φ_n + Σ_n φ̄_n                       (= ê − Σ_n δ_n)
    significant      all + Σ_{n: ‖δ_n‖ ≤ τ_n} δ_n                 (only the significant effects removed)
    insignificant    all + Σ_{n: ‖δ_n‖ > τ_n} δ_n                 (only the insignificant ones removed)
    rank-1           all + Σ_n ⟨δ_n, r_n⟩ r_n                      (each effect replaced by its r_n part)
    text             all + Σ_n (⟨δ_n, r̂_n⟩/‖r̂_n‖²) r̂_n            (r̂_n: a sparse text reconstruction of r_n)

τ_n, the significance threshold, is the paper's: the ``top_fraction``-quantile from the top of ‖δ_n‖ over the
reference set (the paper: the 100th largest of 5,124 images, 1.95%), so a neuron is significant on an image
when ‖δ_n(I)‖ > τ_n. Selectivity = fraction of images where a neuron is significant.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.methods.neurons.effects import NeuronEffects

PAPER_TOP_FRACTION = 100 / 5124
SETTINGS = ("baseline", "all", "significant", "insignificant", "rank1", "text")


def significance_threshold(norms: Float[Tensor, "images neurons"],
                           top_fraction: float = PAPER_TOP_FRACTION) -> Float[Tensor, " neurons"]:
    """τ_n = the k-th largest ‖δ_n‖ over the reference images, k = max(1, round(top_fraction · images))."""
    if not 0 < top_fraction < 1:
        raise ValueError(f"top_fraction must be in (0, 1), got {top_fraction}")
    k = max(1, round(top_fraction * norms.shape[0]))
    return norms.topk(k, dim=0).values[-1]


def selectivity(norms: Float[Tensor, "images neurons"], threshold: Float[Tensor, " neurons"]) -> Float[Tensor, " neurons"]:
    """Fraction of images on which each neuron's centred effect is significant (‖δ_n‖ > τ_n)."""
    return (norms > threshold).float().mean(0)


def concentration(norms: Float[Tensor, "images neurons"], top_fraction: float = PAPER_TOP_FRACTION) -> Float[Tensor, " neurons"]:
    """Share of Σ_I ‖δ_n(I)‖² carried by each neuron's top ``top_fraction`` images (= top_fraction if uniform)."""
    k = max(1, round(top_fraction * norms.shape[0]))
    sq = norms.double().pow(2)
    return (sq.topk(k, dim=0).values.sum(0) / sq.sum(0).clamp_min(1e-30)).float()


def ablated_embeddings(
    effects: NeuronEffects,
    mean: Float[Tensor, "neurons d_out"],
    threshold: Float[Tensor, " neurons"],
    directions: Optional[Float[Tensor, "neurons d_out"]] = None,
    text_directions: Optional[Float[Tensor, "neurons d_out"]] = None,
    batch_size: int = 64,
) -> dict[str, Float[Tensor, "images d_out"]]:
    """Embeddings of every image under each setting of the module docstring (those whose inputs are given)."""
    if not effects.normalized:
        raise ValueError("ablations work in the space of 100·e/‖e‖: build NeuronEffects with normalized=True")
    out: dict[str, list[Tensor]] = {}
    for rows in effects.chunks(batch_size, desc="neuron ablations"):
        delta = effects.effects(rows) - mean  # [b, N, D]
        for k, v in ablated_rows(delta, effects.embedding(rows), threshold, directions, text_directions).items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def ablated_rows(
    delta: Float[Tensor, "batch neurons d_out"],
    base: Float[Tensor, "batch d_out"],
    threshold: Float[Tensor, " neurons"],
    directions: Optional[Float[Tensor, "neurons d_out"]] = None,
    text_directions: Optional[Float[Tensor, "neurons d_out"]] = None,
    norms: Optional[Float[Tensor, "batch neurons"]] = None,
) -> dict[str, Float[Tensor, "batch d_out"]]:
    """One batch of ``ablated_embeddings``: the settings of the module docstring from δ_n and ê (``norms``:
    ‖δ_n‖ if already computed)."""
    removed = base - delta.sum(1)
    significant = ((delta.norm(dim=-1) if norms is None else norms) > threshold)[..., None]
    out = {"baseline": base, "all": removed,
           "significant": removed + (delta * ~significant).sum(1),
           "insignificant": removed + (delta * significant).sum(1)}
    if directions is not None:
        out["rank1"] = removed + torch.einsum("bn,nd->bd", torch.einsum("bnd,nd->bn", delta, directions), directions)
    if text_directions is not None:
        t = text_directions.to(delta)
        coef = torch.einsum("bnd,nd->bn", delta, t) / t.pow(2).sum(-1).clamp_min(1e-30)
        out["text"] = removed + torch.einsum("bn,nd->bd", coef, t)
    return out


def ablation_accuracy(
    embeddings: dict[str, Float[Tensor, "images d_out"]],
    classifier: Float[Tensor, "d_out n_classes"],
    labels: Int[Tensor, " images"],
) -> dict[str, float]:
    """Zero-shot top-1 accuracy (argmax e·C) of each setting, over images with a label ≥ 0."""
    keep = labels >= 0
    if not keep.any():
        raise ValueError("no labelled images (labels ≥ 0)")
    return {k: ((v[keep].float() @ classifier.float().to(v.device)).argmax(-1) == labels[keep].to(v.device)).float().mean().item()
            for k, v in embeddings.items()}
