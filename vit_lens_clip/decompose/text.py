"""Parts of the text embedding: embedding term, MLPs, attention layers, heads, (head, token) pieces.

At the pooled token p (CLIP's EOT token), the residual is r = e_p + Σ_l attn_l + Σ_l mlp_l with
e_p = W_E[token_p] + W_pos[p], and

    attn_l = Σ_h Σ_m A_{l,h}[p, m] · v_{l,h,m} W_O^h + b_O,   v_{l,h,m} = ln_1(x_m) W_V^h + b_V^h,

where the causal mask makes A[p, m] = 0 for m > p. b_O is shared equally among the layer's H·n (head, token)
pieces, as for the image tower. The text embedding is ln_final(r) · P + b_P; every part goes through
``fold.LNFold`` (the same fold as the image decomposition), and the projection bias b_P is its own part, so
the parts sum exactly to the text embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.decompose.fold import Convention, LNFold
from vit_lens_clip.model.hooked_text import HookedTextTransformer, TokenInput


@dataclass
class TextDecomposition:
    """Folded parts of a batch of text embeddings.

    embed [B, D] (token + position embedding of the pooled token); attns, mlps [B, L, D]; heads [B, L, H, D];
    head_tokens [B, L, H, n, D] (if asked); proj_bias [B, D] (b_P, zero without one); pool_index [B];
    ``embedding`` is the model's output. Σ parts = embedding.
    """

    embed: Float[Tensor, "batch d_out"]
    attns: Float[Tensor, "batch n_layers d_out"]
    mlps: Float[Tensor, "batch n_layers d_out"]
    heads: Float[Tensor, "batch n_layers n_heads d_out"]
    proj_bias: Float[Tensor, "batch d_out"]
    embedding: Float[Tensor, "batch d_out"]
    pool_index: Int[Tensor, " batch"]
    convention: Convention
    head_tokens: Optional[Float[Tensor, "batch n_layers n_heads n_tokens d_out"]] = None

    def total(self) -> Float[Tensor, "batch d_out"]:
        """embed + Σ_l attn_l + Σ_l mlp_l + b_P."""
        return self.embed + self.attns.sum(1) + self.mlps.sum(1) + self.proj_bias

    def head_scores(self, images: Float[Tensor, "n_images d_out"]) -> Float[Tensor, "batch n_layers n_heads n_images"]:
        """ĉ_{l,h} · u for (unit) image embeddings u."""
        return self.heads @ images.to(self.heads).T


def decompose_text(
    model: HookedTextTransformer,
    tokens: TokenInput,
    attention_mask: Optional[Tensor] = None,
    per_token: bool = False,
    convention: Convention = "equal_share",
) -> TextDecomposition:
    """Split each text embedding exactly into embedding, layer, head and (with ``per_token``) (head, token) parts."""
    cfg = model.cfg
    tokens, attention_mask = model._split_input(tokens, attention_mask)
    L, H = cfg.n_layers, cfg.n_heads
    names = {"hook_embed", "hook_pos_embed", "hook_pooled", "hook_text_embed"}
    for l in range(L):
        names |= {f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_mlp_out", f"blocks.{l}.attn.hook_z"}
        if per_token:
            names |= {f"blocks.{l}.attn.hook_pooled_pattern", f"blocks.{l}.attn.hook_v"}
    with torch.no_grad():
        embedding, cache = model.run_with_cache(
            tokens, attention_mask=attention_mask, names_filter=lambda name: name in names, return_cache_object=False
        )
    index = model.pool_index(tokens)
    rows = torch.arange(tokens.shape[0], device=tokens.device)

    def pooled(name: str) -> Tensor:
        return cache[name][rows, index].float()

    fold = LNFold.from_residual(cache["hook_pooled"], model.ln_final.w, model.ln_final.b, model.W_proj, cfg.eps,
                                convention)
    K = 2 * L + 1
    embed = fold.fold(pooled("hook_embed") + pooled("hook_pos_embed"), 1 / K)
    attns = torch.stack([pooled(f"blocks.{l}.hook_attn_out") for l in range(L)], 1)
    mlps = torch.stack([pooled(f"blocks.{l}.hook_mlp_out") for l in range(L)], 1)
    W_O, b_O = model.W_O.float(), model.b_O.float()  # [L, H, e, d], [L, d]
    z = torch.stack([pooled(f"blocks.{l}.attn.hook_z") for l in range(L)], 1)  # [B, L, H, e]
    heads = torch.einsum("blhe,lhed->blhd", z, W_O) + b_O[None, :, None] / H
    head_tokens = None
    if per_token:
        n = tokens.shape[1]
        A = torch.stack([cache[f"blocks.{l}.attn.hook_pooled_pattern"].float() for l in range(L)], 1)  # [B,L,H,n]
        v = torch.stack([cache[f"blocks.{l}.attn.hook_v"].float() for l in range(L)], 1)  # [B, L, n, H, e]
        pieces = torch.einsum("blhm,blmhe,lhed->blhmd", A, v, W_O) + b_O[None, :, None, None] / (H * n)
        head_tokens = fold.fold(pieces, 1 / (K * H * n))
    bias = model.b_proj.float().expand(tokens.shape[0], -1)
    return TextDecomposition(
        embed=embed,
        attns=fold.fold(attns, 1 / K),
        mlps=fold.fold(mlps, 1 / K),
        heads=fold.fold(heads, 1 / (K * H)),
        proj_bias=bias,
        embedding=embedding.float(),
        pool_index=index,
        convention=convention,
        head_tokens=head_tokens,
    )
