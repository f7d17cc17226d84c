"""EVA02 converter (convert/eva02.py): detection by structure and by name, the config read from the module, and a
tiny tower's round trip (the oracles on every eva02_* variant and the frozen-statistics split are in
tests/integration/test_eva02.py)."""

import warnings

import pytest
import timm
import torch
from conftest import perturb_, rel_err

from vit_lens_clip.convert.eva02 import config_from_eva02, convert_eva02, is_eva02, is_eva02_name
from vit_lens_clip.model.hooked_vit import HookedViT


def _tiny(name: str = "eva02_base_patch16_clip_224") -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, embed_dim=32, depth=2, num_heads=2, img_size=32,
                                  patch_size=8)
    return perturb_(model.eval(), seed=0)


def test_detection_by_structure_and_name():
    model = _tiny()
    assert is_eva02(model) and is_eva02_name("eva02_base_patch16_clip_224")
    assert not is_eva02_name("vit_base_patch16_224")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    assert not is_eva02(vit)


def test_config_and_round_trip_of_a_tiny_tower():
    model = _tiny()
    cfg = config_from_eva02(model)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (2, 32, 2) and cfg.rotary
    hooked = HookedViT.from_converted(*convert_eva02(model))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(hooked(x), model(x)) <= 1e-5


def test_post_norm_towers_are_refused_by_name():
    from vit_lens_clip.errors import UnsupportedTowerError

    with pytest.raises(UnsupportedTowerError, match="post-norm"):
        is_eva02_name("eva02_enormous_patch14_clip_224")
