"""distributed/sampler.py: rank_range's blocks partition any dataset exactly, in order, balanced to within one
item with the extras on the first ranks; ContiguousSampler yields its block; out-of-world ranks are refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vit_lens_clip.distributed.sampler import ContiguousSampler, rank_range


@pytest.mark.parametrize("n", [0, 1, 5, 7, 12, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_blocks_partition_the_dataset_in_rank_order(n, world):
    blocks = [rank_range(n, world, r) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))  # concatenated in rank order: dataset order, once each
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1
    extra = n % world
    assert sizes == [n // world + 1] * extra + [n // world] * (world - extra)  # the first n mod W ranks get one more
    for r, b in enumerate(blocks):
        assert b.step == 1 and b.start == r * (n // world) + min(r, extra)


def test_more_ranks_than_items_leaves_the_last_ranks_empty():
    assert [len(rank_range(2, 4, r)) for r in range(4)] == [1, 1, 0, 0]
    assert len(ContiguousSampler(2, 4, 3)) == 0 and list(ContiguousSampler(2, 4, 3)) == []


def test_sampler_yields_its_block_and_drives_a_dataloader():
    data = TensorDataset(torch.arange(10) * 10)
    outputs = []
    for rank in range(3):
        sampler = ContiguousSampler(len(data), 3, rank)
        assert len(sampler) == len(rank_range(10, 3, rank))
        assert list(sampler) == list(rank_range(10, 3, rank))
        assert list(sampler) == list(sampler)  # re-iterable (one pass per epoch)
        outputs += [x for (batch,) in DataLoader(data, batch_size=2, sampler=sampler) for x in batch.tolist()]
    assert outputs == [i * 10 for i in range(10)]


@pytest.mark.parametrize("n, world, rank, message", [
    (5, 2, 2, "rank 2 is not in a world of size 2"),
    (5, 2, -1, "rank -1 is not in a world of size 2"),
    (5, 0, 0, "rank 0 is not in a world of size 0"),
    (-1, 2, 0, "dataset size must be non-negative, got -1"),
])
def test_impossible_ranks_and_sizes_are_refused(n, world, rank, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        rank_range(n, world, rank)
    with pytest.raises(ValueError):
        ContiguousSampler(n, world, rank)
