"""TransformerLens habits on HookedViT: stacked W_Q/W_K/W_V/W_O and biases, QK/OV as FactoredMatrix, cfg.device."""

from __future__ import annotations

import torch
from conftest import rel_err, tiny_clip
from transformer_lens.FactoredMatrix import FactoredMatrix

from vit_lens_clip import HookedViT

TOL = 1e-6


def test_stacked_weights_match_blocks():
    hooked = HookedViT.from_open_clip(tiny_clip())
    L, H, d, e = hooked.cfg.n_layers, hooked.cfg.n_heads, hooked.cfg.d_model, hooked.cfg.d_head
    shapes = {"W_Q": (L, H, d, e), "W_K": (L, H, d, e), "W_V": (L, H, d, e), "W_O": (L, H, e, d),
              "b_Q": (L, H, e), "b_K": (L, H, e), "b_V": (L, H, e), "b_O": (L, d),
              "W_in": (L, d, hooked.cfg.d_mlp), "W_out": (L, hooked.cfg.d_mlp, d)}
    for name, shape in shapes.items():
        stacked = getattr(hooked, name)
        assert stacked.shape == shape, name
        owner = "mlp" if name in ("W_in", "W_out") else "attn"
        for l in range(L):
            assert torch.equal(stacked[l], getattr(getattr(hooked.blocks[l], owner), name)), (name, l)


def test_qk_ov_factored():
    hooked = HookedViT.from_open_clip(tiny_clip())
    qk, ov = hooked.QK, hooked.OV
    assert isinstance(qk, FactoredMatrix) and isinstance(ov, FactoredMatrix)
    d = hooked.cfg.d_model
    assert qk.shape == (hooked.cfg.n_layers, hooked.cfg.n_heads, d, d) == ov.shape
    attn = hooked.blocks[2].attn
    assert rel_err(qk.AB[2, 1], attn.W_Q[1] @ attn.W_K[1].T) <= TOL
    assert rel_err(ov.AB[2, 3], attn.W_V[3] @ attn.W_O[3]) <= TOL
    # the attention score of head (2, 1) between two residual vectors, bias-free, as the model computes it
    x = torch.randn(2, d, generator=torch.Generator().manual_seed(0))
    score = (x[0] @ attn.W_Q[1]) @ (x[1] @ attn.W_K[1])
    assert rel_err(x[0] @ qk[2, 1].AB @ x[1], score) <= 1e-5


def test_cfg_device_follows_the_model():
    hooked = HookedViT.from_open_clip(tiny_clip())
    assert hooked.cfg.device == torch.device("cpu")
    hooked.to("meta")
    assert hooked.cfg.device == torch.device("meta")
