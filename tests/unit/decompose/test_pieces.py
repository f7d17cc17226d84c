"""decompose/pieces.py: the raw pieces of a readout (RowPieces) and of an attentional pooler (PoolerPieces) add up
to the pooled vector r exactly in float64, and the finer splits (heads, (head, source)) add up to the coarser."""

import copy
import warnings

import pytest
import torch
from conftest import perturb_, tiny_clip

from vit_lens_clip.decompose.pieces import PoolerPieces, RowPieces, value_dots
from vit_lens_clip.model.hooked_vit import HookedViT

TOL64 = 1e-10


def _store(hooked, pieces, x, with_texts=False):
    names = pieces.hook_names(with_texts, None)
    _, cache = hooked.run_with_cache(x, names_filter=list(names))
    return {name: reduce(cache[name]) for name, reduce in names.items()}


def _close(a, b):
    return (a - b).abs().max().item() <= TOL64 * max(1.0, b.abs().max().item())


def test_row_pieces_sum_to_the_pooled_vector():
    model = copy.deepcopy(tiny_clip(seed=4)).double()
    hooked = HookedViT.from_open_clip(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pieces = RowPieces(hooked, hooked.readout, layers=[1, 2], per_source=True)
    raw = pieces.raw(_store(hooked, pieces, x), torch.float64, None, False)
    assert raw.pooled.dtype == torch.float64 and raw.n_components == 1 + 2 * 3
    assert _close(raw.embed + raw.attns.sum(1) + raw.mlps.sum(1), raw.pooled)
    assert _close(raw.heads.sum(2), raw.attns[:, 1:])  # the kept layers' heads (b_O shared) are their layers
    assert _close(raw.sources.sum(3), raw.heads)  # (head, source) pieces add up to the head
    assert not _close(raw.heads[:, 0, 0], raw.heads[:, 0, 1])  # the split is not degenerate


def test_value_dots_are_the_source_pieces_dotted_with_the_pull_back():
    g = torch.Generator().manual_seed(1)
    values, W_O, G = torch.randn(2, 5, 3, 4, generator=g), torch.randn(3, 4, 6, generator=g), torch.randn(6, 7, generator=g)
    expected = torch.einsum("bmhe,hed,dk->bhmk", values, W_O, G)
    assert torch.allclose(value_dots(values, W_O, G), expected, atol=1e-5)


def test_pooler_pieces_sum_to_the_pooled_vector():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, embed_dim=32, depth=2,
                                  num_heads=2, global_pool="map", num_classes=0)
    hooked = HookedViT.from_timm(perturb_(model.eval(), scale=0.2).double())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pieces = PoolerPieces(hooked, layers=[0, 1], per_source=True, convention="equal_share")
    raw = pieces.raw(_store(hooked, pieces, x), torch.float64, None, False)
    assert raw.pool_mlp is not None and raw.n_components == 1 + 2 * 2 + 1
    total = raw.embed + raw.attns.sum(1) + raw.mlps.sum(1) + raw.pool_mlp
    assert _close(total, raw.pooled)
    assert _close(raw.heads.sum(2), raw.attns)
    assert _close(raw.sources.sum(3), raw.heads)
    # the pooler's own heads: a second split of r without the pooler MLP's piece
    pool_heads, _ = raw.extras["pool_heads"]
    assert _close(pool_heads.sum(1), raw.pooled - raw.pool_mlp)
