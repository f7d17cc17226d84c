"""Cost of every patch-map method of the registry relative to a plain forward on the same batch (wall time)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.methods.spatial.registry import MAP_METHODS
from vit_lens_clip.model.hooked_vit import HookedViT


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_heatmaps(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    texts: Float[Tensor, "n_classes d_out"],
    repeats: int = 3,
    verbose: bool = True,
) -> dict[str, dict[str, float]]:
    """Time each map of ``MAP_METHODS`` (median of ``repeats`` interleaved runs) over a plain forward.

    ``texts`` are the class texts (rows); every image is explained as class 0, through the registry's one call
    signature, so a new baseline is timed as soon as it is registered. Returns {name: {"seconds", "ratio"}}
    ("forward" included) and prints a table when ``verbose``.
    """
    device = model.W_patch.device
    images = images.to(device)
    classifier = texts.float().to(device).reshape(-1, model.cfg.output_dim).T  # [d_out, n_classes]
    labels = torch.zeros(images.shape[0], dtype=torch.long, device=device)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    runs: dict[str, Callable[[], Any]] = {"forward": forward}
    for name, method in MAP_METHODS.items():
        runs[name] = lambda method=method: method.compute(model, images, classifier, labels)
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["forward"])
    result = {k: {"seconds": statistics.median(v), "ratio": statistics.median(v) / base} for k, v in times.items()}
    if verbose:
        print(f"batch {images.shape[0]} on {device}, median of {repeats}")
        print(f"{'method':<15}{'seconds':>10}{'x forward':>11}")
        for k, r in result.items():
            print(f"{k:<15}{r['seconds']:>10.4f}{r['ratio']:>11.2f}")
    return result
