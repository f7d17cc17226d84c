"""The one assembler (decompose/assemble.py): shares, sums at every level, text scores, one projection-bias rule."""

import pytest
import torch

from vit_lens_clip.decompose.assemble import RawParts, assemble
from vit_lens_clip.decompose.fold import LNFold
from vit_lens_clip.decompose.output_fold import BiasedFold
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.decompose.text import decompose_text
from vit_lens_clip.model.config import ViTConfig
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.text_config import TextConfig

G = torch.Generator().manual_seed(0)
B, L, H, N, d, D = 2, 3, 4, 5, 8, 6


def _raw(pool_mlp: bool) -> RawParts:
    """Raw pieces that add up at every level: sources → heads → the last layer; components → pooled."""
    sources = torch.randn(B, 1, H, N, d, generator=G, dtype=torch.float64)
    heads = sources.sum(3)
    attns = torch.randn(B, L, d, generator=G, dtype=torch.float64)
    attns[:, -1] = heads[:, 0].sum(1)
    embed, mlps = torch.randn(B, d, generator=G, dtype=torch.float64), torch.randn(B, L, d, generator=G, dtype=torch.float64)
    extra = torch.randn(B, d, generator=G, dtype=torch.float64) if pool_mlp else None
    pooled = embed + attns.sum(1) + mlps.sum(1) + (extra if pool_mlp else 0)
    return RawParts(pooled=pooled, embed=embed, attns=attns, mlps=mlps, n_heads=H, heads=heads, pool_mlp=extra,
                    sources=sources)


def _fold(pooled, convention="equal_share", bias=True):
    gamma = torch.rand(d, generator=G, dtype=torch.float64) + 0.5
    beta, proj = torch.randn(d, generator=G, dtype=torch.float64), torch.randn(d, D, generator=G, dtype=torch.float64)
    fold = LNFold.from_residual(pooled, gamma, beta, proj, 1e-5, convention)
    b = torch.randn(D, generator=G, dtype=torch.float64)
    ln = torch.nn.functional.layer_norm(pooled, (d,), gamma, beta, 1e-5)
    return (BiasedFold(fold, b), ln @ proj + b) if bias else (fold, ln @ proj)


@pytest.mark.parametrize("convention", ["equal_share", "own_mean"])
@pytest.mark.parametrize("pool_mlp", [False, True])
def test_parts_sum_to_the_embedding_at_every_level(convention, pool_mlp):
    raw = _raw(pool_mlp)
    fold, y = _fold(raw.pooled, convention)
    parts = assemble(raw, fold, y, [L - 1], convention, normalize=False)
    assert raw.n_components == 2 * L + 1 + pool_mlp
    assert torch.allclose(parts.total(), y, atol=1e-12)
    assert torch.allclose(parts.heads.sum(2), parts.attns[:, -1:], atol=1e-12)
    assert torch.allclose(parts.head_sources.sum(3), parts.heads, atol=1e-12)
    assert ("pool_mlp" in parts.extra) == pool_mlp and ("pool_mlp" in parts.raw) == pool_mlp
    normalized = assemble(raw, fold, y, [L - 1], convention, normalize=True)
    assert torch.allclose(normalized.total(), y / y.norm(dim=-1, keepdim=True), atol=1e-12)


def test_each_piece_gets_its_share_of_the_projection_bias():
    raw = _raw(False)
    biased, y = _fold(raw.pooled)
    plain = biased.inner
    K = raw.n_components
    with_bias = assemble(raw, biased, y, [L - 1], "equal_share", False)
    without = assemble(raw, plain, y - biased.bias, [L - 1], "equal_share", False)
    b = biased.bias
    assert torch.allclose(with_bias.embed - without.embed, (b / K).expand(B, D), atol=1e-12)
    assert torch.allclose(with_bias.heads - without.heads, (b / (K * H)).expand(B, 1, H, D), atol=1e-12)
    assert torch.allclose(with_bias.head_sources - without.head_sources, (b / (K * H * N)).expand(B, 1, H, N, D),
                          atol=1e-12)


def test_text_scores_from_dots_equal_the_folded_pieces_scores():
    raw = _raw(False)
    fold, y = _fold(raw.pooled)
    texts = torch.nn.functional.normalize(torch.randn(3, D, generator=G, dtype=torch.float64), dim=-1)
    full = assemble(raw, fold, y, [L - 1], "equal_share", False, texts)
    assert torch.allclose(full.source_scores, full.head_sources @ texts.T, atol=1e-12)
    dots = raw.sources @ fold.pull_back(texts)
    only_scores = RawParts(**{**raw.__dict__, "sources": None, "source_dots": dots})
    scored = assemble(only_scores, fold, y, [L - 1], "equal_share", False, texts)
    assert scored.head_sources is None
    assert torch.allclose(scored.source_scores, full.source_scores, atol=1e-12)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=G, dtype=p.dtype) * 0.3)
    return model.eval()


def test_image_and_text_towers_split_the_projection_bias_by_the_same_rule():
    """Changing b by δ changes every top-level part by δ/K and every head by δ/(K·H), on both towers."""
    image = _perturbed(HookedViT(ViTConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, output_dim=8, image_size=16,
                                           patch_size=8, proj_bias=True))).double()
    text = _perturbed(HookedTextTransformer(TextConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, d_vocab=50, n_ctx=6,
                                                       output_dim=8, proj_bias=True))).double()
    images = torch.randn(2, 3, 16, 16, generator=G, dtype=torch.float64)
    tokens = torch.randint(0, 49, (2, 6), generator=G)
    tokens[:, 3] = 49
    delta = torch.randn(8, generator=G, dtype=torch.float64)
    for model, run in ((image, lambda: decompose(image, images)), (text, lambda: decompose_text(text, tokens))):
        before = run()
        with torch.no_grad():
            model.b_proj += delta
        after = run()
        K, heads = 2 * 2 + 1, model.cfg.n_heads
        assert torch.allclose(after.total(), after.embedding, atol=1e-12)
        assert torch.allclose(after.embed - before.embed, (delta / K).expand(2, 8), atol=1e-12)
        assert torch.allclose(after.mlps - before.mlps, (delta / K).expand(2, 2, 8), atol=1e-12)
        assert torch.allclose(after.heads - before.heads, (delta / (K * heads)).expand(2, 2, heads, 8), atol=1e-12)
