"""decompose/contributions.py: HeadContributions composes edited embeddings exactly from its parts."""

import pytest
import torch

from vit_lens_clip.decompose.contributions import HeadContributions, kept_layers

N, L, H, D = 5, 4, 3, 6


def _contributions():
    g = torch.Generator().manual_seed(0)
    heads, embed = torch.randn(N, 2, H, D, generator=g), torch.randn(N, D, generator=g)
    rest = torch.randn(N, D, generator=g)
    means = {"heads": heads.mean(0), "embed": embed.mean(0), "mlps": torch.randn(L, D, generator=g),
             "attns": torch.randn(L, D, generator=g)}
    return HeadContributions(heads=heads, layers=[2, 3], embed=embed, embedding=embed + heads.sum((1, 2)) + rest,
                             labels=torch.arange(N) % 2, indices=torch.arange(N) + 10, means=means, normalized=False,
                             n_layers=L), rest


def test_kept_layers():
    assert kept_layers(12, 4) == [8, 9, 10, 11] and kept_layers(3, 3) == [0, 1, 2]


def test_rest_and_compose():
    c, rest = _contributions()
    assert torch.allclose(c.rest(), rest, atol=1e-6)
    assert torch.allclose(c.compose(ablate_rest=False), c.embedding, atol=1e-6)  # nothing edited: y itself
    mean_rest = c.means["mlps"].sum(0) + c.means["attns"][[0, 1]].sum(0)  # the not-kept layers' attention
    assert torch.allclose(c.mean_rest(), mean_rest)
    assert torch.allclose(c.compose(), c.embed + c.heads.sum((1, 2)) + mean_rest, atol=1e-6)
    # mean-ablating head (3, 1) replaces exactly that head by its dataset mean
    ablated = c.compose(mean_ablate_heads=[(3, 1)], ablate_rest=False)
    assert torch.allclose(ablated - c.embedding, c.means["heads"][1, 1] - c.heads[:, 1, 1], atol=1e-5)
    assert torch.allclose(c.compose(mean_ablate_heads=[(-1, 1)], ablate_rest=False), ablated)
    with pytest.raises(ValueError, match="heads must have shape"):
        c.compose(heads=c.heads[:, :1])


def test_keys_index_stack_and_subset():
    c, _ = _contributions()
    assert c.n_images == N and c.n_heads == H
    assert c.head_keys()[:4] == [(2, 0), (2, 1), (2, 2), (3, 0)]
    assert c.head_index((3, 2)) == (1, 2) and c.head_index((-2, 0)) == (0, 0)
    with pytest.raises(ValueError, match="not among the kept layers"):
        c.head_index((0, 0))
    assert torch.equal(c.stack()[1, 2], c.heads[:, 1, 2])
    sub = c.subset(c.labels == 1)
    assert sub.indices.tolist() == [11, 13] and torch.equal(sub.heads, c.heads[[1, 3]])
    assert torch.allclose(sub.rest(), c.rest()[[1, 3]])
