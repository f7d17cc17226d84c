"""Rank-aware collection on torch.distributed: rank info from torchrun's environment, a contiguous
sampler, per-rank shards and the merged manifest, and a finished collection folder read back (folder.py; see
docs/scaling.md)."""

from vit_lens_clip.distributed.ranks import (
    RankInfo,
    finish_distributed,
    start_distributed,
)
from vit_lens_clip.distributed.sampler import ContiguousSampler, rank_range

__all__ = ["ContiguousSampler", "RankInfo", "finish_distributed", "rank_range", "start_distributed"]
