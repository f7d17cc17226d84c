"""The one assembler: raw pieces of the pooled vector r, the output fold and the shares → ``Decomposition``.

Every tower and readout (class token, patch mean, a text's EOT token, an attentional pooler) first writes its
pooled vector as a sum of raw pieces in the pooled space (``RawParts``, built in ``decompose.pieces``):

    r = embed + Σ_l attn_l + Σ_l mlp_l (+ pool_mlp, the MLP of a MAP pooler)

with K top-level components (K = 2L + 1, or 2L + 2 with a pooler MLP). A head's piece is a slice of its
layer's (Σ_h head_{l,h} = attn_l) and a (head, source) piece a slice of its head's (Σ_m piece_{l,h,m} =
head_{l,h}). The assembler folds every piece c through the output fold (``output_fold``: the final LayerNorm
with frozen statistics, the projection and its bias) with the share

    w = 1/K (a component),   1/(K·H) (a head),   1/(K·H·N) (a (head, source) piece),

so that each level sums exactly to the embedding (math: ``fold.LNFold``). The projection bias b is split by
these same shares (w·b per piece) for every tower, the text tower included. Extra splits (the pooler's own
heads) carry their own shares. With ``normalize`` every part is divided by ‖embedding‖.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.decompose.decomposition import Decomposition
from vit_lens_clip.decompose.fold import Convention, embedding_norms
from vit_lens_clip.decompose.output_fold import OutputFold


@dataclass
class RawParts:
    """Pieces of the pooled vector r before the output fold; the components sum to ``pooled``.

    ``sources`` are (head, source) pieces [B, kept, H, N, d] when formed; ``source_dots`` [B, kept, H, N, T+1]
    their dots with the texts' pull-back (``fold.pull_back``) when only text scores are wanted.
    ``keep_sources``: return the folded sources (False when they were formed only to score texts).
    ``extras``: further splits, name → (pieces, share), folded and returned in ``Decomposition.extra``.
    """

    pooled: Float[Tensor, "batch d"]
    embed: Float[Tensor, "batch d"]
    attns: Float[Tensor, "batch n_layers d"]
    mlps: Float[Tensor, "batch n_layers d"]
    n_heads: int
    heads: Optional[Float[Tensor, "batch n_kept n_heads d"]] = None
    pool_mlp: Optional[Float[Tensor, "batch d"]] = None
    sources: Optional[Float[Tensor, "batch n_kept n_heads n_src d"]] = None
    source_dots: Optional[Float[Tensor, "batch n_kept n_heads n_src n_texts_plus_1"]] = None
    keep_sources: bool = True
    extras: dict[str, tuple[Tensor, float]] = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        """K: the embedding term, every attention layer and MLP, and the pooler's MLP if there is one."""
        return 1 + 2 * self.attns.shape[1] + (self.pool_mlp is not None)

    def as_dict(self) -> dict[str, Tensor]:
        """The unfolded components, heads and pooled vector (``Decomposition.raw``)."""
        raw = {"embed": self.embed, "attns": self.attns, "mlps": self.mlps, "pooled": self.pooled}
        if self.heads is not None:
            raw["heads"] = self.heads
        if self.pool_mlp is not None:
            raw["pool_mlp"] = self.pool_mlp
        return raw


def assemble(
    raw: RawParts,
    fold: OutputFold,
    embedding: Float[Tensor, "batch d_out"],
    layers: Sequence[int],
    convention: Convention,
    normalize: bool,
    texts: Optional[Float[Tensor, "n_texts d_out"]] = None,
) -> Decomposition:
    """Fold every raw piece with its share (module docstring) into a ``Decomposition``."""
    K, H = raw.n_components, raw.n_heads
    embedding = embedding.to(fold.dtype)
    norm = embedding_norms(embedding, normalize)

    def per_image(t: Tensor) -> Tensor:
        return t / norm.reshape(-1, *([1] * (t.ndim - 1)))

    head_sources = source_scores = None
    if raw.sources is not None:
        share = 1 / (K * H * raw.sources.shape[-2])
        folded = fold.fold(raw.sources, share)
        head_sources = per_image(folded) if raw.keep_sources else None
        if texts is not None and raw.source_dots is None:
            source_scores = per_image(folded @ texts.to(folded).T)
    if raw.source_dots is not None:
        if texts is None:
            raise ValueError("source_dots were formed without texts to score")
        share = 1 / (K * H * raw.source_dots.shape[-2])
        source_scores = per_image(fold.scores(raw.source_dots, texts, share))
    if raw.heads is not None:
        heads = per_image(fold.fold(raw.heads, 1 / (K * H)))
    else:
        heads = embedding.new_zeros(embedding.shape[0], 0, H, embedding.shape[-1])
    extra = {name: per_image(fold.fold(pieces, share)) for name, (pieces, share) in raw.extras.items()}
    if raw.pool_mlp is not None:
        extra["pool_mlp"] = per_image(fold.fold(raw.pool_mlp, 1 / K))
    return Decomposition(
        embed=per_image(fold.fold(raw.embed, 1 / K)),
        attns=per_image(fold.fold(raw.attns, 1 / K)),
        mlps=per_image(fold.fold(raw.mlps, 1 / K)),
        heads=heads,
        layers=list(layers),
        embedding=per_image(embedding),
        convention=convention,
        normalized=normalize,
        head_sources=head_sources,
        source_scores=source_scores,
        raw=raw.as_dict(),
        extra=extra,
    )


def stack_layers(store: dict[str, Tensor], template: str, layers: Sequence[int], dim: int = 1) -> Tensor:
    """Kept activations of several layers, stacked (``template`` formatted with each layer index)."""
    return torch.stack([store[template.format(l)] for l in layers], dim)
