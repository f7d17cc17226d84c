"""model/hooked_text.py on a tiny CLIP: the documented hooks with their shapes, the forward equal to open_clip's
encode_text, the pooled index at the end token and the causal mask."""

import pytest
import torch
from conftest import rel_err, tiny_clip

from vit_lens_clip.model.hooked_text import HookedTextTransformer

TOL = 1e-5
EOT = 49407


@pytest.fixture(scope="module")
def pair():
    model = tiny_clip(seed=2)
    return model, HookedTextTransformer.from_open_clip(model)


def _tokens():
    tokens = torch.randint(1, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    tokens[0, 4], tokens[0, 5:] = EOT, 0
    tokens[1, 15] = EOT
    return tokens


def test_forward_equals_encode_text(pair):
    model, hooked = pair
    with torch.no_grad():
        assert rel_err(hooked(_tokens()), model.encode_text(_tokens())) <= TOL


def test_pool_index_and_causal_mask(pair):
    _, hooked = pair
    assert hooked.pool_index(_tokens()).tolist() == [4, 15]
    mask = hooked.additive_mask(_tokens())
    # a query never sees a later key: −inf above the diagonal, 0 on and below it
    assert torch.isinf(mask[0, 0].triu(1)[torch.ones(16, 16, dtype=torch.bool).triu(1)]).all()
    assert (mask[0, 0].tril() == 0).all()


def test_documented_hooks_and_shapes(pair):
    _, hooked = pair
    out, cache = hooked.run_with_cache(_tokens())
    b, n, h, d, dh = 2, 16, 2, 32, 16
    expected = {
        "hook_embed": (b, n, d), "hook_pos_embed": (b, n, d), "blocks.0.hook_resid_pre": (b, n, d),
        "blocks.0.attn.hook_q": (b, n, h, dh), "blocks.0.attn.hook_pattern": (b, h, n, n),
        "blocks.0.attn.hook_result": (b, n, h, d), "blocks.0.attn.hook_pooled_pattern": (b, h, n),
        "blocks.0.attn.hook_result_per_source": (b, n, h, d), "blocks.0.mlp.hook_post": (b, n, 4 * d),
        "ln_final.hook_normalized": (b, n, d), "hook_pooled": (b, d), "hook_text_embed": (b, 48),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    assert torch.allclose(cache["hook_text_embed"], out)
    assert torch.equal(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"])
    # the pooled residual is the final residual at the end token
    final = cache["blocks.0.hook_resid_post"]
    assert torch.equal(cache["hook_pooled"], final[torch.arange(2), torch.tensor([4, 15])])
    # causal: the first sequence's pooled token attends nowhere after the end token
    assert cache["blocks.0.attn.hook_pooled_pattern"][0, :, 5:].abs().max() == 0
