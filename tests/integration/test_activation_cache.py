"""transformer_lens.ActivationCache works unchanged on HookedViT and reproduces the embedding in sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_open_clip, rel_err
from transformer_lens import ActivationCache

from vit_lens_clip import HookedViT

TOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    model = random_open_clip("ViT-B-16")
    hooked = HookedViT.from_open_clip(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model.encode_image(x, normalize=False)
    _, cache = hooked.run_with_cache(x)
    return hooked, cache, y


def _unfold(hooked, normalized_sum):
    ln = hooked.ln_final
    return (normalized_sum * ln.w + ln.b) @ hooked.W_proj


def test_cache_type(setup):
    _, cache, _ = setup
    assert isinstance(cache, ActivationCache)


def test_decompose_resid(setup):
    hooked, cache, y = setup
    stack, labels = cache.decompose_resid(apply_ln=True, return_labels=True)
    assert labels[0] == "embed" and len(labels) == 1 + 2 * hooked.cfg.n_layers
    assert rel_err(_unfold(hooked, stack.sum(0)[:, 0]), y) <= TOL


def test_accumulated_resid(setup):
    hooked, cache, y = setup
    acc = cache.accumulated_resid(apply_ln=True)
    assert acc.shape[0] == hooked.cfg.n_layers + 1
    assert rel_err(acc[-1][:, 0] @ hooked.W_proj, y) <= TOL


def test_stack_head_results_with_remainder(setup):
    hooked, cache, y = setup
    stack = cache.stack_head_results(incl_remainder=True, apply_ln=True)
    assert stack.shape[0] == hooked.cfg.n_layers * hooked.cfg.n_heads + 1
    assert rel_err(_unfold(hooked, stack.sum(0)[:, 0]), y) <= TOL


@pytest.mark.parametrize("expand_neurons", [False, True])
def test_full_resid_decomposition(setup, expand_neurons):
    hooked, cache, y = setup
    stack = cache.get_full_resid_decomposition(apply_ln=True, expand_neurons=expand_neurons, pos_slice=0)
    assert rel_err(_unfold(hooked, stack.sum(0)), y) <= TOL


def test_logit_attrs_against_text_embeddings(setup):
    hooked, cache, y = setup
    texts = F.normalize(torch.randn(3, hooked.cfg.output_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    stack = cache.decompose_resid(pos_slice=0)
    beta_term = hooked.ln_final.b @ hooked.W_proj @ texts.T  # the LN bias part, which no component carries
    for k in range(3):
        attrs = cache.logit_attrs(stack, tokens=texts[k], pos_slice=0)
        assert rel_err(attrs.sum(0) + beta_term[k], y @ texts[k]) <= TOL
    # through a registered text vocabulary and through strings
    hooked.set_text_vocab(["a", "b", "c"], texts)
    attrs = cache.logit_attrs(stack, tokens=torch.tensor([2, 0]), pos_slice=0)
    assert rel_err(attrs.sum(0), (y * texts[[2, 0]]).sum(-1) - beta_term[[2, 0]]) <= TOL
    hooked.text_encoder = lambda strings: texts[[ord(s) - ord("a") for s in strings]]
    attrs = cache.logit_attrs(stack, tokens="b", pos_slice=0)
    assert rel_err(attrs.sum(0) + beta_term[1], y @ texts[1]) <= TOL
    hooked.text_encoder = None
