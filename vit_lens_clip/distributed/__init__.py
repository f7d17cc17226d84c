"""Rank-aware collection on torch.distributed: rank info from torchrun's environment, a contiguous
sampler, per-rank store folders and the merged manifest (see docs/scaling.md; the folder format: docs/store.md)."""

from vit_lens_clip.distributed.ranks import (
    RankInfo,
    finish_distributed,
    start_distributed,
)
from vit_lens_clip.distributed.sampler import ContiguousSampler, rank_range

__all__ = ["ContiguousSampler", "RankInfo", "finish_distributed", "rank_range", "start_distributed"]
