"""A timm ViT that averages its patches after a per-token final LayerNorm (``global_pool="avg"``, no fc_norm): the
port equals timm, and the decomposition (each token's norm statistics frozen, the patch mean taken of the normed
pieces) sums exactly at every level; own_mean is refused, not ignored."""

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import perturb_, rel_err

from vit_lens_clip import HookedViT
from vit_lens_clip.decompose import decompose


def _tower() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=3, embed_dim=64,
                              num_heads=4, global_pool="avg", fc_norm=False, num_classes=10)
    return perturb_(model.eval(), scale=0.2)


def _images(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_port_and_decomposition_in_float32():
    model = _tower()
    hooked = HookedViT.from_timm(model)
    assert hooked.cfg.pool_type == "avg" and not hooked.cfg.final_ln_after_pool and hooked.ln_final is not None
    x = _images()
    with torch.no_grad():
        y = model(x)
    assert rel_err(hooked(x), y) <= 1e-5
    parts = decompose(hooked, x, per_source=True)
    assert rel_err(parts.total(), y) <= 1e-5
    assert rel_err(parts.heads.sum(2), parts.attns) <= 1e-5
    assert rel_err(parts.head_sources.sum(3), parts.heads) <= 1e-5


def test_float64_exact_at_every_level_and_text_scores():
    model = _tower().double()
    hooked = HookedViT.from_timm(model)
    x = _images(torch.float64)
    with torch.no_grad():
        y = model(x)
    texts = F.normalize(torch.randn(3, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64), dim=-1)
    parts = decompose(hooked, x, layers=[0, 2], per_source=True, texts=texts)
    assert rel_err(parts.total(), y) <= 1e-12
    assert rel_err(parts.heads.sum(2), parts.attns[:, [0, 2]]) <= 1e-12
    assert rel_err(parts.head_sources.sum(3), parts.heads) <= 1e-12
    assert rel_err(parts.source_scores, parts.head_sources @ texts.T) <= 1e-12
    scores_only = decompose(hooked, x, layers=[2], texts=texts)
    assert scores_only.head_sources is None and rel_err(scores_only.source_scores, parts.source_scores[:, 1:]) <= 1e-12
    normalized = decompose(hooked, x, normalize=True)
    assert rel_err(normalized.total(), y / y.norm(dim=-1, keepdim=True)) <= 1e-12


def test_a_heads_part_is_its_direct_effect_through_the_frozen_norm_plus_its_share():
    """Head h's part minus its direct effect mean_m (γ ⊙ result_h,m / σ_m)·P is the same constant share for every
    head of a layer (its b_O, β, μ and bias shares), so differences between heads are pure direct effects."""
    model = _tower().double()
    hooked = HookedViT.from_timm(model)
    x = _images(torch.float64)
    parts = decompose(hooked, x)
    _, cache = hooked.run_with_cache(x)
    sigma = cache["ln_final.hook_scale"][:, 1:]  # the patches' own statistics, [B, N_p, 1]
    result = cache["blocks.2.attn.hook_result"][:, 1:]  # [B, N_p, H, d]
    direct = (hooked.ln_final.w * result / sigma[..., None]).mean(1) @ hooked.W_proj  # [B, H, D]
    rest = parts.heads[:, 2] - direct
    assert (rest - rest[:, :1]).abs().max() <= 1e-12 * parts.heads.abs().max()
    assert (direct - direct[:, :1]).abs().max() > 1e-3 * parts.heads.abs().max()  # the heads do differ


def test_own_mean_is_refused_in_one_line():
    hooked = HookedViT.from_timm(_tower())
    with pytest.raises(ValueError, match="applied at every token before the patches are averaged"):
        decompose(hooked, _images(), convention="own_mean")


def test_post_hoc_ablation_in_residual_space_maps_through_the_projection_only():
    """Decomposition.raw sums to the mean of the normed patches, so a residual-space ablation goes through P and b
    alone (no second LayerNorm) and equals the folded-space ablation."""
    from vit_lens_clip.methods.ablation import ablate_posthoc

    model = _tower().double()
    hooked = HookedViT.from_timm(model)
    x = _images(torch.float64)
    parts = decompose(hooked, x)
    means = {key: value.mean(0) for key, value in parts.raw.items()}
    means = {**{f"raw.{k}": v for k, v in means.items()},
             **{k: getattr(parts, k).mean(0) for k in ("embed", "attns", "mlps", "heads")}}
    assert rel_err(hooked.output_from_pooled(parts.raw["pooled"]), parts.embedding) <= 1e-12
    folded = ablate_posthoc(parts, means, heads=[(2, 1)], attn_layers=[0], space="folded")
    residual = ablate_posthoc(parts, means, heads=[(2, 1)], attn_layers=[0], space="residual", model=hooked)
    assert rel_err(residual, folded) <= 1e-12 and rel_err(folded, parts.embedding) > 1e-6
