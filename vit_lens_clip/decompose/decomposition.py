"""The decomposition's container: folded parts of a batch of embeddings (built by ``decompose.assemble``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.decompose.fold import Convention
from vit_lens_clip.validation import check_embeddings


@dataclass
class Decomposition:
    """Folded parts of a batch of embeddings (math: ``decompose.assemble`` and ``decompose.fold``).

    embed [B, D]; attns, mlps [B, L, D]; heads [B, len(layers), H, D] for ``layers``;
    head_sources [B, len(layers), H, N, D] (if asked); source_scores [B, len(layers), H, N, K] (if texts given,
    scores ĉ · t of each (head, source) piece). ``embedding`` is the model's output. Σ parts = embedding,
    or embedding/‖embedding‖ when ``normalized``. ``raw`` holds the same pieces before the fold, in the
    residual stream (keys embed, attns, mlps, heads, pooled, and pool_mlp for a MAP pooler), for ablations that
    recompute the final LN. ``extra``: the pooler's MLP part (``pool_mlp``, part of the sum) and the pooler's
    own heads as a second split (``pool_heads``, ``pool_head_sources``).
    """

    embed: Float[Tensor, "batch d_out"]
    attns: Float[Tensor, "batch n_layers d_out"]
    mlps: Float[Tensor, "batch n_layers d_out"]
    heads: Float[Tensor, "batch n_kept n_heads d_out"]
    layers: list[int]
    embedding: Float[Tensor, "batch d_out"]
    convention: Convention
    normalized: bool
    head_sources: Optional[Float[Tensor, "batch n_kept n_heads n_src d_out"]] = None
    source_scores: Optional[Float[Tensor, "batch n_kept n_heads n_src n_texts"]] = None
    raw: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)

    def total(self) -> Float[Tensor, "batch d_out"]:
        """embed + Σ_l attn_l + Σ_l mlp_l (+ the MAP pooler's MLP part, ``extra["pool_mlp"]``, if any)."""
        total = self.embed + self.attns.sum(1) + self.mlps.sum(1)
        return total + self.extra["pool_mlp"] if "pool_mlp" in self.extra else total

    def head_scores(self, texts: Float[Tensor, "n_texts d_out"]) -> Float[Tensor, "batch n_kept n_heads n_texts"]:
        """ĉ_{l,h} · t for unit text embeddings t."""
        check_embeddings(texts, self.heads.shape[-1], "texts")
        return self.heads @ texts.to(self.heads).T


@dataclass
class TextDecomposition(Decomposition):
    """A text embedding's parts: ``embed`` is the token + position embedding of the pooled (EOT) token, and the
    (head, token) pieces are ``head_sources`` (alias ``head_tokens``); ``pool_index`` [B] is the pooled position."""

    pool_index: Optional[Int[Tensor, " batch"]] = None

    @property
    def head_tokens(self) -> Optional[Float[Tensor, "batch n_layers n_heads n_tokens d_out"]]:
        return self.head_sources
