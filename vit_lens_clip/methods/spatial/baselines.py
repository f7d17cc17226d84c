"""Baseline relevance maps for ViTs, read from HookedViT's hooks (no second forward implementation).

Every function returns a patch map [B, grid_h, grid_w]. "Pooled row" means the attention row of the token the
embedding is read from: CLS for token pooling, the mean of the patch rows for average pooling (CLIPA). An
attention-pooled tower (CoCa, SigLIP / MAP, PE-Core) reads its embedding from the pooler's query 0, which
attends over the trunk's tokens with a_h = A_pool[h, ·]; that attention is the last step of every map below:

- raw attention: mean_h a_h over the patches;
- rollout: ā R with ā = mean_h a_h (the query is not a token of the stream: no identity term);
- GradCAM: unchanged (the score's gradient reaches the last block's tokens through the pooler);
- Chefer: r = mean_h (∇a_h ⊙ a_h)⁺ R, the cross-attention rule for a query outside the stream (R_qs = 0 before).

- ``raw_attention``: the last layer's pooled attention over patches, averaged over heads.
- ``attention_rollout`` (Abnar & Zuidema 2020): Â_l = norm_rows(mean_h A_l + I); R = Â_L ⋯ Â_1; pooled row.
- ``gradcam`` (Selvaraju et al. 2017 on tokens): X = input tokens of the last block, G = ∂(y·t)/∂X;
  α = mean_patches G; map_m = ReLU(X_m · α).
- ``chefer`` (Chefer, Gur, Wolf 2021, self-attention rule): R = I; for each layer Ā = mean_h (∇A ⊙ A)⁺,
  R ← R + Ā R; pooled row over patches.

Text-driven maps (``gradcam``, ``chefer``) take a target direction t per image and differentiate the raw
embedding score y·t. Gradients are taken with respect to activations kept by hooks; the input is made to
require grad so the graph exists even when the model's parameters are frozen.
"""

from __future__ import annotations

from typing import Callable, Optional

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.pooling import patch_slice
from vit_lens_clip.validation import text_embeddings


def _patch_grid(model: HookedViT, per_patch: Float[Tensor, "batch n_patches"]) -> Tensor:
    grid_h, grid_w = model.cfg.grid_size
    return einops.rearrange(per_patch.float(), "b (gh gw) -> b gh gw", gh=grid_h, gw=grid_w)


POOL_PATTERN = "attn_pool.attn.hook_pattern"  # [B, Hp, n_queries, n_src]: the pooler's query 0 reads the embedding


def _pooled_row(
    model: HookedViT,
    matrix: Float[Tensor, "batch n_query n_src"],
    pool_row: Optional[Float[Tensor, "batch n_pool_src"]] = None,
) -> Float[Tensor, "batch n_src"]:
    """Row of the pooled token: CLS, the mean over patch queries for average pooling, or for an attentional
    pooler ``pool_row`` (its query's weights over the tokens it reads) times ``matrix``."""
    if model.attn_pool is None:
        return model.pool_tokens(matrix)
    return torch.einsum("bm,bmn->bn", _over_all_tokens(model, pool_row), matrix)


def _over_all_tokens(model: HookedViT, row: Float[Tensor, "batch n_pool_src"]) -> Float[Tensor, "batch n_ctx"]:
    """A pooler row over the whole stream: prefix tokens get 0 where the pooler reads the patches only."""
    missing = model.cfg.n_ctx - row.shape[-1]
    return torch.cat([row.new_zeros(row.shape[0], missing), row], dim=-1) if missing else row


def _pool_query(pattern: Float[Tensor, "batch n_heads n_queries n_src"]) -> Float[Tensor, "batch n_heads n_src"]:
    return pattern[:, :, 0].float()


def _targets(model: HookedViT, texts: Tensor, batch: int) -> Float[Tensor, "batch d_out"]:
    one = texts.ndim == 1
    texts = text_embeddings(texts, model.cfg.output_dim).float().to(model.W_proj.device)
    if one:
        texts = texts.expand(batch, -1)
    if texts.shape[0] != batch:
        raise ValueError(f"texts must be [{model.cfg.output_dim}] or [{batch}, {model.cfg.output_dim}], "
                         f"got {tuple(texts.shape)}")
    return texts


def _keep(store: dict[str, Tensor], key: str) -> Callable:
    def hook(activation: Tensor, hook) -> None:
        store[key] = activation

    return hook


def raw_attention(model: HookedViT, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch grid_h grid_w"]:
    """mean_h A_{L-1,h}[pool, m] over patches m (last layer); the pooler's mean_h A_pool[h, m] for an
    attention-pooled tower."""
    store: dict[str, Tensor] = {}
    pooler = model.attn_pool is not None
    name = POOL_PATTERN if pooler else f"blocks.{model.cfg.n_layers - 1}.attn.hook_pooled_pattern"
    with torch.no_grad():
        model.run_with_hooks(images, fwd_hooks=[(name, _keep(store, "pooled"))])
    row = _pool_query(store["pooled"]) if pooler else store["pooled"].float()
    row = _over_all_tokens(model, row.mean(1)) if pooler else row.mean(1)
    return _patch_grid(model, row[:, patch_slice(model.cfg.n_prefix)])


def attention_rollout(
    model: HookedViT, images: Float[Tensor, "batch channel height width"]
) -> Float[Tensor, "batch grid_h grid_w"]:
    """Rollout: R = Â_{L-1} ⋯ Â_0 with Â_l = rows-normalised (mean_h A_l + I); pooled row over patches (an
    attentional pooler's row: mean_h A_pool[h] · R)."""
    store: dict[str, Tensor] = {}
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    pooler = [POOL_PATTERN] if model.attn_pool is not None else []
    with torch.no_grad():
        model.run_with_hooks(images, fwd_hooks=[(n, _keep(store, n)) for n in names + pooler])
    pool_row = _pool_query(store.pop(POOL_PATTERN)).mean(1) if pooler else None
    rollout = None
    for name in names:
        mixed = store.pop(name).float().mean(1)
        mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return _patch_grid(model, _pooled_row(model, rollout, pool_row)[:, patch_slice(model.cfg.n_prefix)])


def _score_with_grads(
    model: HookedViT, images: Tensor, texts: Tensor, hook_names: list[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Run with hooks keeping ``hook_names`` in the graph; return activations and ∂(Σ_b y_b·t_b)/∂activation."""
    store: dict[str, Tensor] = {}
    targets = _targets(model, texts, images.shape[0])
    with torch.enable_grad():
        leaf = images.detach().to(model.W_patch.device).requires_grad_(True)
        embedding = model.run_with_hooks(leaf, fwd_hooks=[(n, _keep(store, n)) for n in hook_names])
        score = (embedding.float() * targets).sum()
        grads = torch.autograd.grad(score, [store[n] for n in hook_names])
    activations = {n: store[n].detach() for n in hook_names}
    return activations, {n: g.detach() for n, g in zip(hook_names, grads)}


def gradcam(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    texts: Float[Tensor, "*batch d_out"],
) -> Float[Tensor, "batch grid_h grid_w"]:
    """GradCAM on the last block's input tokens X for the score y·t: ReLU(X_m · mean_patches ∂(y·t)/∂X)
    (through the pooler, for an attention-pooled tower)."""
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_pre"
    acts, grads = _score_with_grads(model, images, texts, [name])
    patches = patch_slice(model.cfg.n_prefix)
    tokens, grad = acts[name][:, patches].float(), grads[name][:, patches].float()
    weights = grad.mean(1)  # [B, d]: GradCAM's channel weights, pooled over the patch positions
    return _patch_grid(model, torch.einsum("bmd,bd->bm", tokens, weights).clamp(min=0))


def chefer(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    texts: Float[Tensor, "*batch d_out"],
) -> Float[Tensor, "batch grid_h grid_w"]:
    """Gradient-weighted attention relevance: R = I; R ← R + mean_h (∇A_l ⊙ A_l)⁺ R for l = 0..L-1; pooled row
    (an attentional pooler's row: mean_h (∇A_pool ⊙ A_pool)⁺[h] · R)."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    pooler = [POOL_PATTERN] if model.attn_pool is not None else []
    acts, grads = _score_with_grads(model, images, texts, names + pooler)
    pool_row = None
    if pooler:
        pool_row = (_pool_query(grads[POOL_PATTERN]) * _pool_query(acts[POOL_PATTERN])).clamp(min=0).mean(1)
    relevance = None
    for name in names:
        weighted = (grads[name].float() * acts[name].float()).clamp(min=0).mean(1)  # [B, N, N]
        if relevance is None:
            relevance = torch.eye(weighted.shape[-1], device=weighted.device).expand_as(weighted)
        relevance = relevance + weighted @ relevance
    return _patch_grid(model, _pooled_row(model, relevance, pool_row)[:, patch_slice(model.cfg.n_prefix)])


# the benchmark's registry of every map method (name, title, needs-text, one signature) is
# vit_lens_clip.methods.spatial.registry.MAP_METHODS; these two stay for callers of the old names
BASELINES = {"raw_attention": raw_attention, "rollout": attention_rollout, "gradcam": gradcam, "chefer": chefer}
TEXT_DRIVEN = tuple(name for name in BASELINES if name in ("gradcam", "chefer"))
