"""A deterministic split of a dataset over ranks: contiguous blocks that neither drop nor repeat items.

Rank r of W gets items [start_r, start_{r+1}) with start_r = r·(n // W) + min(r, n mod W): the first
n mod W ranks get one item more. Blocks are contiguous so that concatenating the ranks' outputs in rank
order gives dataset order (the merged manifest needs no sort). Unlike ``DistributedSampler`` no item is
padded in, so every image is seen exactly once for any n and W.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


def rank_range(n: int, world_size: int, rank: int) -> range:
    """The indices rank ``rank`` of ``world_size`` reads from a dataset of ``n`` items."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if n < 0:
        raise ValueError(f"dataset size must be non-negative, got {n}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class ContiguousSampler(Sampler[int]):
    """Yields ``rank_range(n, world_size, rank)`` in order."""

    def __init__(self, n: int, world_size: int, rank: int):
        self.indices = rank_range(n, world_size, rank)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
