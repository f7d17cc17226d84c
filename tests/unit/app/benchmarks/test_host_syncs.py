"""The GPU synchronisation check (app/benchmarks/host_syncs.py): on a CUDA machine its sections run under
``set_sync_debug_mode("error")``; here, its regions are replaced by a counter of host reads, which must stay 0."""

import contextlib

import torch
from conftest import tiny_clip

from vit_lens_clip.app.benchmarks import host_syncs
from vit_lens_clip.model.hooked_vit import HookedViT


def test_sections_read_nothing_back_inside_their_regions(monkeypatch):
    reads = []
    original = torch.Tensor.item

    @contextlib.contextmanager
    def counting():
        monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or original(t))
        try:
            yield
        finally:
            monkeypatch.setattr(torch.Tensor, "item", original)

    monkeypatch.setattr(host_syncs, "syncs_raise", counting)
    model = HookedViT.from_open_clip(tiny_clip())
    batches = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    texts = torch.nn.functional.normalize(torch.randn(3, model.cfg.output_dim), dim=-1)
    lines = [host_syncs.check_forward(model, batches), host_syncs.check_decomposition(model, batches, texts)]
    assert all("no synchronisation" in line for line in lines), lines
    assert reads == []
