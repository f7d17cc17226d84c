"""EVA02 (timm ``eva02_*``, open_clip ``EVA02-*``): the port is exact, and with the sub-LayerNorm's per-token
statistics frozen its heads and (head, source) pieces equal a brute-force computation from timm's own weights
(float64), and sum to the layer's output and the embedding."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from conftest import perturb_, rel_err
from open_clip.timm_model import TimmModel
from timm.layers.pos_embed_sincos import apply_rot_embed_cat

from vit_lens_clip import HookedViT
from vit_lens_clip.convert.registry import check_open_clip_name, check_timm_name
from vit_lens_clip.decompose import decompose

TOL = 1e-5
SMALL = dict(embed_dim=64, depth=2, num_heads=4, img_size=32, patch_size=8)


def small_eva02(name: str = "eva02_base_patch16_clip_224", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, **{**SMALL, **kw})
    with torch.no_grad():  # sharpen timm's near-uniform init so the rotation and the pattern matter
        for block in model.blocks:
            (block.attn.qkv.weight if block.attn.qkv is not None else block.attn.q_proj.weight).mul_(8)
    return perturb_(model.eval(), seed=seed)


def images(batch: int = 2, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("name, kw", [
    ("eva02_base_patch16_clip_224", {}),  # sub-LN in attention and MLP, split SwiGLU, token pooling
    ("eva02_tiny_patch14_224", {"num_classes": 7}),  # packed SwiGLU, no sub-LN, avg pooling + fc_norm
    ("eva02_base_patch16_clip_224", {"global_pool": "avg", "num_classes": 0}),  # sub-LN under a mean readout
])
def test_timm_eva02_forward_is_exact(name, kw):
    model = small_eva02(name, **kw)
    hooked = HookedViT.from_timm(model)
    x = images()
    with torch.no_grad():
        y = model(x)
        assert rel_err(hooked(x), y) <= TOL
        parts = decompose(hooked, x, per_source=True)
    assert rel_err(parts.total(), y) <= TOL
    assert rel_err(parts.head_sources.sum(3), parts.heads) <= TOL


def test_open_clip_eva02_tower_is_exact():
    """open_clip's EVA02-B-16 config: a TimmModel over eva02_base_patch16_clip_224, the trunk's head projects."""
    assert check_open_clip_name("EVA02-B-16").name == "open_clip_timm"
    assert check_timm_name("eva02_large_patch14_clip_224").name == "eva02"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        visual = TimmModel("eva02_base_patch16_clip_224", embed_dim=48, pool="token", proj=None)
    visual.trunk = small_eva02(num_classes=48)
    hooked = HookedViT.from_open_clip(visual.eval())
    x = images()
    with torch.no_grad():
        y = visual(x)
    assert rel_err(hooked(x), y) <= TOL
    assert rel_err(decompose(hooked, x, layers=[-1]).total(), y) <= TOL


def test_per_head_hooks_sum_to_the_layer_output():
    hooked = HookedViT.from_timm(small_eva02()).double()
    x = images(dtype=torch.float64)
    _, cache = hooked.run_with_cache(x)
    for l in range(hooked.cfg.n_layers):
        attn = hooked.blocks[l].attn
        assert rel_err(cache[f"blocks.{l}.attn.hook_result"].sum(-2) + attn.b_O, cache[f"blocks.{l}.hook_attn_out"]) < 1e-12
        pooled = cache[f"blocks.{l}.attn.hook_result_per_source"].sum((1, 2)) + attn.b_O
        assert rel_err(pooled, cache[f"blocks.{l}.hook_attn_out"][:, 0]) < 1e-12
    final = cache[f"blocks.{hooked.cfg.n_layers - 1}.hook_resid_post"]
    assert rel_err(cache.stack_head_results(incl_remainder=True, apply_ln=False).sum(0), final) < 1e-12


def _brute_force_last_layer(model: torch.nn.Module, x: torch.Tensor):
    """Heads and (head, source) pieces of the last layer at the class token, from timm's weights: the sub-LN
    statistics (μ, σ at the class row) frozen, its mean and β term κ shared equally, b_O shared equally."""
    kept = {}
    block = model.blocks[-1]
    handle = block.norm1.register_forward_hook(lambda m, i, o: kept.update(x=o))  # update returns None
    final = model.norm.register_forward_hook(lambda m, i, o: kept.update(r=i[0][:, 0]))
    with torch.no_grad():
        y = model(x)
    handle.remove()
    final.remove()
    return _pieces(model, block.attn, kept["x"]) + (kept["r"], y)


@torch.no_grad()
def _pieces(model: torch.nn.Module, a: torch.nn.Module, h_x: torch.Tensor):
    H = a.num_heads
    q = (a.q_proj(h_x)).unflatten(-1, (H, -1)).transpose(1, 2)
    k = (a.k_proj(h_x)).unflatten(-1, (H, -1)).transpose(1, 2)
    v = (a.v_proj(h_x)).unflatten(-1, (H, -1)).transpose(1, 2)  # [B, H, N, e]
    rope = model.rope.get_embed()
    q = torch.cat([q[:, :, :1], apply_rot_embed_cat(q[:, :, 1:], rope)], 2)
    k = torch.cat([k[:, :, :1], apply_rot_embed_cat(k[:, :, 1:], rope)], 2)
    A = (torch.einsum("bhe,bhne->bhn", q[:, :, 0], k) * a.scale).softmax(-1)  # the class row [B, H, N]
    z = torch.einsum("bhn,bhne->bhe", A, v)  # the class row
    flat = z.flatten(1)
    mu, sigma = flat.mean(-1, keepdim=True), (flat.var(-1, unbiased=False, keepdim=True) + a.norm.eps).sqrt()
    gamma, beta = a.norm.weight.unflatten(0, (H, -1)), a.norm.bias
    W = a.proj.weight.T.unflatten(0, (H, -1))  # [H, e, d]
    kappa = (beta - a.norm.weight * mu / sigma) @ a.proj.weight.T  # [B, d]
    N = v.shape[2]
    pieces = (torch.einsum("bhn,bhne,he,hed->bhnd", A, v, gamma, W) / sigma[:, :, None, None]
              + (kappa[:, None, None] + a.proj.bias) / (H * N))
    heads = torch.einsum("bhe,he,hed->bhd", z, gamma, W) / sigma[:, :, None] + (kappa[:, None] + a.proj.bias) / H
    return heads, pieces, a.proj(a.norm(flat))  # the layer's output at the class row


def _fold(c: torch.Tensor, share: float, model: torch.nn.Module, r: torch.Tensor) -> torch.Tensor:
    """The equal-share fold of the final LayerNorm and the head: (γ ⊙ (c − wμ)/σ + wβ)·P + w·b."""
    mu = r.mean(-1)
    sigma = (r.var(-1, unbiased=False) + model.norm.eps).sqrt()
    extra = c.ndim - 2
    mu, sigma = (t.reshape(-1, *([1] * extra)) for t in (mu, sigma))
    normed = model.norm.weight * (c - share * mu[..., None]) / sigma[..., None] + share * model.norm.bias
    return normed @ model.head.weight.T + share * model.head.bias


def test_heads_and_sources_equal_brute_force_with_frozen_statistics_float64():
    model = small_eva02(num_classes=48).double()
    hooked = HookedViT.from_timm(model)
    x = images(dtype=torch.float64)
    heads, pieces, attn_out, r, y = _brute_force_last_layer(model, x)
    # the brute force itself: heads sum to the layer's output, pieces to the heads
    assert rel_err(heads.sum(1), attn_out) < 1e-12
    assert rel_err(pieces.sum(2), heads) < 1e-12
    parts = decompose(hooked, x, layers=[-1], per_source=True)
    assert rel_err(parts.total(), y) < 1e-12
    L, H, N = hooked.cfg.n_layers, hooked.cfg.n_heads, hooked.cfg.n_ctx
    K = 2 * L + 1
    assert rel_err(parts.heads[:, 0], _fold(heads, 1 / (K * H), model, r)) < 1e-10
    assert rel_err(parts.head_sources[:, 0], _fold(pieces, 1 / (K * H * N), model, r)) < 1e-10
    texts = torch.nn.functional.normalize(torch.randn(3, 48, dtype=torch.float64), dim=-1)
    scored = decompose(hooked, x, layers=[-1], texts=texts)
    assert rel_err(scored.source_scores, parts.head_sources @ texts.T) < 1e-10


def test_sub_layernorm_hooks_and_edits():
    hooked = HookedViT.from_timm(small_eva02()).double()
    x = images(dtype=torch.float64)
    _, cache = hooked.run_with_cache(x)
    flat = cache["blocks.1.attn.hook_z"].flatten(-2)
    sigma = (flat.var(-1, unbiased=False, keepdim=True) + hooked.blocks[1].attn.ln_z.eps).sqrt()
    assert rel_err(cache["blocks.1.attn.ln_z.hook_scale"], sigma) < 1e-12
    assert "blocks.1.mlp.ln.hook_scale" in cache and "blocks.1.mlp.hook_pre_linear" in cache
    assert "blocks.1.attn.hook_rot_q" in cache
    # zeroing one head's pooled pieces removes exactly its pooled contribution from the layer's output
    head = cache["blocks.1.attn.hook_result_per_source"][:, :, 2].sum(1)

    def zero_head(t, hook):
        t[:, :, 2] = 0
        return t

    with hooked.hooks(fwd_hooks=[("blocks.1.attn.hook_result_per_source", zero_head)]):
        _, edited = hooked.run_with_cache(x)
    change = edited["blocks.1.hook_attn_out"][:, 0] - cache["blocks.1.hook_attn_out"][:, 0]
    assert rel_err(change, -head) < 1e-10


def test_eva02_e_post_norm_is_refused_from_its_name():
    from vit_lens_clip.errors import UnsupportedTowerError

    for check, name in ((check_open_clip_name, "EVA02-E-14"), (check_timm_name, "eva02_enormous_patch14_clip_224")):
        with pytest.raises(UnsupportedTowerError, match="post-norm blocks"):
            check(name)
    with pytest.raises(UnsupportedTowerError, match="post-norm blocks"):
        HookedViT.from_timm(small_eva02("eva02_enormous_patch14_clip_224"))
