"""The decomposition is exact: parts sum to the embedding, pieces sum to heads, scores equal dot products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_refused, random_open_clip, rel_err, tiny_clip

from vit_lens_clip import HookedViT
from vit_lens_clip.decompose.fold import LNFold
from vit_lens_clip.decompose.parts import DecompositionCapture, decompose

TOL = 1e-5


@pytest.fixture(scope="module", params=["ViT-B-16", "CLIPA-like"])
def ported(request):
    """A real architecture, and a small tower built like ViT-L-14-CLIPA (patch mean, final LN after pooling, no
    ln_pre); the full-size CLIPA port is checked in test_hooked_vit.py (slow)."""
    if request.param == "CLIPA-like":
        model = tiny_clip(seed=5, pool_type="avg", final_ln_after_pool=True, no_ln_pre=True, layers=4)
    else:
        model = random_open_clip(request.param)
    x = torch.randn(2, 3, *model.visual.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model.encode_image(x, normalize=False)
    return HookedViT.from_open_clip(model), x, y


@pytest.mark.parametrize("convention", ["equal_share", "own_mean"])
def test_parts_sum_to_embedding(ported, convention):
    hooked, x, y = ported
    texts = F.normalize(torch.randn(6, hooked.cfg.output_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    parts = decompose(hooked, x, layers=[-2, -1], per_source=True, texts=texts, convention=convention)
    assert rel_err(parts.total(), y) <= TOL
    assert rel_err(parts.embedding, y) <= TOL
    # heads sum to their attention layer; (head, source) pieces sum to their head
    assert rel_err(parts.heads.sum(2), parts.attns[:, -2:]) <= TOL
    assert rel_err(parts.head_sources.sum(3), parts.heads) <= TOL
    # text scores through the pull-back equal the pieces dotted with the texts
    assert rel_err(parts.source_scores, parts.head_sources @ texts.T) <= TOL
    assert parts.head_sources.shape == (2, 2, hooked.cfg.n_heads, hooked.cfg.n_ctx, hooked.cfg.output_dim)


def test_normalized_flag(ported):
    hooked, x, y = ported
    parts = decompose(hooked, x, normalize=True)
    assert rel_err(parts.total(), F.normalize(y, dim=-1)) <= TOL
    assert parts.normalized


def test_conventions_differ_per_piece_but_not_in_sum(ported):
    hooked, x, _ = ported
    a = decompose(hooked, x, convention="equal_share")
    b = decompose(hooked, x, convention="own_mean")
    assert rel_err(a.total(), b.total()) <= TOL
    assert rel_err(a.mlps, b.mlps) > 1e-3


def test_own_mean_matches_transformer_lens_apply_ln(ported):
    """own_mean is TransformerLens' apply_ln_to_stack (β split by shares), then projected."""
    hooked, x, _ = ported
    if hooked.cfg.final_ln_after_pool:
        pytest.skip("apply_ln_to_stack needs a per-position ln_final scale")
    _, cache = hooked.run_with_cache(x)
    stack = cache.decompose_resid(apply_ln=True, pos_slice=0)  # [components, batch, d]
    parts = decompose(hooked, x, convention="own_mean")
    K = 2 * hooked.cfg.n_layers + 1
    ln = hooked.ln_final
    tl = (stack * ln.w + ln.b / K) @ hooked.W_proj
    ours = torch.cat([parts.embed[None], torch.stack([parts.attns, parts.mlps], 2).flatten(1, 2).transpose(0, 1)])
    assert rel_err(ours, tl) <= TOL


def test_only_chosen_layers_get_per_source_hooks(ported):
    hooked, _, _ = ported
    capture = DecompositionCapture(hooked, layers=[-1], per_source=True)
    names = capture.hook_names()
    last = hooked.cfg.n_layers - 1
    assert f"blocks.{last}.attn.hook_result_per_source" in names
    assert not any(f"blocks.{l}.attn.hook_result_per_source" in names for l in range(last))


def test_decompose_from_activation_cache_equals_hooked_run(ported):
    hooked, x, _ = ported
    _, cache = hooked.run_with_cache(x)
    from_cache = DecompositionCapture(hooked, layers=[-1], per_source=True).from_cache(cache)
    direct = decompose(hooked, x, layers=[-1], per_source=True)
    assert rel_err(from_cache.head_sources, direct.head_sources) <= TOL
    assert rel_err(from_cache.heads, direct.heads) <= TOL


def test_fold_is_linear_in_shares():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 8, generator=g)
    fold = LNFold.from_residual(r, torch.rand(8, generator=g) + 0.5, torch.randn(8, generator=g),
                                torch.randn(8, 5, generator=g), 1e-5)
    pieces = torch.randn(3, 4, 8, generator=g)
    pieces[:, -1] = r - pieces[:, :-1].sum(1)
    total = fold.fold(pieces, 0.25).sum(1)
    expected = F.layer_norm(r, (8,), fold.gamma, fold.beta, 1e-5) @ fold.proj
    assert rel_err(total, expected) <= TOL


def test_tiny_model_and_bad_convention():
    hooked = HookedViT.from_open_clip(tiny_clip())
    assert_refused(lambda: decompose(hooked, torch.randn(1, 3, 32, 32), convention="nope"),  # breaks the Literal
                   "convention must be one of ('equal_share', 'own_mean'), got 'nope'")


@pytest.mark.parametrize("convention", ["equal_share", "own_mean"])
def test_coca_decomposes_through_the_attentional_pooler(convention):
    """CoCa: tower parts pass through the pooler (fixed attention, ln_k distributed) and sum to the embedding;
    the pooler's heads and (head, source) pieces are a second exact split (one more attention layer)."""
    model = random_open_clip("coca_ViT-B-32")
    hooked = HookedViT.from_open_clip(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model.encode_image(x, normalize=False)
    parts = decompose(hooked, x, layers=[-1], per_source=True, convention=convention)
    assert rel_err(parts.total(), y) <= TOL
    assert rel_err(parts.heads.sum(2), parts.attns[:, -1:]) <= TOL
    assert rel_err(parts.extra["pool_heads"].sum(1), y) <= TOL
    assert rel_err(parts.extra["pool_head_sources"].sum(2), parts.extra["pool_heads"]) <= TOL
    assert parts.extra["pool_heads"].shape == (2, 8, 512)
