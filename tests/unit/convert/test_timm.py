"""timm converters (convert/timm.py, convert/timm_trunk.py, convert/pe_core.py): tiny random timm trunks round-trip
into HookedViT with timm's forward; unsupported activations and MLPs are refused by name."""

import warnings

import pytest
import timm
import torch
from conftest import perturb_, rel_err
from timm.layers import Mlp, SwiGLU

from vit_lens_clip.convert.pe_core import convert_pe_core, is_pe_core, is_pe_core_name
from vit_lens_clip.convert.timm import convert_timm, is_timm_vit
from vit_lens_clip.convert.timm_trunk import check_mlp, mlp_activation
from vit_lens_clip.errors import UnsupportedTowerError
from vit_lens_clip.model.hooked_vit import HookedViT

TOL = 1e-5
SMALL = dict(embed_dim=32, depth=2, num_heads=2)


def _timm(name, seed=0, **kw):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, **SMALL, **kw)
    return perturb_(model.eval(), scale=0.2, seed=seed)


def _x(cfg, seed=1):
    return torch.randn(2, 3, *cfg.image_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [dict(img_size=32, num_classes=5), dict(img_size=32, num_classes=0, global_pool="avg"),
                                dict(img_size=32, num_classes=0, init_values=0.5, reg_tokens=2)],
                         ids=["cls-head", "avg", "layerscale-registers"])
def test_timm_vit_round_trips(kw):
    model = _timm("vit_tiny_patch16_224", **kw)
    assert is_timm_vit(model)
    cfg, state = convert_timm(model, "tiny")
    hooked = HookedViT.from_converted(cfg, state)
    x = _x(cfg)
    with torch.no_grad():
        assert rel_err(hooked(x), model(x)) <= TOL


def test_pe_core_round_trips_with_its_rotary_table():
    assert is_pe_core_name("vit_pe_core_base_patch16_224") and not is_pe_core_name("vit_base_patch16_224")
    model = _timm("vit_pe_core_base_patch16_224", img_size=32, attn_pool_num_heads=2, num_classes=16)
    with torch.no_grad():  # sharpen attention so that a wrong rotation would show
        for block in model.blocks:
            (block.attn.qkv.weight if block.attn.qkv is not None else block.attn.q_proj.weight).mul_(8)
    assert is_pe_core(model) and not is_timm_vit(model)
    cfg, state = convert_pe_core(model)
    assert cfg.rotary and cfg.pool_type == "map"
    hooked = HookedViT.from_converted(cfg, state)
    x = _x(cfg)
    with torch.no_grad():
        assert rel_err(hooked(x), model(x)) <= TOL


def test_timm_activations_and_mlps():
    assert mlp_activation(torch.nn.GELU(), "T") == "gelu"
    assert mlp_activation(torch.nn.GELU(approximate="tanh"), "T") == "gelu_tanh"
    with pytest.raises(UnsupportedTowerError, match="MLP activation ReLU"):
        mlp_activation(torch.nn.ReLU(), "T")
    assert check_mlp(Mlp(8, 16), "T") == "gelu"
    with pytest.raises(UnsupportedTowerError, match="SwiGLU"):
        check_mlp(SwiGLU(8, 16), "T")
    with pytest.raises(UnsupportedTowerError):  # a normed MLP mixes features before fc2
        check_mlp(Mlp(8, 16, norm_layer=torch.nn.LayerNorm), "T")
