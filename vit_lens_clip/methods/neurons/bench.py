"""Cost of collecting one layer's second-order statistics, as a ratio over a plain forward, and bytes per image.

Call ``bench_second_order()`` (the package bench can call it): random-weight open_clip tower, same batch, same
process, interleaved repeats, median times; prints one side-by-side table.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Optional

import open_clip
import torch

from vit_lens_clip.methods.neurons.effects import SecondOrderCapture
from vit_lens_clip.model.hooked_vit import HookedViT


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_second_order(
    arch: str = "ViT-B-16",
    layer: int = 9,
    batch_size: int = 4,
    repeats: int = 3,
    device: Optional[str] = None,
    print_table: bool = True,
) -> dict[str, float]:
    """Median seconds of a plain forward and of a forward that collects layer ``layer``'s s, ratio, bytes/image."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = open_clip.create_model(arch, pretrained=None)
    model = HookedViT.from_open_clip(clip.eval()).to(dev)
    del clip
    capture = SecondOrderCapture(model, layer)
    x = torch.randn(batch_size, 3, *model.cfg.image_size, device=dev, generator=torch.Generator().manual_seed(0)) \
        if dev.type == "cpu" else torch.randn(batch_size, 3, *model.cfg.image_size, device=dev)
    plain, collect = [], []
    with torch.no_grad():
        model(x)  # warm-up
        model.run_with_hooks(x, fwd_hooks=capture.hooks())
        out = capture.finish()
        for _ in range(repeats):
            _sync(dev)
            t = time.perf_counter()
            model(x)
            _sync(dev)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            model.run_with_hooks(x, fwd_hooks=capture.hooks())
            out = capture.finish()
            _sync(dev)
            collect.append(time.perf_counter() - t)
    cfg = model.cfg
    s_bytes = out["s"][0].numel() * 4
    stored = sum(v[0].numel() * 4 for v in out.values()) + 2 * 8  # + index and label
    full = cfg.d_mlp * cfg.output_dim * 4
    result = {"plain_s": statistics.median(plain), "collect_s": statistics.median(collect),
              "ratio": statistics.median(collect) / statistics.median(plain),
              "s_bytes_per_image": s_bytes, "stored_bytes_per_image": stored, "effects_bytes_per_image": full}
    if print_table:
        print(f"{arch}, layer {layer} ({cfg.n_layers - 1 - layer} later layers x {cfg.n_heads} heads x {cfg.d_mlp} neurons), "
              f"batch {batch_size}, {dev}, median of {repeats}")
        print(f"  plain forward            {result['plain_s']:.3f} s   1.00x")
        print(f"  forward + second order   {result['collect_s']:.3f} s   {result['ratio']:.2f}x")
        print(f"  stored per image: {stored / 1e3:.1f} kB (s alone {s_bytes / 1e3:.1f} kB; the effects [N, D] would be "
              f"{full / 1e6:.2f} MB, {full / stored:.0f}x more)")
    return result


if __name__ == "__main__":
    bench_second_order()
