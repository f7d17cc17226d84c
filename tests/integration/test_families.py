"""Every ViT family: timm ViTs (DINOv2 with registers, DeiT, AugReg, avg/map pooling) and SigLIP (timm towers
with a MAP head, as open_clip builds them) are exact, their caches and decompositions sum, and unsupported
towers fail from the config alone. Random weights with biases, LayerNorm and LayerScale perturbed."""

from __future__ import annotations

import time
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import perturb_, rel_err
from open_clip.timm_model import TimmModel
from timm.layers import apply_rot_embed_cat
from transformer_lens import ActivationCache

from vit_lens_clip import HookedViT
from vit_lens_clip.convert.registry import check_open_clip_name, check_timm_name
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.errors import UnsupportedTowerError, UserInputError
from vit_lens_clip.methods.spatial.heatmaps import text_heatmap

TOL = 1e-5
SMALL = dict(embed_dim=64, depth=2, num_heads=4)

TIMM = {
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", dict(img_size=28, num_classes=0)),  # no_embed_class, LayerScale
    "dinov2_reg4_classifier": ("vit_small_patch14_reg4_dinov2", dict(img_size=28, num_classes=7)),
    "deit": ("deit_tiny_patch16_224", dict(img_size=32)),
    "augreg": ("vit_tiny_patch16_224.augreg_in21k", dict(img_size=32)),
    "avg_fc_norm": ("vit_tiny_patch16_224", dict(img_size=32, global_pool="avg")),
    "map_with_cls": ("vit_tiny_patch16_224", dict(img_size=32, global_pool="map")),
    "siglip": ("vit_base_patch16_siglip_224", dict(img_size=32, num_classes=0)),
}


def small_timm(key: str, seed: int = 0) -> torch.nn.Module:
    name, overrides = TIMM[key]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, **SMALL, **overrides)
    return perturb_(model.eval(), seed=seed)


def _images(hooked, batch=2, seed=1):
    return torch.randn(batch, 3, *hooked.cfg.image_size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(TIMM))
def timm_port(request):
    model = small_timm(request.param)
    hooked = HookedViT.from_timm(model)
    x = _images(hooked)
    with torch.no_grad():
        y = model(x)
    return request.param, hooked, x, y


def test_timm_port_matches_timm_forward(timm_port):
    key, hooked, x, y = timm_port
    with torch.no_grad():
        assert rel_err(hooked(x), y) <= TOL
    expected = {"dinov2_reg4": (1, 4, "tok"), "siglip": (0, 0, "map"), "map_with_cls": (1, 0, "map"),
                "avg_fc_norm": (1, 0, "avg")}.get(key)
    if expected:
        assert (int(hooked.cfg.class_token), hooked.cfg.n_registers, hooked.cfg.pool_type) == expected


def test_timm_activation_cache_sums(timm_port):
    key, hooked, x, _ = timm_port
    _, cache = hooked.run_with_cache(x)
    assert isinstance(cache, ActivationCache)
    final = cache[f"blocks.{hooked.cfg.n_layers - 1}.hook_resid_post"]
    stack = cache.decompose_resid(apply_ln=False)
    assert rel_err(stack.sum(0), final) <= TOL
    heads = cache.stack_head_results(incl_remainder=True, apply_ln=False)
    assert heads.shape[0] == hooked.cfg.n_layers * hooked.cfg.n_heads + 1
    assert rel_err(heads.sum(0), final) <= TOL


def test_timm_decomposition_sums(timm_port):
    """Parts sum to the output (logits: direct logit attribution onto the class weights, bias shared)."""
    key, hooked, x, y = timm_port
    texts = F.normalize(torch.randn(3, hooked.cfg.output_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    parts = decompose(hooked, x, per_source=True, texts=texts)
    assert rel_err(parts.total(), y) <= TOL
    assert rel_err(parts.heads.sum(2), parts.attns) <= TOL
    assert rel_err(parts.head_sources.sum(3), parts.heads) <= TOL
    assert rel_err(parts.source_scores, parts.head_sources @ texts.T) <= TOL
    if hooked.cfg.pool_type == "map":
        assert rel_err(parts.extra["pool_heads"].sum(1) + parts.extra["pool_mlp"], y) <= TOL
        assert rel_err(parts.extra["pool_head_sources"].sum(2), parts.extra["pool_heads"]) <= TOL


def test_map_trunk_has_no_pooled_token_hooks():
    hooked = HookedViT.from_timm(small_timm("siglip"))
    assert "blocks.0.attn.hook_pooled_pattern" not in hooked.hook_dict
    assert "attn_pool.attn.hook_result_per_source" in hooked.hook_dict


# ---------------------------------------------------------------- SigLIP as open_clip builds it
def _open_clip_siglip(proj: str) -> TimmModel:
    """open_clip's TimmModel adapter around a SigLIP trunk at a small test width."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        visual = TimmModel("vit_base_patch16_siglip_224", embed_dim=48, pool="map", proj=proj, proj_bias=True)
    visual.trunk = small_timm("siglip")
    if proj == "linear":
        visual.head.proj = torch.nn.Linear(64, 48, bias=True)
    return perturb_(visual.eval(), seed=3)


@pytest.mark.parametrize("proj", ["none", "linear"])
def test_open_clip_siglip_tower_is_exact(proj):
    visual = _open_clip_siglip(proj)
    hooked = HookedViT.from_open_clip(visual)
    x = _images(hooked)
    with torch.no_grad():
        y = visual(x)
    assert rel_err(hooked(x), y) <= TOL
    parts = decompose(hooked, x, layers=[-1], per_source=True)
    assert rel_err(parts.total(), y) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "ViT-B-16-SigLIP2"])
def test_open_clip_siglip_full_size(name):
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = perturb_(open_clip.create_model(name, pretrained=None).eval())
    hooked = HookedViT.from_open_clip(model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(hooked(x), model.encode_image(x)) <= TOL


def test_siglip_pooler_head_map_equals_brute_force_ablation():
    """Zero one pooler head's contribution from one source m (the pooler MLP held at its clean value, as a
    direct effect): the text score changes by −M[m] + c, with c one constant per image (the piece's share of
    b_O, K₀ and the bias). So Δ_m + M[m] is the same for every source, and the Δ_m add up to ablating all.
    In float64: the brute-force differences cancel |base| ≈ 100·|M|, which float32 rounding would blur."""
    hooked = HookedViT.from_timm(small_timm("siglip")).double()
    x = _images(hooked, batch=2).double()
    text = F.normalize(torch.randn(hooked.cfg.output_dim, generator=torch.Generator().manual_seed(2)), dim=-1).double()
    head = 1
    parts = decompose(hooked, x, per_source=True)
    heat = parts.extra["pool_head_sources"][:, head] @ text  # [B, N]
    clean_mlp = {}

    def keep_mlp(u, hook):
        clean_mlp["u"] = u.detach()

    with torch.no_grad():
        base = hooked.run_with_hooks(x, fwd_hooks=[("attn_pool.hook_mlp_out", keep_mlp)]) @ text

        def ablated(sources):
            def zero(per_source, hook):
                per_source = per_source.clone()
                per_source[:, sources, head] = 0
                return per_source

            out = hooked.run_with_hooks(x, fwd_hooks=[("attn_pool.attn.hook_result_per_source", zero),
                                                      ("attn_pool.hook_mlp_out", lambda u, hook: clean_mlp["u"])])
            return out @ text - base

        deltas = torch.stack([ablated([m]) for m in range(hooked.cfg.n_ctx)], 1)  # [B, N]
        everything = ablated(list(range(hooked.cfg.n_ctx)))
    offset = deltas + heat  # = the constant share c per image
    scale = heat.abs().max()
    assert ((offset - offset[:, :1]).abs().max() / scale).item() <= TOL
    # a sum of N brute-force differences: fp32 rounding of the scores themselves (|base|) sets the scale
    assert ((deltas.sum(1) - everything).abs().max() / base.abs().max()).item() <= TOL
    assert heat.std() > 1e-3 * scale  # the map is not flat: the check has something to explain


def test_text_heatmap_on_siglip_sums_the_trunk_pieces():
    hooked = HookedViT.from_timm(small_timm("siglip"))
    x = _images(hooked)
    texts = F.normalize(torch.randn(2, hooked.cfg.output_dim, generator=torch.Generator().manual_seed(4)), dim=-1)
    maps = text_heatmap(hooked, x, texts)
    assert maps.shape == (2, 2, *hooked.cfg.grid_size)
    parts = decompose(hooked, x, per_source=True)
    expected = torch.einsum("blhmd,kd->bkm", parts.head_sources, texts).reshape(maps.shape)
    assert rel_err(maps, expected) <= TOL


# ---------------------------------------------------------------- unsupported, from the config alone
@pytest.mark.parametrize("name, words", [
    ("RN50", "ModifiedResNet"),
    ("EVA01-g-14", "only EVA02"),
    ("convnext_base_w", "convnext"),
])
def test_unsupported_towers_fail_from_the_config(name, words):
    start = time.perf_counter()
    with pytest.raises(UnsupportedTowerError, match=words) as info:
        check_open_clip_name(name)
    assert "supported:" in str(info.value) and "SigLIP" in str(info.value)
    assert isinstance(info.value, UserInputError)
    assert time.perf_counter() - start < 5  # nothing is built or downloaded


def test_unsupported_timm_name():
    with pytest.raises(UnsupportedTowerError, match="timm.models.convnext"):
        check_timm_name("convnext_tiny")
    check_timm_name("vit_small_patch14_reg4_dinov2")
    check_open_clip_name("ViT-B-16-SigLIP")
    check_open_clip_name("PE-Core-B-16")


# ---------------------------------------------------------------- Perception Encoder: rotary attention
def small_pe(seed: int = 0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model("vit_pe_core_base_patch16_224", pretrained=False, **SMALL, img_size=32,
                                  attn_pool_num_heads=2, num_classes=48)
    with torch.no_grad():  # timm's small init leaves attention near-uniform; sharpen it so the rotation matters
        for block in model.blocks:
            (block.attn.qkv.weight if block.attn.qkv is not None else block.attn.q_proj.weight).mul_(8)
    return perturb_(model.eval(), seed=seed)


def test_pe_core_port_is_exact_and_decomposes():
    model = small_pe()
    hooked = HookedViT.from_timm(model)
    assert hooked.cfg.rotary and hooked.cfg.pool_type == "map" and hooked.cfg.class_token
    x = _images(hooked)
    with torch.no_grad():
        y = model(x)
        assert rel_err(hooked(x), y) <= TOL
    _, cache = hooked.run_with_cache(x)
    # the rotation is timm's own, applied to the patch tokens only (the class token stays unrotated)
    q = cache["blocks.0.attn.hook_q"]
    rotated = apply_rot_embed_cat(q[:, 1:].transpose(1, 2), model.rope.get_embed()).transpose(1, 2)
    assert rel_err(cache["blocks.0.attn.hook_rot_q"][:, 1:], rotated) <= TOL
    assert torch.equal(cache["blocks.0.attn.hook_rot_q"][:, :1], q[:, :1])
    with torch.no_grad():  # and it is used: without it the attention pattern changes
        saved = hooked.rope.clone()
        hooked.rope.zero_()
        _, unrotated = hooked.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern")
        hooked.rope.copy_(saved)
    assert rel_err(unrotated["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"]) > 1e-3
    final = cache[f"blocks.{hooked.cfg.n_layers - 1}.hook_resid_post"]
    assert rel_err(cache.stack_head_results(incl_remainder=True, apply_ln=False).sum(0), final) <= TOL
    parts = decompose(hooked, x, per_source=True)
    assert rel_err(parts.total(), y) <= TOL
    assert rel_err(parts.head_sources.sum(3), parts.heads) <= TOL


def test_timm_model_without_text_tower_says_so():
    from vit_lens_clip.loading import NoTextTowerError, load_clip

    loaded = load_clip("timm:deit_tiny_patch16_224")
    assert loaded.model.cfg.output_dim == 1000 and loaded.model.cfg.proj_bias
    with pytest.raises(NoTextTowerError, match="no text tower"):
        loaded.encode_text(["a dog"])


def test_open_clip_pe_core_tower_is_exact():
    """open_clip's PE-Core-B-16 config: TimmModel with timm_proj=None, the trunk's own head is the projection."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        visual = TimmModel("vit_pe_core_base_patch16_224", embed_dim=48, pool="map", proj=None)
    visual.trunk = small_pe()
    hooked = HookedViT.from_open_clip(visual.eval())
    x = _images(hooked)
    with torch.no_grad():
        y = visual(x)
    assert rel_err(hooked(x), y) <= TOL
    assert rel_err(decompose(hooked, x, layers=[-1]).total(), y) <= TOL


def test_cli_hooks_offline_for_timm_and_one_line_error_for_unsupported(capsys):
    from vit_lens_clip.app.cli import main

    assert main(["hooks", "--model", "timm:deit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "197 tokens" in out and "blocks.11.attn.hook_result_per_source" in out
    assert main(["hooks", "--model", "EVA01-g-14"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "UnsupportedTowerError" not in err and "only EVA02" in err


def test_siglip_refuses_a_convention_it_cannot_honour():
    """The per-token fold of a MAP tower has equal shares only: asking for own_mean raises, never falls back."""
    hooked = HookedViT.from_timm(small_timm("siglip"))
    with pytest.raises(ValueError, match="not defined for attention-pooled"):
        decompose(hooked, _images(hooked, batch=1), convention="own_mean")
