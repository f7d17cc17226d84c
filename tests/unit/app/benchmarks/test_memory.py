"""app/benchmarks/memory.py: the peak counts what a call allocates at its worst moment, temporaries included, and
not what existed before."""

import torch

from vit_lens_clip.app.benchmarks.memory import StorageTracker, peak_bytes

MB = 2**20


def test_peak_counts_temporaries_and_the_result():
    existing = torch.zeros(4 * MB // 4)

    def make():
        tmp = torch.ones(2 * MB // 4)  # 2 MiB freed before the end
        out = tmp + 1  # 2 MiB kept as the result
        del tmp
        return existing * 0 + out.sum()  # 4 MiB for the product and the sum, then the result of the same size

    peak, result = peak_bytes(make, torch.device("cpu"))
    assert result.shape == existing.shape
    assert 8 * MB <= peak < 16 * MB  # at least tmp, out and one 4 MiB intermediate; not the existing 4 MiB twice


def test_tracker_follows_live_storage():
    with StorageTracker() as tracker:
        a = torch.empty(MB // 4)
        b = torch.empty(MB // 4)
        del a, b
        c = torch.empty(MB // 8)
    assert tracker.peak == 2 * MB and tracker.live == MB // 2
    del c
