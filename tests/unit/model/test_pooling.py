"""Readouts (model/pooling.py): the pooled row, the pooled query's pattern row and the write-back of edits."""

import math

import pytest
import torch

from vit_lens_clip.model.pooling import (
    MeanReadout,
    NoPooledTokenError,
    TokenReadout,
    compute_dtype,
    pool_tokens,
    readout_for,
    trunk_readout,
)

G = torch.Generator().manual_seed(0)


def _qk(batch=3, n=5, heads=2, e=4):
    return torch.randn(batch, n, heads, e, generator=G), torch.randn(batch, n, heads, e, generator=G)


def _pattern(q, k, mask=None):
    scores = torch.einsum("bqhe,bshe->bhqs", q, k) / math.sqrt(q.shape[-1])
    return (scores if mask is None else scores + mask).softmax(-1)


def test_token_readout_pools_the_class_token_or_each_sequences_index():
    x = torch.randn(3, 5, 7, generator=G)
    assert torch.equal(TokenReadout().pool(x), x[:, 0])
    index = torch.tensor([4, 0, 2])
    assert torch.equal(TokenReadout().pool(x, index), torch.stack([x[0, 4], x[1, 0], x[2, 2]]))
    pattern = torch.rand(3, 2, 5, 5, generator=G)  # [B, H, query, source]: the query axis is pooled
    assert torch.equal(TokenReadout().pool(pattern, index)[1], pattern[1, :, 0])


def test_mean_readout_averages_the_patches_only():
    x = torch.randn(2, 6, 3, generator=G)
    assert torch.allclose(MeanReadout(2).pool(x), x[:, 2:].mean(1))
    assert torch.allclose(pool_tokens(x, "avg", 2), x[:, 2:].mean(1))


@pytest.mark.parametrize("with_index", [False, True])
def test_pooled_pattern_row_alone_equals_the_full_patterns_row(with_index):
    q, k = _qk()
    mask = torch.zeros(1, 1, 5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    index = torch.tensor([4, 2, 3]) if with_index else None
    full = _pattern(q, k, mask)
    readout = TokenReadout()
    alone = readout.pooled_pattern(q, k, None, mask, index)
    from_full = readout.pooled_pattern(q, k, full, mask, index)
    rows = index if with_index else torch.zeros(3, dtype=torch.long)
    expected = full[torch.arange(3), :, rows]
    assert torch.allclose(alone, expected, atol=1e-6) and torch.allclose(from_full, expected)
    assert alone.sum(-1).sub(1).abs().max() < 1e-6


def test_mean_readout_reads_the_full_pattern_and_refuses_without_it():
    q, k = _qk(n=6)
    full = _pattern(q, k)
    readout = MeanReadout(1)
    assert readout.needs_full_pattern and not TokenReadout().needs_full_pattern
    assert torch.allclose(readout.pooled_pattern(q, k, full), full[:, :, 1:].mean(2))
    with pytest.raises(RuntimeError, match="full pattern"):
        readout.pooled_pattern(q, k)


@pytest.mark.parametrize("readout, index", [(TokenReadout(), None), (TokenReadout(), torch.tensor([1, 3])),
                                            (MeanReadout(1), None)])
def test_a_change_written_back_moves_the_pool_by_exactly_that_change(readout, index):
    out = torch.randn(2, 4, 3, generator=G, dtype=torch.float64)
    change = torch.randn(2, 3, generator=G, dtype=torch.float64)
    moved = readout.add_to_pooled(out, change, index)
    assert torch.allclose(readout.pool(moved, index) - readout.pool(out, index), change, atol=1e-12)
    assert torch.equal(readout.add_to_pooled(out, torch.zeros_like(change), index), out)  # unedited: bitwise
    replaced = readout.replace_pooled(out, readout.pool(out, index) + change, index)
    assert torch.allclose(readout.pool(replaced, index), readout.pool(out, index) + change, atol=1e-12)


def test_readout_for_each_pool_type():
    assert isinstance(readout_for("tok", 1), TokenReadout)
    assert isinstance(readout_for("avg", 1), MeanReadout)
    assert readout_for("map", 0) is None
    with pytest.raises(NoPooledTokenError, match="attention pooler"):
        trunk_readout("map", 0)
    with pytest.raises(ValueError, match="pool_type"):
        readout_for("max", 0)


def test_compute_dtype_promotes_to_float32_at_least():
    assert compute_dtype(torch.float16) == torch.float32
    assert compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float32) == torch.float32
    assert compute_dtype(torch.float64) == torch.float64
