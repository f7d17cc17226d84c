"""open_clip converters (convert/open_clip.py, convert/open_clip_text.py) and the shared helpers (convert/common.py):
a tiny random CLIP's state dict round-trips into HookedViT / HookedTextTransformer with the same outputs."""

import pytest
import torch
from conftest import perturb_, rel_err, tiny_clip

from vit_lens_clip.convert import common
from vit_lens_clip.convert.open_clip import UnsupportedTowerError, convert_open_clip, image_tower, is_open_clip_vit
from vit_lens_clip.convert.open_clip_text import open_clip_text_to_hooked
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT

TOL = 1e-5


def test_open_clip_image_tower_round_trips_into_hooked_vit(images):
    model = perturb_(tiny_clip(seed=2, ls_init_value=0.5), scale=0.3, seed=5)
    cfg, state = convert_open_clip(model)
    assert is_open_clip_vit(image_tower(model)) and image_tower(model) is model.visual
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (3, 64, 4)
    hooked = HookedViT.from_converted(cfg, state)
    x = images((32, 32), batch=2)
    with torch.no_grad():
        assert rel_err(hooked(x), model.encode_image(x, normalize=False)) <= TOL
    # the state dict is the model's: every converted tensor was loaded as is
    loaded = hooked.state_dict()
    assert all(torch.equal(loaded[k], v.to(loaded[k].dtype)) for k, v in state.items() if k in loaded)


def test_open_clip_refuses_towers_it_cannot_represent():
    with pytest.raises(UnsupportedTowerError):
        convert_open_clip(tiny_clip(qk_norm=True))


def test_a_refused_block_names_its_tower():
    model = tiny_clip(layers=2)
    model.visual.transformer.resblocks[0].mlp.gelu = torch.nn.SiLU()
    with pytest.raises(UnsupportedTowerError) as refused:
        convert_open_clip(model, name="my-clip")
    assert str(refused.value) == ("open_clip image tower VisionTransformer of 'my-clip' is not supported "
                                  "(unsupported MLP activation SiLU)")


def test_open_clip_text_tower_round_trips_into_hooked_text():
    model = tiny_clip(seed=3)
    cfg, state = open_clip_text_to_hooked(model)
    hooked = HookedTextTransformer.from_config_and_state(cfg, state)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 400, (3, 16), generator=g)
    tokens[:, -1] = 49407  # the end token has the largest id: argmax pooling reads it
    tokens[0, 5], tokens[0, 6:] = 49407, 0
    with torch.no_grad():
        assert rel_err(hooked(tokens), model.encode_text(tokens)) <= TOL


def test_heads_in_and_out_split_the_fused_projections_per_head():
    n_heads, d_head, d = 2, 3, 5
    g = torch.Generator().manual_seed(0)
    w_in, b_in = torch.randn(n_heads * d_head, d, generator=g), torch.randn(n_heads * d_head, generator=g)
    out = common.heads_in(w_in, b_in, n_heads, "blocks.0.attn", "Q")
    W, b = out["blocks.0.attn.W_Q"], out["blocks.0.attn.b_Q"]
    assert W.shape == (n_heads, d, d_head) and b.shape == (n_heads, d_head)
    x = torch.randn(d, generator=g)
    # head h's query is the h-th slice of the fused projection
    fused = w_in @ x + b_in
    assert torch.allclose(torch.einsum("d,hde->he", x, W) + b, fused.view(n_heads, d_head), atol=1e-6)
    w_out, b_out, gamma = torch.randn(d, n_heads * d_head, generator=g), torch.randn(d, generator=g), torch.rand(d)
    o = common.heads_out(w_out, b_out, n_heads, "p", gamma=gamma)
    z = torch.randn(n_heads, d_head, generator=g)
    expected = gamma * (w_out @ z.reshape(-1) + b_out)  # the LayerScale γ is folded into W_O and b_O
    assert torch.allclose(torch.einsum("he,hed->d", z, o["p.W_O"]) + o["p.b_O"], expected, atol=1e-5)


def test_identity_and_layer_norm_checks():
    assert common.is_identity(None) and common.is_identity(torch.nn.Identity()) and common.is_identity(torch.nn.Dropout())
    assert not common.is_identity(torch.nn.Linear(2, 2))
    ln = torch.nn.LayerNorm(4)
    assert common.affine_layer_norm(ln, "norm", "T") is ln and common.affine_layer_norm(None, "norm", "T") is None
    with pytest.raises(UnsupportedTowerError, match="norm is RMSNorm, not an affine LayerNorm"):
        common.affine_layer_norm(torch.nn.RMSNorm(4), "norm", "T")
    with pytest.raises(UnsupportedTowerError):
        common.affine_layer_norm(torch.nn.LayerNorm(4, elementwise_affine=False), "norm", "T")
    err = common.unsupported_tower("X", "timm", "because")
    assert isinstance(err, UnsupportedTowerError) and "X" in str(err) and "because" in str(err)
