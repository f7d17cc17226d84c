"""Side-by-side benchmarks: every number is a ratio measured in one run on the same weights and batch.

Timings alternate between the variants (A, B, A, B, ...) and report medians; peak memory is the CUDA
allocator's peak on GPU, and the peak of live tensor storage created by the variant on CPU.
"""

from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensor storage created inside the mode (CPU: no allocator statistics exist)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.alive: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        if key in self.alive:
            self.alive.discard(key)
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self.alive:
                    self.alive.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, nbytes)
        return out


@dataclass
class Measurement:
    name: str
    seconds: float
    peak_bytes: int


def _peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return tracker.peak


def compare(
    variants: dict[str, Callable[[], object]], device: torch.device, repeats: int = 5, warmup: int = 1
) -> list[Measurement]:
    """Median wall time and peak memory of each variant, runs interleaved."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for fn in variants.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
        return [Measurement(k, statistics.median(times[k]), _peak_memory(variants[k], device)) for k in variants]


def format_table(results: list[Measurement], baseline: str, title: str) -> str:
    base = next(r for r in results if r.name == baseline)
    lines = [title, f"{'variant':48s} {'time':>9s} {'x time':>7s} {'peak MB':>9s} {'x mem':>7s}"]
    for r in results:
        mem_ratio = r.peak_bytes / base.peak_bytes if base.peak_bytes else float("nan")
        lines.append(
            f"{r.name:48s} {r.seconds * 1e3:7.1f}ms {r.seconds / base.seconds:6.2f}x "
            f"{r.peak_bytes / 2**20:9.1f} {mem_ratio:6.2f}x"
        )
    return "\n".join(lines)


def bench_model(
    name: str = "ViT-B-16",
    batch_size: int = 8,
    device: Optional[str] = None,
    repeats: int = 5,
    n_texts: int = 10,
    include_naive: bool = True,
) -> str:
    """HookedViT vs open_clip, and the decomposition variants vs a plain HookedViT forward."""
    import open_clip

    from vit_lens_clip.decompose.parts import decompose
    from vit_lens_clip.model.hooked_vit import HookedViT

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval().to(dev)
    hooked = HookedViT.from_open_clip(model)
    x = torch.randn(batch_size, 3, *model.visual.image_size, device=dev)
    texts = F.normalize(torch.randn(n_texts, hooked.cfg.output_dim, device=dev), dim=-1)
    header = f"model={name} batch={batch_size} device={dev} threads={torch.get_num_threads()}"
    port = compare(
        {"open_clip encode_image": lambda: model.encode_image(x), "HookedViT forward (no hooks)": lambda: hooked(x)},
        dev,
        repeats,
    )
    variants = {
        "HookedViT forward (no hooks)": lambda: hooked(x),
        "per-head decomposition, all layers": lambda: decompose(hooked, x),
        f"(head, patch) scores onto {n_texts} texts, all layers": lambda: decompose(hooked, x, texts=texts),
    }
    if include_naive:
        variants["naive full [L,H,N,D] build"] = lambda: decompose(hooked, x, per_source=True)
    decomp = compare(variants, dev, repeats)
    return "\n\n".join([
        format_table(port, "open_clip encode_image", f"# HookedViT vs open_clip ({header})"),
        format_table(decomp, "HookedViT forward (no hooks)", f"# Decomposition over a plain forward ({header})"),
    ])
