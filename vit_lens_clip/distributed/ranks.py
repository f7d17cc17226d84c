"""Who am I in a torchrun job: rank, world size and local rank from the environment torchrun sets.

Outside torchrun (no WORLD_SIZE) everything is a single process of rank 0 and no process group is made.
Under torchrun the process group uses NCCL when the ranks compute on CUDA and gloo otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> RankInfo:
        """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (defaults: one process)."""
        try:
            return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                       int(os.environ.get("LOCAL_RANK", "0")))
        except ValueError as e:
            raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {e}") from None

    def device(self, requested: str | None = None) -> torch.device:
        """The device this rank computes on: ``cuda:LOCAL_RANK`` for "cuda"/"auto" with CUDA, else the CPU."""
        if requested in (None, "auto"):
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda asked for, but CUDA is not available")
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device(requested)


def start_distributed(device: str | None = None) -> tuple[RankInfo, torch.device]:
    """Read the rank from the environment and, for several ranks, join torchrun's process group."""
    info = RankInfo.from_env()
    dev = info.device(device)
    if info.distributed and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return info, dev


def finish_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_to_main(obj: Any, info: RankInfo) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None on the other ranks. One process: ``[obj]``."""
    if not info.distributed:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, info: RankInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
