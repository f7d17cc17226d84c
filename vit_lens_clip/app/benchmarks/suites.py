"""What the bench measures: the model suite, the TextSpan suite and the full (GPU-sized) suite.

Every suite builds its contenders on the same weights and inputs, times them interleaved, measures each one's
peak memory in a separate call, and checks each against its exact counterpart (``Row.agreement``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from vit_lens_clip.app.benchmarks.arguments import HEADLIKE_HEADS
from vit_lens_clip.app.benchmarks.memory import LOADERS, measure_load, peak_bytes
from vit_lens_clip.app.benchmarks.results import Row, agreement, format_table
from vit_lens_clip.app.benchmarks.timing import Timing, time_interleaved
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.methods.neurons.effects import SecondOrderCapture
from vit_lens_clip.methods.spatial.heatmaps import text_heatmap
from vit_lens_clip.methods.textspan.algorithm import DEFAULT_MAX_MEMORY, text_span
from vit_lens_clip.methods.textspan.bench import head_like_data, random_head_data
from vit_lens_clip.methods.textspan.published_loop import text_span_published_loop
from vit_lens_clip.methods.textspan.reference import text_span_reference
from vit_lens_clip.methods.textspan.runs import collect_head_contributions
from vit_lens_clip.model.hooked_vit import HookedViT

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def perturbed_open_clip(arch: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """open_clip model with random weights and every 1-d parameter (biases, LayerNorm γ and β) moved off its init."""
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and not name.startswith("logit"):
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.to(device)


def _rows(table: str, baseline: str, contenders: dict[str, Callable[[], object]],
          checks: dict[str, tuple[Callable[[], float | None], str]], device: torch.device, repeats: int,
          warmup: int = 1, notes: dict[str, str] | None = None) -> list[Row]:
    with torch.no_grad():
        timings = time_interleaved(contenders, device, repeats, warmup)
    rows = []
    for name, fn in contenders.items():
        check, counterpart = checks[name]
        with torch.no_grad():
            peak, _ = peak_bytes(fn, device)
        rows.append(Row.of(table, name, baseline, timings[name], peak, check(), counterpart, (notes or {}).get(name, "")))
    return rows


def model_rows(arch: str, batch_size: int, device: torch.device, repeats: int, n_texts: int = 10,
               include_naive: bool = True, precision: str = "fp32", seed: int = 0, table: str | None = None,
               with_open_clip: bool = True) -> list[Row]:
    """open_clip vs HookedViT, and the decompositions over a plain HookedViT forward, on perturbed weights."""
    dtype = PRECISIONS[precision]
    model = perturbed_open_clip(arch, device, seed)
    hooked = HookedViT.from_open_clip(model).to(dtype)
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(batch_size, 3, *model.visual.image_size, generator=g).to(device)
    texts = F.normalize(torch.randn(n_texts, hooked.cfg.output_dim, generator=g), dim=-1).to(device)
    xd = x.to(dtype)
    with torch.no_grad():
        y_open_clip = model.encode_image(x)
        y = hooked(xd)
        naive = decompose(hooked, xd, per_source=True)
    exact_scores = torch.einsum("blhnd,kd->blhnk", naive.head_sources, texts)

    def per_head_check() -> float:
        dec = decompose(hooked, xd)
        return max(agreement(dec.total(), y), agreement(dec.heads.sum(2), dec.attns))

    rows: list[Row] = []
    label = table or f"{arch} batch {batch_size} {precision}"
    if with_open_clip:
        rows += _rows(
            f"port: {label}", "open_clip encode_image",
            {"open_clip encode_image": lambda: model.encode_image(x), "HookedViT forward (no hooks)": lambda: hooked(xd)},
            {"open_clip encode_image": (lambda: 0.0, "itself"),
             "HookedViT forward (no hooks)": (lambda: agreement(hooked(xd), y_open_clip), "open_clip encode_image")},
            device, repeats)
    contenders = {
        "HookedViT forward (no hooks)": lambda: hooked(xd),
        "per-head decomposition, all layers": lambda: decompose(hooked, xd),
        f"(head, patch) scores onto {n_texts} texts": lambda: decompose(hooked, xd, texts=texts),
    }
    checks = {
        "HookedViT forward (no hooks)": (lambda: agreement(hooked(xd), y_open_clip), "open_clip (fp32)"),
        "per-head decomposition, all layers": (per_head_check, "sum of parts = forward; heads sum to layers"),
        f"(head, patch) scores onto {n_texts} texts": (
            lambda: agreement(decompose(hooked, xd, texts=texts).source_scores, exact_scores),
            "naive [L,H,N,D] pieces . texts"),
    }
    if include_naive:
        contenders["naive full [L,H,N,D] build"] = lambda: decompose(hooked, xd, per_source=True)
        checks["naive full [L,H,N,D] build"] = (
            lambda: agreement(decompose(hooked, xd, per_source=True).head_sources.sum(3),
                              decompose(hooked, xd).heads), "per-head decomposition")
    with torch.no_grad():
        rows += _rows(f"decomposition over a plain forward: {label}", "HookedViT forward (no hooks)",
                      contenders, checks, device, repeats)
    return rows


PUBLISHED_LOOP = "published loop (per head: NumPy SVD, torch float32 picks)"
REFERENCE_LOOP = "reference loop (reference.py, NumPy float64)"


def textspan_rows(n_heads: int = 48, n_images: int = 2000, n_texts: int = 3498, d_out: int = 512, k: int = 20,
                  rank: int = 80, repeats: int = 3, device: torch.device | None = None,
                  max_memory: int | None = DEFAULT_MAX_MEMORY, with_loop: bool = True, seed: int = 0,
                  data: str = "random") -> list[Row]:
    """Batched TextSpan (float64, float32) against two per-head loops on the same data and thread limits
    (``device`` None: the CPU): the baseline is the released implementation's loop (``published_loop.py``), the
    exact oracle is ``reference.py`` (float64). ``data``: "random" (full-rank float64, a decaying spectrum) or
    "headlike" (rank d_head + 1 of d_out, stored in float32, as a collected head; ``head_like_data``)."""
    device = torch.device("cpu") if device is None else device
    if data not in ("random", "headlike"):
        raise ValueError(f"data must be 'random' or 'headlike', not {data!r}")
    make = random_head_data if data == "random" else head_like_data
    C, T = make(n_heads, n_images, n_texts, d_out, seed)
    C32, T32 = C.float().to(device), T.float().to(device)
    C64, T64 = C.double().to(device), T.to(device)  # head-like data: float32 values (their rank floor, rank.py)
    Cn, Tn = C.numpy(), T.numpy()
    contenders: dict[str, Callable[[], object]] = {}
    loops_measured: dict[str, tuple[int, object]] = {}

    def per_head(name: str, one_head: Callable[[int], object]) -> Callable[[], object]:
        """A per-head loop; its first call (a timed one) also records its peak memory and result (NumPy and CPU
        tensors only), so the slow loops run ``repeats`` times and no more."""
        def run() -> object:
            results = [one_head(h) for h in range(n_heads)]
            return results
        def timed() -> object:
            if name in loops_measured:
                return run()
            loops_measured[name] = peak_bytes(run, torch.device("cpu"))
            return loops_measured[name][1]
        return timed

    if with_loop:
        contenders[PUBLISHED_LOOP] = per_head(PUBLISHED_LOOP, lambda h: text_span_published_loop(Cn[h], Tn, k=k,
                                                                                                  rank=rank))
        contenders[REFERENCE_LOOP] = per_head(REFERENCE_LOOP, lambda h: text_span_reference(Cn[h], Tn, k=k, rank=rank))
    contenders["text_span float64 (default)"] = lambda: text_span(C64, T64, k=k, rank=rank, max_memory=max_memory)
    contenders["text_span float32, float64 re-decision"] = lambda: text_span(C32, T32, k=k, rank=rank,
                                                                              dtype=torch.float32,
                                                                              max_memory=max_memory)
    timings = time_interleaved(contenders, device, repeats, warmup=0)
    peaks_and_results = {name: loops_measured[name] if name in loops_measured else peak_bytes(fn, device)
                         for name, fn in contenders.items()}
    if with_loop:
        exact = peaks_and_results[REFERENCE_LOOP][1]
        exact_indices = torch.as_tensor(np.stack([r.indices for r in exact]))
        exact_reconstruction = torch.as_tensor(np.stack([r.reconstruction for r in exact]))
        published_indices = torch.as_tensor(np.stack([r.indices for r in peaks_and_results[PUBLISHED_LOOP][1]]))
        counterpart = "reference loop"
    else:
        result = text_span(C64, T64, k=k, rank=rank, max_memory=max_memory)
        exact_indices, exact_reconstruction = result.indices.cpu(), result.reconstruction
        published_indices = None
        counterpart = "text_span float64"
    rows = []
    baseline = PUBLISHED_LOOP if with_loop else "text_span float64 (default)"
    described = "random float64 data" if data == "random" else "head-like float32 data"
    table = f"TextSpan on {described}: {n_heads} heads x {n_images} images x {n_texts} texts, D={d_out}, k={k}, rank={rank}"

    def same_picks(indices: torch.Tensor, other: torch.Tensor) -> int:
        return int((indices.cpu() == other).all(-1).sum())

    for name in contenders:
        peak, result = peaks_and_results[name]
        if name == REFERENCE_LOOP:
            rows.append(Row.of(table, name, baseline, timings[name], peak, 0.0, "itself", f"{n_heads} heads; the exact oracle"))
            continue
        if name == PUBLISHED_LOOP:
            indices = torch.as_tensor(np.stack([r.indices for r in result]))
            reconstruction = torch.as_tensor(np.stack([r.reconstruction for r in result]))
            same = same_picks(indices, exact_indices)
            rows.append(Row.of(table, name, baseline, timings[name], peak, agreement(reconstruction, exact_reconstruction),
                               counterpart, f"{n_heads} heads; picks equal to the reference's on {same}/{n_heads}",
                               picks_identical=same, heads=n_heads))
            continue
        same = same_picks(result.indices, exact_indices)
        ranks = result.ranks.flatten().tolist()
        note = f"picks identical on {same}/{n_heads} heads, ranks {min(ranks)}-{max(ranks)}"
        extra = {"picks_identical": same, "heads": n_heads}
        if published_indices is not None:
            extra["picks_as_published_loop"] = same_picks(result.indices, published_indices)
            note += f"; as the published loop's on {extra['picks_as_published_loop']}/{n_heads}"
        if name.endswith("float64 re-decision"):
            note += f" ({int(result.redecided.sum())} heads redone in float64)"
        rows.append(Row.of(table, name, baseline, timings[name], peak,
                           agreement(result.reconstruction, exact_reconstruction), counterpart, note, **extra))
    return rows


def heatmap_and_collection_rows(arch: str, batch_size: int, device: torch.device, repeats: int,
                                n_collect: int, seed: int = 0) -> list[Row]:
    """Text heatmaps and a report-sized head collection (last 4 layers), over a plain forward."""
    model = perturbed_open_clip(arch, device, seed)
    hooked = HookedViT.from_open_clip(model)
    g = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(batch_size, 3, *model.visual.image_size, generator=g).to(device)
    text = F.normalize(torch.randn(1, hooked.cfg.output_dim, generator=g), dim=-1).to(device)
    dataset = torch.randn(n_collect, 3, *model.visual.image_size, generator=g)
    with torch.no_grad():
        naive = decompose(hooked, x, per_source=True)
    grid = hooked.cfg.image_size[0] // hooked.cfg.patch_size[0], hooked.cfg.image_size[1] // hooked.cfg.patch_size[1]
    exact_map = (naive.head_sources[:, :, :, 1:] @ text.T).sum((1, 2))[..., 0].reshape(batch_size, 1, *grid)
    last_n = min(4, hooked.cfg.n_layers)
    collect = lambda: collect_head_contributions(hooked, dataset, last_n_layers=last_n,
                                                 batch_size=batch_size, normalize=True, progress=False)
    collect_name = f"collect last-{last_n}-layer heads, {n_collect} images"
    contenders = {
        "HookedViT forward (no hooks)": lambda: hooked(x),
        "text heatmap (1 text)": lambda: text_heatmap(hooked, x, text),
        collect_name: collect,
    }
    checks = {
        "HookedViT forward (no hooks)": (lambda: agreement(hooked(x), model.encode_image(x)), "open_clip"),
        "text heatmap (1 text)": (lambda: agreement(text_heatmap(hooked, x, text), exact_map),
                                  "naive [L,H,N,D] pieces . text"),
        collect_name: (lambda: None, "-"),
    }
    with torch.no_grad():
        return _rows(f"heatmaps and collection: {arch} batch {batch_size} fp32", "HookedViT forward (no hooks)",
                     contenders, checks, device, repeats)


def second_order_direct(hooked: HookedViT, x: torch.Tensor, layer: int, later: int) -> torch.Tensor:
    """s_{j,h,n} for one later layer j, straight from a plain ``run_with_cache`` (float64): the full attention
    pattern pooled over queries as the model pools tokens, σ_j(t) recomputed from ``resid_pre``, a_n(t) from
    ``mlp.hook_post``; none of the capture's hooks or reductions are used."""
    with torch.no_grad():
        _, cache = hooked.run_with_cache(x)
    post = cache[f"blocks.{layer}.mlp.hook_post"].double()  # [B, T, N]
    A = hooked.pool_tokens(cache[f"blocks.{later}.attn.hook_pattern"].double())  # [B, H, Q, K] -> [B, H, K]
    resid = cache[f"blocks.{later}.hook_resid_pre"].double()
    sigma = (resid.var(-1, unbiased=False) + hooked.blocks[later].ln1.eps).sqrt()  # [B, T]
    return torch.einsum("bht,btn->bhn", A / sigma[:, None, :], post)


def neuron_rows(arch: str, batch_size: int, device: torch.device, repeats: int, layer: int | None = None,
                seed: int = 0) -> list[Row]:
    """Cost of collecting one layer's second-order statistics (``SecondOrderCapture``) over a plain forward,
    the bytes it stores per image, and its s against a direct computation from a plain ``run_with_cache``."""
    model = perturbed_open_clip(arch, device, seed)
    hooked = HookedViT.from_open_clip(model)
    cfg = hooked.cfg
    layer = max(cfg.n_layers - 3, 0) if layer is None else layer  # layer 0 in a tower of 2 or 3 layers
    capture = SecondOrderCapture(hooked, layer)
    g = torch.Generator().manual_seed(seed + 4)
    x = torch.randn(batch_size, 3, *model.visual.image_size, generator=g).to(device)

    def collect() -> dict[str, torch.Tensor]:
        hooked.run_with_hooks(x, fwd_hooks=capture.hooks())
        return capture.finish()

    with torch.no_grad():
        out = collect()
    later = capture.later[-1]  # the last layer: the longest way from layer l's neurons
    s_bytes = out["s"][0].numel() * out["s"].element_size()
    stored = sum(v[0].numel() * v.element_size() for v in out.values()) + 2 * 8  # + int64 index and label
    effects_bytes = cfg.d_mlp * cfg.output_dim * out["s"].element_size()
    name = f"second-order stats, layer {capture.layer}"
    note = (f"{len(capture.later)} later layers x {cfg.n_heads} heads x {cfg.d_mlp} neurons; stored/image "
            f"{stored / 1e3:.1f} kB (s alone {s_bytes / 1e3:.1f} kB), [N, D] effects would be "
            f"{effects_bytes / 1e6:.2f} MB ({effects_bytes / stored:.0f}x)")
    contenders = {"HookedViT forward (no hooks)": lambda: hooked(x), name: collect}
    checks = {
        "HookedViT forward (no hooks)": (lambda: agreement(hooked(x), model.encode_image(x)), "open_clip"),
        name: (lambda: agreement(collect()["s"][:, -1], second_order_direct(hooked, x, capture.layer, later)),
               f"s of layer {later} from a plain run_with_cache (float64)"),
    }
    with torch.no_grad():
        rows = _rows(f"neuron second-order statistics: {arch} batch {batch_size} fp32", "HookedViT forward (no hooks)",
                     contenders, checks, device, repeats, notes={name: note})
    rows[-1].extra.update(layer=capture.layer, s_bytes_per_image=s_bytes, stored_bytes_per_image=stored,
                          effects_bytes_per_image=effects_bytes)
    return rows


def textspan_tables(which: str, sizes: dict, repeats: int, device: torch.device) -> list[Row]:
    """The TextSpan tables ``which`` names ("random", "headlike" or "both"; the head-like one on at most
    HEADLIKE_HEADS heads), with the per-head loop only on CPU."""
    if which not in ("random", "headlike", "both"):
        raise ValueError(f"TextSpan data must be 'random', 'headlike' or 'both', not {which!r}")
    kw = {"repeats": repeats, "device": device, "with_loop": device.type == "cpu"}
    rows: list[Row] = []
    if which in ("random", "both"):
        rows += textspan_rows(**kw, **sizes, data="random")
    if which in ("headlike", "both"):
        rows += textspan_rows(**kw, **{**sizes, "n_heads": min(sizes["n_heads"], HEADLIKE_HEADS)}, data="headlike")
    return rows


def full_rows(arch: str, batch_size: int, device: torch.device, repeats: int, precisions: list[str],
              textspan_sizes: dict, n_collect: int, textspan_data: str = "both") -> list[Row]:
    """Everything at once: model rows per precision, heatmaps, collection, neuron second-order statistics,
    TextSpan (no NumPy loop on CUDA)."""
    rows = []
    for i, precision in enumerate(precisions):
        rows += model_rows(arch, batch_size, device, repeats, precision=precision, include_naive=i == 0,
                           with_open_clip=i == 0)
    rows += heatmap_and_collection_rows(arch, batch_size, device, repeats, n_collect)
    rows += neuron_rows(arch, batch_size, device, repeats)
    rows += textspan_tables(textspan_data, textspan_sizes, repeats, device)
    return rows


def load_memory_rows(archs: tuple[str, ...] = ("ViT-B-16", "ViT-L-14"), seed: int = 0) -> list[Row]:
    """Resident memory a load leaves: ``load_clip(arch)`` against ``open_clip.create_model_and_transforms(arch)``
    (random weights, float32), each in its own fresh process, one after the other (``memory.measure_load``).
    The memory column is the RSS grown by the load (not a peak; target: load_clip at most 1.1x open_clip), the
    times are the load's, and the agreement is that of the two models' embeddings of the same seeded images."""
    rows = []
    for arch in archs:
        measured = {loader: measure_load(arch, loader, seed) for loader in LOADERS}
        reference = measured[LOADERS[0]]["embedding"]
        table = f"resident memory after loading: {arch} fp32, random weights, fresh process each"
        for loader, record in measured.items():
            timing = Timing([record["cpu_seconds"]], [record["seconds"]])
            check = 0.0 if loader == LOADERS[0] else agreement(record["embedding"], reference)
            counterpart = "itself" if loader == LOADERS[0] else "open_clip encode_image (same weights, same images)"
            rows.append(Row.of(table, loader, LOADERS[0], timing, record["rss"], check, counterpart,
                               "RSS grown by the load", rss_bytes=record["rss"]))
    return rows


if __name__ == "__main__":  # python -m vit_lens_clip.app.benchmarks.suites [ARCH ...]: the resident-memory table
    rows = load_memory_rows(tuple(sys.argv[1:]) or ("ViT-B-16", "ViT-L-14"))
    for name in dict.fromkeys(r.table for r in rows):
        print(format_table([r for r in rows if r.table == name], f"# {name}"), end="\n\n")
