"""SAE feature effects through an attentional pooler (CoCa; SigLIP's MAP head) equal a brute-force hooked
computation in float64 with the pooler's pattern and every LayerNorm statistic frozen; sources split exactly on
EVA02 (sub-LayerNorm on the heads) and maps drop the prefix tokens of each tower."""

from __future__ import annotations

import warnings

import open_clip
import pytest
import timm
import torch
from conftest import perturb_, rel_err, through_pooler

from vit_lens_clip.methods.sae import explain
from vit_lens_clip.methods.sae.sae import SAEConfig, SparseAutoencoder
from vit_lens_clip.methods.sae.splice import sae_hook_name, saes_spliced
from vit_lens_clip.model.hooked_vit import HookedViT

D, D_SAE = 64, 48
TRUNK = dict(embed_dim=D, depth=3, num_heads=4, img_size=32, patch_size=8)


def _coca() -> HookedViT:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coca = open_clip.CoCa(
            embed_dim=48,
            vision_cfg=dict(image_size=32, patch_size=8, width=D, layers=3, head_width=16, attentional_pool=True,
                            attn_pooler_heads=4, output_tokens=True),
            text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
            multimodal_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1))
    return HookedViT.from_open_clip(perturb_(coca.eval(), seed=4))


def _timm(name: str, seed: int, **kw) -> HookedViT:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, **TRUNK, **kw)
    return HookedViT.from_timm(perturb_(model.eval(), seed=seed))


TOWERS = {
    "coca": _coca,
    "siglip": lambda: _timm("vit_base_patch16_siglip_224", 3, num_classes=0),
    "eva02": lambda: _timm("eva02_base_patch16_clip_224", 5, num_classes=48),
}


@pytest.fixture(scope="module", params=["coca", "siglip"])
def pooled64(request):
    model = TOWERS[request.param]().double()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    return model, x


def random_sae(hook: str, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=D_SAE, hook_name=hook, normalize="expected_average_only_in",
                                      scaling_factor=0.7))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 2 else 0.05))
    return sae.double()


def brute_force(model: HookedViT, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The embedding's change when ``delta`` [B, T, d] is added to the pooler's input alone, statistics and
    pattern frozen (``conftest.through_pooler``, ``delta`` scaled by 1e4 against cancellation)."""
    _, cache = model.run_with_cache(x)
    return through_pooler(model, x, cache, delta, scale=1e4)


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_mid"])
def test_direct_effects_through_the_pooler_equal_brute_force(pooled64, hook):
    model, x = pooled64
    sae = random_sae(hook, seed=7)
    with torch.no_grad(), saes_spliced(model, sae, use_error_term=True):
        _, cache = model.run_with_cache(x, names_filter=lambda n: n == sae_hook_name(sae))
    acts = cache[sae_hook_name(sae)]  # [B, T, d_sae]
    feats = acts.abs().sum((0, 1)).topk(3).indices.tolist()  # features that fire (random SAEs leave many dead)
    effects = explain.feature_direct_effects(model, sae, x, feats)
    assert effects.shape == (2, 3, model.cfg.output_dim) and effects.dtype == torch.float64
    d = explain.decoder_directions(sae)
    for n, j in enumerate(feats):
        expected = brute_force(model, x, acts[..., j, None].double() * d[j])
        assert expected.abs().max() > 1e-6  # the feature reaches the embedding
        assert rel_err(effects[:, n], expected) < 1e-12
    # the σ = 1 direction: one unit at every token (each pooler head's pattern sums to 1)
    _, clean = model.run_with_cache(x)
    pattern = clean["attn_pool.attn.hook_pooled_pattern"]
    ones = torch.ones(2, model.cfg.n_ctx, len(feats), dtype=torch.float64)
    unit = explain.pooled_direct_effects(model, sae, ones, explain.pooler_token_weights(
        model, pattern, torch.ones(2, model.cfg.n_ctx, dtype=torch.float64)), None, feats)
    assert rel_err(unit[0], explain.direct_effect_directions(model, sae, feats)) < 1e-12
    with pytest.raises(explain.UnsupportedTowerError, match="attentional pooler"):
        explain.direct_effects(model, sae, acts[:, 0, feats], clean["hook_pooled"], feats)


def test_sources_on_eva02_sum_to_the_pre_activation():
    model = TOWERS["eva02"]().double()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sae = random_sae("blocks.2.hook_resid_mid", seed=8)
    src = explain.feature_sources(model, sae, x, features=[0, 5, 17], position=3)
    assert rel_err(src.total(), src.pre_acts) < 1e-10
    assert float(src.heads.abs().sum()) > 0.05 * float(src.pre_acts.abs().sum())
    assert rel_err(src.head_sources.sum(3), src.heads[:, :, :, 3]) < 1e-10


@pytest.mark.parametrize("name", ["siglip", "eva02"])
def test_activation_maps_drop_the_prefix_tokens(name):
    model = TOWERS[name]()
    acts = torch.arange(2 * model.cfg.n_ctx * 3, dtype=torch.float32).reshape(2, model.cfg.n_ctx, 3)
    maps = explain.activation_maps(model, acts)
    assert maps.shape == (2, 3, *model.cfg.grid_size)
    assert torch.equal(maps[1, 2].flatten(), acts[1, model.cfg.n_prefix:, 2])
