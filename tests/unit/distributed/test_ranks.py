"""distributed/ranks.py in one process: RankInfo from torchrun's environment, the device a rank computes on,
and the single-process behaviour of start/finish, barrier, gather and broadcast (no process group is made)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from vit_lens_clip.distributed import ranks
from vit_lens_clip.distributed.ranks import (
    RankInfo,
    barrier,
    broadcast_from_main,
    finish_distributed,
    gather_to_main,
    start_distributed,
)

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def env(monkeypatch):
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_outside_torchrun_one_main_process(env):
    info = RankInfo.from_env()
    assert info == RankInfo(0, 1, 0)
    assert info.is_main and not info.distributed


def test_torchruns_variables(env):
    env.setenv("RANK", "3")
    env.setenv("WORLD_SIZE", "4")
    env.setenv("LOCAL_RANK", "1")
    info = RankInfo.from_env()
    assert (info.rank, info.world_size, info.local_rank) == (3, 4, 1)
    assert not info.is_main and info.distributed
    assert RankInfo(rank=0, world_size=4).is_main


def test_non_integer_variables_are_refused_naming_them(env):
    env.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="RANK/WORLD_SIZE/LOCAL_RANK must be integers"):
        RankInfo.from_env()


def test_rank_info_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RankInfo().rank = 1


def test_device_without_cuda(monkeypatch):
    monkeypatch.setattr(ranks.torch.cuda, "is_available", lambda: False)
    info = RankInfo(1, 2, 1)
    assert info.device() == info.device("auto") == info.device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="--device cuda asked for, but CUDA is not available"):
        info.device("cuda")


def test_device_with_cuda_is_the_local_rank_modulo_the_devices(monkeypatch):
    monkeypatch.setattr(ranks.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ranks.torch.cuda, "device_count", lambda: 2)
    assert RankInfo(0, 4, 0).device() == torch.device("cuda", 0)
    assert RankInfo(rank=3, world_size=4, local_rank=0).device() == torch.device("cuda", 0)  # the local rank decides
    assert RankInfo(3, 4, 3).device("cuda") == torch.device("cuda", 1)  # 3 local ranks on 2 devices: wrap
    assert RankInfo(3, 4, 3).device("auto") == torch.device("cuda", 1)
    assert RankInfo(3, 4, 3).device("cpu") == torch.device("cpu")  # an explicit CPU is kept


def test_a_single_process_makes_no_process_group(env, monkeypatch):
    monkeypatch.setattr(ranks.torch.cuda, "is_available", lambda: False)
    info, device = start_distributed()
    assert info == RankInfo() and device == torch.device("cpu")
    assert not dist.is_initialized()
    barrier()  # no-ops without a group
    finish_distributed()
    assert not dist.is_initialized()


def test_gather_and_broadcast_in_one_process():
    info = RankInfo()
    payload = {"rows": [1, 2], "t": torch.arange(3)}
    gathered = gather_to_main(payload, info)
    assert gathered == [payload] and gathered[0] is payload
    assert broadcast_from_main(payload, info) is payload
