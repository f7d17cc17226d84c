"""model/stacked_weights.py, beyond tests/test_tl_weights.py (stacked attention weights, QK/OV of the image tower,
cfg.device): the MLP biases, both towers, accumulated_bias against the residual stream it describes, and
run_with_cache's ActivationCache (TransformerLens' full residual decomposition adds up)."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_, rel_err
from transformer_lens import ActivationCache

from vit_lens_clip.model.config import ViTConfig
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.stacked_weights import StackedWeights
from vit_lens_clip.model.text_config import TextConfig

L, D, H, MLP_D = 3, 16, 2, 24


def vit(dtype=torch.float32) -> HookedViT:
    torch.manual_seed(0)
    cfg = ViTConfig(n_layers=L, d_model=D, n_heads=H, d_mlp=MLP_D, output_dim=8, image_size=16, patch_size=8)
    return perturb_(HookedViT(cfg).to(dtype).eval(), scale=0.3)


def text() -> HookedTextTransformer:
    torch.manual_seed(0)
    cfg = TextConfig(n_layers=L, d_model=D, n_heads=H, d_mlp=MLP_D, d_vocab=50, n_ctx=6, output_dim=8)
    return perturb_(HookedTextTransformer(cfg).eval(), scale=0.3)


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def tokens() -> torch.Tensor:
    return torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("make", [vit, text], ids=["vit", "text"])
def test_stacked_mlp_biases_and_every_weight_on_both_towers(make):
    model = make()
    assert isinstance(model, StackedWeights)  # both towers get the stacks from the one mixin
    e = model.cfg.d_head
    shapes = {"W_Q": (L, H, D, e), "W_O": (L, H, e, D), "b_V": (L, H, e), "b_O": (L, D),
              "W_in": (L, D, MLP_D), "W_out": (L, MLP_D, D), "b_in": (L, MLP_D), "b_out": (L, D)}
    for name, shape in shapes.items():
        owner = "mlp" if name in ("W_in", "W_out", "b_in", "b_out") else "attn"
        stacked = getattr(model, name)
        assert stacked.shape == shape, name
        for layer in range(L):
            assert torch.equal(stacked[layer], getattr(getattr(model.blocks[layer], owner), name)), (name, layer)
    assert model.b_in.abs().min() > 0  # perturbed: a mix-up with a zero bias would show
    ov = model.OV
    assert rel_err(ov.AB[1, 0], model.blocks[1].attn.W_V[0] @ model.blocks[1].attn.W_O[0]) <= 1e-6


def test_stacked_weights_are_differentiable_views_of_the_parameters():
    model = vit()
    (model.W_in.sum() + model.QK.AB[2].sum()).backward()
    assert torch.equal(model.blocks[0].mlp.W_in.grad, torch.ones(D, MLP_D))
    assert model.blocks[2].attn.W_Q.grad.abs().max() > 0 and model.blocks[1].attn.W_Q.grad.abs().max() == 0


def test_accumulated_bias_is_the_residual_stream_when_every_block_writes_only_its_bias():
    model = vit()
    assert model.b_O.abs().min() > 0 and model.b_out.abs().min() > 0
    with torch.no_grad():
        for block in model.blocks:  # attention and MLP outputs are then exactly b_O and b_out
            block.attn.W_O.zero_()
            block.mlp.W_out.zero_()
    _, cache = model.run_with_cache(images())
    embed = cache["hook_embed"]
    for layer in range(L + 1):
        resid = cache[f"blocks.{layer}.hook_resid_pre"] if layer < L else cache[f"blocks.{L - 1}.hook_resid_post"]
        torch.testing.assert_close(resid - embed, model.accumulated_bias(layer).expand_as(embed), rtol=0, atol=1e-5)
    for layer in range(L):
        mid = cache[f"blocks.{layer}.hook_resid_mid"] - embed
        torch.testing.assert_close(mid, model.accumulated_bias(layer, mlp_input=True).expand_as(embed), rtol=0, atol=1e-5)


def test_accumulated_bias_options():
    model = vit()
    assert torch.equal(model.accumulated_bias(0), torch.zeros(D))
    b_O, b_out = model.b_O.detach(), model.b_out.detach()
    assert rel_err(model.accumulated_bias(2), b_O[:2].sum(0) + b_out[:2].sum(0)) <= 1e-6
    assert rel_err(model.accumulated_bias(2, include_mlp_biases=False), b_O[:2].sum(0)) <= 1e-6
    assert rel_err(model.accumulated_bias(1, mlp_input=True), b_O[:2].sum(0) + b_out[0]) <= 1e-6
    assert rel_err(model.accumulated_bias(L, mlp_input=True), model.accumulated_bias(L)) == 0  # no block L
    assert vit(torch.float64).accumulated_bias(2).dtype == torch.float64  # in the model's dtype


def test_run_with_cache_returns_an_activation_cache_or_a_dict():
    model = vit()
    x = images()
    out, cache = model.run_with_cache(x)
    assert isinstance(cache, ActivationCache) and cache.has_batch_dim
    assert rel_err(out, model(x)) <= 1e-5  # the hooked paths give the same embedding
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, H, model.cfg.n_ctx, model.cfg.n_ctx)
    _, plain = model.run_with_cache(x, return_cache_object=False)
    assert isinstance(plain, dict) and plain.keys() == cache.cache_dict.keys()
    _, single = model.run_with_cache(x[:1], remove_batch_dim=True)
    assert not single.has_batch_dim and single["blocks.0.hook_resid_pre"].shape == (model.cfg.n_ctx, D)
    assert rel_err(single["blocks.0.hook_resid_pre"], cache["blocks.0.hook_resid_pre"][0]) <= 1e-6


@pytest.mark.parametrize("layer, mlp_input, target", [(L, False, f"blocks.{L - 1}.hook_resid_post"),
                                                       (1, True, "blocks.1.hook_resid_mid")])
def test_transformer_lens_full_residual_decomposition_adds_up(layer, mlp_input, target):
    """TransformerLens' decomposition (heads, MLPs, embeddings and model.accumulated_bias) sums to the stream."""
    model = text()
    _, cache = model.run_with_cache(tokens())
    parts, labels = cache.get_full_resid_decomposition(layer=layer, mlp_input=mlp_input, expand_neurons=False,
                                                       return_labels=True)
    assert labels[-1] == "bias" and "embed" in labels and "pos_embed" in labels
    assert rel_err(parts.sum(0), cache[target]) <= 1e-5


@pytest.mark.parametrize("make", [vit, text], ids=["vit", "text"])
def test_a_misspelled_hook_name_names_the_closest_real_ones(make):
    from vit_lens_clip.errors import UnknownHookError

    model = make()
    x = images() if make is vit else tokens()
    with pytest.raises(UnknownHookError, match="did you mean 'blocks.0.attn.hook_pattern'"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_patern", lambda t, hook: t)])
    with pytest.raises(KeyError, match="did you mean 'blocks.1.hook_resid_post'"):  # still a KeyError
        model.run_with_cache(x, names_filter=["blocks.1.hook_resid_psot"])  # would silently cache nothing
    with pytest.raises(UnknownHookError, match="hook_dict"):  # nothing close: where to look
        model.add_hook("zzzz", lambda t, hook: t)
    _, cache = model.run_with_cache(x, names_filter=["blocks.1.hook_resid_post"])
    assert list(cache.keys()) == ["blocks.1.hook_resid_post"]
