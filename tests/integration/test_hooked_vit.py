"""HookedViT reproduces open_clip's encode_image on real architectures (random, perturbed weights)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_refused, perturb_, random_open_clip, rel_err, tiny_clip

from vit_lens_clip import HookedViT
from vit_lens_clip.convert.open_clip import UnsupportedTowerError

TOL = 1e-5

SLOW = pytest.mark.slow  # full-size ViT-L ports: `pytest -m slow` (small towers of each kind run by default)
ARCHITECTURES = [
    "ViT-B-32",
    "ViT-B-32-quickgelu",
    "ViT-B-16",
    pytest.param("ViT-L-14", marks=SLOW),
    pytest.param("ViT-L-14-336", marks=SLOW),
    pytest.param("ViT-L-14-CLIPA", marks=SLOW),
    "coca_ViT-B-32",
    "ViT-B-16-plus-240",
]


def _check_port(model, x):
    hooked = HookedViT.from_open_clip(model)
    with torch.no_grad():
        expected = model.encode_image(x, normalize=False)
        got = hooked(x)
    assert got.shape == expected.shape
    err = rel_err(got, expected)
    assert err <= TOL, f"relative error {err:.2e}"
    return hooked


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_port_matches_open_clip(name, images):
    model = random_open_clip(name)
    hooked = _check_port(model, images(model, batch=2))
    blocks = model.visual.transformer.resblocks
    assert hooked.cfg.n_heads == blocks[0].attn.num_heads
    assert hooked.cfg.n_layers == len(blocks)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-bigG-14"])
def test_port_matches_open_clip_large(name, images):
    model = random_open_clip(name)
    hooked = _check_port(model, images(model, batch=1))
    assert hooked.cfg.n_heads == 16


def test_head_count_read_from_module():
    assert HookedViT.from_open_clip(random_open_clip("ViT-B-16-plus-240")).cfg.n_heads == 14


@SLOW
def test_clipa_config_read_from_the_module():
    hooked = HookedViT.from_open_clip(random_open_clip("ViT-L-14-CLIPA"))
    assert hooked.cfg.n_heads == 16
    assert hooked.cfg.pool_type == "avg" and hooked.cfg.final_ln_after_pool and not hooked.cfg.has_ln_pre


def test_activation_read_from_module_not_name(images):
    gelu_named = tiny_clip(quick_gelu=True)  # a GELU-looking config built with QuickGELU
    hooked = _check_port(gelu_named, images((32, 32)))
    assert hooked.cfg.act_fn == "quick_gelu"
    assert HookedViT.from_open_clip(tiny_clip()).cfg.act_fn == "gelu"


def test_layer_scale(images):
    model = tiny_clip(ls_init_value=0.5)
    perturb_(model, scale=0.3, seed=3)  # LayerScale γ far from its init
    _check_port(model, images((32, 32), batch=3))


def test_clipa_variants(images):
    model = tiny_clip(pool_type="avg", final_ln_after_pool=True, no_ln_pre=True)  # built like ViT-L-14-CLIPA
    hooked = _check_port(model, images((32, 32)))
    assert hooked.cfg.pool_type == "avg" and hooked.cfg.final_ln_after_pool and not hooked.cfg.has_ln_pre
    # average pooling with the LayerNorm before pooling
    model2 = tiny_clip(pool_type="avg", no_ln_pre=True)
    _check_port(model2, images((32, 32)))


def test_coca_pooler_heads_hookable(images):
    model = random_open_clip("coca_ViT-B-32")
    hooked = HookedViT.from_open_clip(model)
    x = images(model)
    _, cache = hooked.run_with_cache(x)
    assert cache["attn_pool.attn.hook_pattern"].shape[:3] == (2, 8, 256)
    assert "attn_pool.attn.hook_result_per_source" in cache.cache_dict


def test_unsupported_towers_named():
    model = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(UnsupportedTowerError, match="ModifiedResNet"):
        HookedViT.from_open_clip(model)
    with pytest.raises(UnsupportedTowerError, match="NormFormer"):
        HookedViT.from_open_clip(tiny_clip(qk_norm=True))


def test_hf_clip_port():
    transformers = pytest.importorskip("transformers")
    for act in ("quick_gelu", "gelu"):
        cfg = transformers.CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            image_size=32, patch_size=8, projection_dim=48, hidden_act=act,
        )
        torch.manual_seed(0)
        model = perturb_(transformers.CLIPVisionModelWithProjection(cfg).eval())
        hooked = HookedViT.from_hf(model)
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            expected = model(pixel_values=x).image_embeds
            got = hooked(x)
        assert rel_err(got, expected) <= TOL
        assert hooked.cfg.act_fn == act


def test_hook_names_and_shapes(images):
    model = tiny_clip()
    hooked = HookedViT.from_open_clip(model)
    x = images((32, 32), batch=2)
    _, cache = hooked.run_with_cache(x)
    n, h, d, dh = 17, 4, 64, 16
    expected = {
        "hook_embed": (2, n, d),
        "blocks.0.hook_resid_pre": (2, n, d),
        "blocks.0.ln1.hook_scale": (2, n, 1),
        "blocks.0.ln1.hook_normalized": (2, n, d),
        "blocks.1.attn.hook_q": (2, n, h, dh),
        "blocks.1.attn.hook_k": (2, n, h, dh),
        "blocks.1.attn.hook_v": (2, n, h, dh),
        "blocks.1.attn.hook_attn_scores": (2, h, n, n),
        "blocks.1.attn.hook_pattern": (2, h, n, n),
        "blocks.1.attn.hook_z": (2, n, h, dh),
        "blocks.1.attn.hook_result": (2, n, h, d),
        "blocks.1.attn.hook_pooled_pattern": (2, h, n),
        "blocks.1.attn.hook_result_per_source": (2, n, h, d),
        "blocks.2.hook_attn_out": (2, n, d),
        "blocks.2.hook_resid_mid": (2, n, d),
        "blocks.2.mlp.hook_pre": (2, n, 4 * d),
        "blocks.2.mlp.hook_post": (2, n, 4 * d),
        "blocks.2.hook_mlp_out": (2, n, d),
        "blocks.2.hook_resid_post": (2, n, d),
        "ln_final.hook_scale": (2, n, 1),
        "hook_pooled": (2, d),
        "hook_image_embed": (2, 48),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name


def test_hooked_paths_agree_with_fused_paths(images):
    """Caching every hook (manual attention, per-head results) gives the same output as the fused pass."""
    model = random_open_clip("ViT-B-16")
    hooked = HookedViT.from_open_clip(model)
    x = images(model)
    with torch.no_grad():
        fused = hooked(x)
        cached, cache = hooked.run_with_cache(x)
    assert rel_err(cached, fused) <= TOL
    per_source = cache["blocks.11.attn.hook_result_per_source"]
    result = cache["blocks.11.attn.hook_result"][:, 0]
    assert rel_err(per_source.sum(1), result) <= TOL
    attn_out = cache["blocks.11.hook_attn_out"]
    b_o = hooked.blocks[11].attn.b_O
    assert rel_err(result.sum(1) + b_o, attn_out[:, 0]) <= TOL
    assert rel_err(cache["blocks.11.attn.hook_pooled_pattern"], cache["blocks.11.attn.hook_pattern"][:, :, 0]) <= TOL


def test_per_source_edits_propagate(images):
    """Zeroing one (head, patch) contribution removes exactly that piece from the pooled attention output."""
    model = tiny_clip()
    hooked = HookedViT.from_open_clip(model)
    x = images((32, 32), batch=1)
    last = hooked.cfg.n_layers - 1
    _, cache = hooked.run_with_cache(x)
    piece = cache[f"blocks.{last}.attn.hook_result_per_source"][0, 5, 2]
    seen = {}

    def drop(t, hook):
        t = t.clone()
        t[:, 5, 2] = 0
        return t

    def keep(t, hook):
        seen["attn_out"] = t.detach().clone()

    with torch.no_grad():
        edited = hooked.run_with_hooks(
            x,
            fwd_hooks=[(f"blocks.{last}.attn.hook_result_per_source", drop), (f"blocks.{last}.hook_attn_out", keep)],
        )
    original = cache[f"blocks.{last}.hook_attn_out"][0]
    assert rel_err(seen["attn_out"][0, 0], original[0] - piece) <= TOL
    assert rel_err(seen["attn_out"][0, 1:], original[1:]) <= TOL  # other queries untouched
    assert not torch.allclose(edited, cache["hook_image_embed"])


def test_hooks_removed_after_exception(images):
    hooked = HookedViT.from_open_clip(tiny_clip())

    def boom(t, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        hooked.run_with_hooks(images((32, 32)), fwd_hooks=[("blocks.1.attn.hook_pattern", boom)])
    assert not any(hp.fwd_hooks for hp in hooked.hook_dict.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(images, dtype):
    model = tiny_clip()
    hooked = HookedViT.from_open_clip(model)
    x = images((32, 32))
    with torch.no_grad():
        ref = hooked(x)
        half = hooked.to(dtype)(x.to(dtype))
        _, cache = hooked.run_with_cache(x.to(dtype))
    assert half.dtype == dtype
    assert rel_err(half.float(), ref) < 3e-2
    assert cache["blocks.2.attn.hook_result_per_source"].dtype == dtype


def test_bad_input_errors():
    hooked = HookedViT.from_open_clip(tiny_clip())
    # a 3-d tensor breaks forward's 4-axis annotation
    assert_refused(lambda: hooked(torch.randn(2, 32, 32)), "expected images [batch, 3, H, W], got (2, 32, 32)")
    with pytest.raises(ValueError, match="expected"):
        hooked(torch.randn(2, 3, 48, 48))


import open_clip  # noqa: E402  (used by test_unsupported_towers_named)
