"""model/hooked_vit.py on a tiny CLIP: the documented hooks with their shapes, the forward equal to open_clip's
encode_image, and text directions that turn the pooled residual into text scores."""

import pytest
import torch
from conftest import rel_err, tiny_clip

from vit_lens_clip.errors import BadInputError
from vit_lens_clip.model.hooked_vit import HookedViT

TOL = 1e-5
B, N, H, D, DH, DMLP = 2, 17, 4, 64, 16, 256  # tiny_clip: 32px images, 8px patches (16 + class), 4 heads of 16


@pytest.fixture(scope="module")
def pair():
    model = tiny_clip(seed=1)
    return model, HookedViT.from_open_clip(model)


def _x(seed=1):
    return torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_forward_equals_encode_image(pair):
    model, hooked = pair
    with torch.no_grad():
        assert rel_err(hooked(_x()), model.encode_image(_x(), normalize=False)) <= TOL


def test_documented_hooks_and_shapes(pair):
    model, hooked = pair
    out, cache = hooked.run_with_cache(_x())
    expected = {
        "hook_tokens": (B, N, D), "hook_embed": (B, N, D),
        "blocks.0.hook_resid_pre": (B, N, D), "blocks.2.hook_resid_post": (B, N, D),
        "blocks.1.hook_attn_out": (B, N, D), "blocks.1.hook_mlp_out": (B, N, D),
        "blocks.0.ln1.hook_scale": (B, N, 1), "blocks.0.ln2.hook_normalized": (B, N, D),
        "blocks.1.attn.hook_q": (B, N, H, DH), "blocks.1.attn.hook_z": (B, N, H, DH),
        "blocks.1.attn.hook_pattern": (B, H, N, N), "blocks.1.attn.hook_result": (B, N, H, D),
        "blocks.1.attn.hook_pooled_pattern": (B, H, N), "blocks.1.attn.hook_result_per_source": (B, N, H, D),
        "blocks.2.mlp.hook_pre": (B, N, DMLP), "blocks.2.mlp.hook_post": (B, N, DMLP),
        "hook_pooled": (B, D), "hook_image_embed": (B, 48),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    assert torch.allclose(cache["hook_image_embed"], out)
    # the residual stream adds up: resid_post = resid_pre + attn_out + mlp_out
    total = cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"] + cache["blocks.1.hook_mlp_out"]
    assert rel_err(total, cache["blocks.1.hook_resid_post"]) <= TOL
    # the pooled row of the pattern is the class token's row; per-source results sum to the pooled head result
    assert torch.allclose(cache["blocks.1.attn.hook_pooled_pattern"], cache["blocks.1.attn.hook_pattern"][:, :, 0])
    per_source = cache["blocks.1.attn.hook_result_per_source"].sum(1)
    result = cache["blocks.1.attn.hook_result"][:, 0]
    # (compared as a difference of two heads, so that however b_O is attributed it cancels)
    assert rel_err(per_source[:, 0] - per_source[:, 1], result[:, 0] - result[:, 1]) <= 1e-4


def test_text_directions_score_the_pooled_residual(pair):
    model, hooked = pair
    texts = torch.randn(3, 48, generator=torch.Generator().manual_seed(4))
    texts = texts / texts.norm(dim=-1, keepdim=True)
    hooked.set_text_vocab(["a", "b", "c"], texts)
    _, cache = hooked.run_with_cache(_x())
    directions = hooked.tokens_to_residual_directions(torch.tensor([0, 1, 2]))
    assert directions.shape == (3, D)
    assert torch.allclose(directions, hooked.tokens_to_residual_directions(texts), atol=1e-6)
    # image embedding · t = x̂·(γ ⊙ W_proj t) + β·(W_proj t), x̂ the class token's normalised final residual
    scores = cache["ln_final.hook_normalized"][:, 0] @ directions.T
    offset = (hooked.ln_final.b @ hooked.W_proj) @ texts.T
    assert rel_err(scores + offset, cache["hook_image_embed"] @ texts.T) <= TOL
    assert hooked.to_single_token("b") == 1 and hooked.W_U is hooked.W_proj
    with pytest.raises(BadInputError, match="token index out of range for a text vocabulary of 3 texts"):
        hooked.tokens_to_residual_directions(torch.tensor([3]))


def test_stop_and_start_at_layer_split_the_forward(pair):
    """model(model(x, stop_at_layer=l), start_at_layer=l) is model(x) for every l; the residual returned is the
    one entering block l (blocks.l.hook_resid_pre); bad layers and non-residual inputs are refused."""
    _, hooked = pair
    x = _x(3)
    with torch.no_grad():
        full, (_, cache) = hooked(x), hooked.run_with_cache(x)
        n = hooked.cfg.n_layers
        for layer in range(n + 1):
            resid = hooked(x, stop_at_layer=layer)
            if layer < n:  # (run_with_cache forms per-head results: the same numbers to rounding)
                assert rel_err(resid, cache[f"blocks.{layer}.hook_resid_pre"]) <= TOL
            assert torch.equal(hooked(resid, start_at_layer=layer), full)
        with pytest.raises(ValueError, match="start_at_layer <= stop_at_layer"):
            hooked(x, stop_at_layer=n + 1)
        with pytest.raises(ValueError, match="start_at_layer <= stop_at_layer"):
            hooked(resid, start_at_layer=2, stop_at_layer=1)
        with pytest.raises(ValueError, match="residual stream"):
            hooked(x, start_at_layer=1)


def test_hooks_on_skipped_parts_are_refused(pair):
    """An edit on a block or head that a start_at_layer / stop_at_layer run skips would be ignored: it raises,
    naming the hook; hooks on the blocks that run fire as usual."""
    _, hooked = pair
    x = _x(4)

    def zero(t, hook):
        return torch.zeros_like(t)

    with torch.no_grad():
        resid = hooked(x, stop_at_layer=1)
        for kwargs, where in [({"start_at_layer": 1}, "blocks.0.hook_resid_post"), ({"start_at_layer": 1}, "hook_embed"),
                              ({"stop_at_layer": 1}, "blocks.1.hook_resid_post"),
                              ({"stop_at_layer": 1}, "hook_image_embed")]:
            with pytest.raises(ValueError, match=where.replace(".", r"\.")):
                hooked.run_with_hooks(resid if "start_at_layer" in kwargs else x, fwd_hooks=[(where, zero)], **kwargs)
        edited = hooked.run_with_hooks(resid, start_at_layer=1, fwd_hooks=[("blocks.1.hook_resid_post", zero)])
        assert not torch.equal(edited, hooked(resid, start_at_layer=1))
