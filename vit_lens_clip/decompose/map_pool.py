"""Decomposition through a MAP attention-pool head (SigLIP, SigLIP2, timm ``global_pool="map"``).

The trunk's last residual x_m = Σ_c c_m is a sum of K = 2L+1 components c (embedding, L attention layers,
L MLPs) at every token m. The head then computes, with the pooler query's attention A[h, m] (fixed, read from
the forward pass) over its sources m and the trunk's final norm applied PER TOKEN (each token its own μ_m, σ_m):

    x̂_m = γ ⊙ (x_m − μ_m)/σ_m + β
    a    = Σ_h Σ_m A[h, m] (x̂_m W_V^h + b_V^h) W_O^h + b_O          (the pooler's attention: linear given A)
    r    = a + u,   u = mlp(ln_mlp(a))                               (the pooler's MLP with its residual)
    y    = fold(r)                                                   (ln_final if any, projection, bias)

Because Σ_m A[h, m] = 1, a = Σ_c T(c) + K₀ exactly, with

    T(c) = Σ_m Σ_h A[h, m] (γ ⊙ c_m/σ_m) W_V^h W_O^h,   K₀ = −T(μ) + Σ_h (β W_V^h + b_V^h) W_O^h + b_O.

The pooler's MLP output u is one more part (as the paper treats MLPs: a direct contribution, not split
further). With K' = K + 1 parts sharing K₀ (and the output fold's μ, β and bias) equally, the parts

    p_c = T(c) + K₀/K'   (trunk components),   p_u = u + K₀/K'   (the pooler MLP)

sum to r, and each is folded to the output like any piece (``output_fold``). A head (l, h) is c = its result
z_{l,h} W_O^h + b_O/H at every token; its (layer, head, token m) pieces are the per-token terms of T (share
K₀/(K'·H·N)), so the pieces of a head sum to the head and the heads of a layer to the layer. Tokens the
pooler does not attend to (prefix tokens with ``include_prefix=False``) carry only their share.

The pooler's own heads give a second split of a: ``extra["pool_heads"]`` [B, H_p, D] and, per source,
``extra["pool_head_sources"]`` [B, H_p, N, D]; ``extra["pool_mlp"]`` [B, D] is the folded p_u.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.decompose.fold import Convention, embedding_norms
from vit_lens_clip.decompose.output_fold import output_fold
from vit_lens_clip.model.hooked_vit import HookedViT


def map_pool_hook_names(model: HookedViT, layers: Sequence[int], per_source: bool) -> dict[str, Callable]:
    """Hook name → reduction of the activation kept for the MAP decomposition."""
    ident = lambda t: t  # noqa: E731
    L = model.cfg.n_layers
    names = {"hook_embed": ident, "hook_pooled": ident, "hook_image_embed": ident,
             f"blocks.{L - 1}.hook_resid_post": ident,
             "attn_pool.attn.hook_pooled_pattern": ident,
             "attn_pool.attn.hook_z": lambda z: z[:, 0],
             "attn_pool.hook_mlp_out": lambda u: u[:, 0]}
    for l in range(L):
        names[f"blocks.{l}.hook_attn_out"] = ident
        names[f"blocks.{l}.hook_mlp_out"] = ident
    for l in layers:
        names[f"blocks.{l}.attn.hook_z"] = ident
    if per_source:
        names["attn_pool.attn.hook_result_per_source"] = ident
    return names


class _PerTokenFold:
    """T(c) of the module docstring, per token or summed over tokens."""

    def __init__(self, model: HookedViT, resid: Tensor, pattern: Tensor):
        pool = model.attn_pool
        self.n_prefix = model.cfg.n_prefix
        mu = resid.mean(-1, keepdim=True)
        self.sigma = ((resid - mu).pow(2).mean(-1, keepdim=True) + pool.ln_k.eps).sqrt()  # [B, N, 1]
        if not pool.include_prefix:  # the pooler's sources are the patches: prefix tokens get weight 0
            pattern = torch.cat([pattern.new_zeros(*pattern.shape[:2], self.n_prefix), pattern], dim=-1)
        self.A = pattern  # [B, Hp, N]
        self.gamma, beta = pool.ln_k.w.float(), pool.ln_k.b.float()
        W_V, b_V = pool.attn.W_V.float(), pool.attn.b_V.float()
        W_O, b_O = pool.attn.W_O.float(), pool.attn.b_O.float()
        self.W_VO = torch.einsum("hie,hed->hid", W_V, W_O)  # [Hp, d, D_pool]
        self.K0 = (-self.summed(mu.expand_as(resid)) + torch.einsum("i,hid->d", beta, self.W_VO)
                   + torch.einsum("he,hed->d", b_V, W_O) + b_O)  # [B, D_pool]

    def per_token(self, c: Float[Tensor, "batch n *parts d"]) -> Float[Tensor, "batch n *parts d_pool"]:
        """Σ_h A[h, m] (γ ⊙ c_m/σ_m) W_VO^h for every token m."""
        extra = c.ndim - 3
        scaled = self.gamma * c / self.sigma.reshape(*self.sigma.shape[:2], *([1] * extra), 1)
        A = self.A.reshape(*self.A.shape, *([1] * extra))  # [B, Hp, N, *1]
        return torch.einsum("bhn...,bn...i,hid->bn...d", A, scaled, self.W_VO)

    def summed(self, c: Float[Tensor, "batch n *parts d"]) -> Float[Tensor, "batch *parts d_pool"]:
        """T(c) = Σ_m Σ_h A[h, m] (γ ⊙ c_m/σ_m) W_VO^h."""
        extra = c.ndim - 3
        scaled = self.gamma * c / self.sigma.reshape(*self.sigma.shape[:2], *([1] * extra), 1)
        weighted = torch.einsum("bhn,bn...i->bh...i", self.A, scaled)
        return torch.einsum("bh...i,hid->b...d", weighted, self.W_VO)


def finish_map_pool(
    model: HookedViT,
    store: dict[str, Tensor],
    layers: Sequence[int],
    per_source: bool,
    texts: Optional[Tensor],
    convention: Convention,
    normalize: bool,
) -> dict:
    """Fold the kept activations into ``Decomposition`` fields (see the module docstring)."""
    if convention != "equal_share":  # the per-token fold shares each token's mean equally; no other convention exists
        raise ValueError(f"convention={convention!r} is not defined for attention-pooled (MAP) towers: the trunk's "
                         "norm is folded per token with equal shares; use convention='equal_share'")
    s, cfg = store, model.cfg
    L, H, N = cfg.n_layers, cfg.n_heads, cfg.n_ctx
    K1 = 2 * L + 2  # K' = trunk components + the pooler MLP
    through = _PerTokenFold(model, s[f"blocks.{L - 1}.hook_resid_post"].float(),
                            s["attn_pool.attn.hook_pooled_pattern"].float())
    K0 = through.K0
    fold = output_fold(model, s["hook_pooled"], convention)
    embedding = s["hook_image_embed"].float()
    norm = embedding_norms(embedding, normalize)
    per_image = lambda t: t / norm.reshape(-1, *([1] * (t.ndim - 1)))  # noqa: E731

    attn_outs = torch.stack([s[f"blocks.{l}.hook_attn_out"].float() for l in range(L)], 2)  # [B, N, L, d]
    mlp_outs = torch.stack([s[f"blocks.{l}.hook_mlp_out"].float() for l in range(L)], 2)
    raw = {"embed": through.summed(s["hook_embed"].float()) + K0 / K1,
           "attns": through.summed(attn_outs) + K0[:, None] / K1,
           "mlps": through.summed(mlp_outs) + K0[:, None] / K1,
           "pool_mlp": s["attn_pool.hook_mlp_out"].float() + K0 / K1,
           "pooled": s["hook_pooled"].float()}
    heads, sources, scores = [], [], []
    for l in layers:
        attn = model.blocks[l].attn
        result = torch.einsum("bnhe,hed->bnhd", s[f"blocks.{l}.attn.hook_z"].float(), attn.W_O.float())
        result = result + attn.b_O.float() / H  # [B, N, H, d]
        heads.append(through.summed(result) + K0[:, None] / (K1 * H))
        if per_source or texts is not None:
            pieces = through.per_token(result).transpose(1, 2) + K0[:, None, None] / (K1 * H * N)  # [B, H, N, D]
            folded = fold.fold(pieces, 1 / (K1 * H * N))
            if per_source:
                sources.append(folded)
            if texts is not None:
                scores.append(folded @ texts.to(folded).T)
    if heads:
        raw["heads"] = torch.stack(heads, 1)

    pool = model.attn_pool
    Hp = pool.attn.n_heads
    W_O, b_O = pool.attn.W_O.float(), pool.attn.b_O.float()
    z0 = s["attn_pool.attn.hook_z"].float()  # [B, Hp, d_head]
    # The pooler's heads split a = r − u; with p_u = u + K₀/K' fixed, they share a − K₀/K' and the remaining
    # (K'−1)/K' of the output fold's shares: pool head hp = z0_hp W_O^hp + b_O/Hp − K₀/(K'·Hp).
    a_share = (K1 - 1) / (K1 * Hp)
    extra = {"pool_mlp": per_image(fold.fold(raw["pool_mlp"], 1 / K1))}
    pool_heads = torch.einsum("bhe,hed->bhd", z0, W_O) + b_O / Hp - K0[:, None] / (K1 * Hp)
    extra["pool_heads"] = per_image(fold.fold(pool_heads, a_share))
    if per_source:
        per_src = s["attn_pool.attn.hook_result_per_source"].float().transpose(1, 2)  # [B, Hp, n_src, D]
        n_src = per_src.shape[2]
        piece = per_src + (b_O / Hp - K0[:, None] / (K1 * Hp))[:, :, None] / n_src
        extra["pool_head_sources"] = per_image(fold.fold(piece, a_share / n_src))
    return dict(
        embed=per_image(fold.fold(raw["embed"], 1 / K1)),
        attns=per_image(fold.fold(raw["attns"], 1 / K1)),
        mlps=per_image(fold.fold(raw["mlps"], 1 / K1)),
        heads=per_image(fold.fold(raw["heads"], 1 / (K1 * H))) if heads
        else embedding.new_zeros(embedding.shape[0], 0, H, embedding.shape[-1]),
        layers=list(layers),
        embedding=per_image(embedding),
        convention=convention,
        normalized=normalize,
        head_sources=per_image(torch.stack(sources, 1)) if sources else None,
        source_scores=per_image(torch.stack(scores, 1)) if scores else None,
        raw=raw,
        extra=extra,
    )
