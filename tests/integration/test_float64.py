"""Precision follows the model: a float64 HookedViT (and its decomposition) is float64-exact, not float32-exact.

Oracles in float64 on random weights with biases and LayerNorm parameters perturbed away from init: open_clip's
encode_image (token pooling, CLIPA average pooling, CoCa's attentional pooler), timm's SigLIP (MAP head), and
open_clip's encode_text. float32 models keep float32 statistics (checked in the tests of each module)."""

import copy

import pytest
import torch
from conftest import perturb_, random_open_clip, rel_err, tiny_clip

from vit_lens_clip import HookedTextTransformer, HookedViT
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.decompose.text import decompose_text

TOL64 = 1e-12


def _images(model: HookedViT, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, *model.cfg.image_size, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("vision", [{}, {"pool_type": "avg", "final_ln_after_pool": True}],
                         ids=["class-token", "average-pool"])
def test_float64_hooked_vit_matches_float64_open_clip(vision):
    model = tiny_clip(**vision).double()
    hooked = HookedViT.from_open_clip(model)
    assert hooked.W_proj.dtype == torch.float64
    x = _images(hooked)
    with torch.no_grad():
        expected = model.encode_image(x)
        y, cache = hooked.run_with_cache(x)
    assert rel_err(y, expected) <= TOL64
    assert cache["blocks.0.ln1.hook_scale"].dtype == torch.float64
    assert cache["blocks.0.attn.hook_pattern"].dtype == torch.float64
    parts = decompose(hooked, x, per_source=True)
    assert parts.embed.dtype == torch.float64
    assert rel_err(parts.total(), expected) <= TOL64
    assert rel_err(parts.heads.sum(2), parts.attns) <= TOL64
    assert rel_err(parts.head_sources.sum(3), parts.heads) <= TOL64


def test_float64_attention_pooled_towers_are_float64_exact():
    coca = copy.deepcopy(random_open_clip("coca_ViT-B-32")).double()  # the fixture is cached: never cast it in place
    hooked = HookedViT.from_open_clip(coca)
    x = _images(hooked, batch=1)
    with torch.no_grad():
        expected = coca.encode_image(x, normalize=False)
    parts = decompose(hooked, x, layers=[-1], per_source=True)
    assert rel_err(hooked(x), expected) <= TOL64
    assert rel_err(parts.total(), expected) <= TOL64
    assert rel_err(parts.extra["pool_heads"].sum(1), expected) <= TOL64

    timm = pytest.importorskip("timm")
    siglip = perturb_(timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=32,
                                        num_classes=0, depth=2, embed_dim=64, num_heads=4).eval()).double()
    hooked = HookedViT.from_timm(siglip)
    x = _images(hooked)
    with torch.no_grad():
        expected = siglip(x)
    parts = decompose(hooked, x, per_source=True)
    assert rel_err(hooked(x), expected) <= TOL64
    assert rel_err(parts.total(), expected) <= TOL64
    assert rel_err(parts.head_sources.sum(3), parts.heads) <= TOL64


def test_float64_text_tower_and_its_decomposition():
    model = tiny_clip().double()
    hooked = HookedTextTransformer.from_open_clip(model)
    tokens = torch.randint(1, 49000, (3, 16), generator=torch.Generator().manual_seed(0))
    tokens[:, 9] = 49407  # the EOT token (highest id) is the pooled one
    with torch.no_grad():
        expected = model.encode_text(tokens)
    parts = decompose_text(hooked, tokens, per_token=True)
    assert rel_err(hooked(tokens), expected) <= TOL64
    assert rel_err(parts.total(), expected) <= TOL64
    assert rel_err(parts.head_tokens.sum(3), parts.heads) <= TOL64
