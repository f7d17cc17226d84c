"""Benchmark: batched TextSpan against the per-head NumPy reference on the same random data.

python -m vit_lens_clip.methods.textspan.bench            # paper-sized: 48 heads, 2000 images, 3500 texts
python -m vit_lens_clip.methods.textspan.bench --quick    # small sizes, a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from vit_lens_clip.methods.textspan.algorithm import text_span
from vit_lens_clip.methods.textspan.reference import text_span_reference

QUICK_SIZES = {"n_heads": 6, "n_images": 300, "n_texts": 500, "d_out": 128, "k": 10}


def random_head_data(n_heads: int, n_images: int, n_texts: int, d_out: int, seed: int = 0):
    """Head contributions with a decaying spectrum and a non-zero mean, and unit random text embeddings."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -2, d_out, dtype=torch.float64)
    mixing = torch.linalg.qr(torch.randn(n_heads, d_out, d_out, generator=g, dtype=torch.float64)).Q
    contributions = (torch.randn(n_heads, n_images, d_out, generator=g, dtype=torch.float64) * spectrum) @ mixing
    contributions += 0.5 * torch.randn(n_heads, 1, d_out, generator=g, dtype=torch.float64)
    texts = torch.randn(n_texts, d_out, generator=g, dtype=torch.float64)
    return contributions, texts / texts.norm(dim=-1, keepdim=True)


def head_like_data(n_heads: int, n_images: int, n_texts: int, d_out: int, seed: int = 0, d_head: int | None = None):
    """Contributions shaped like a real head's, and unit random text embeddings (float64).

    A head writes through W_O, so its contributions span d_head dimensions (default min(64, d_out // 4)) plus
    the mean's; they are returned rounded to float32, as a collection stores them, so the rest of the
    spectrum is float32 rounding (docs/textspan.md, numerical rank).
    """
    d_head = min(64, max(1, d_out // 4)) if d_head is None else d_head
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -2, d_head, dtype=torch.float64)
    z = torch.randn(n_heads, n_images, d_head, generator=g, dtype=torch.float64) * spectrum
    w_o = torch.randn(n_heads, d_head, d_out, generator=g, dtype=torch.float64) / d_head**0.5
    contributions = z @ w_o + 0.5 * torch.randn(n_heads, 1, d_out, generator=g, dtype=torch.float64)
    texts = torch.randn(n_texts, d_out, generator=g, dtype=torch.float64)
    return contributions.float(), texts / texts.norm(dim=-1, keepdim=True)


def bench_textspan(
    n_heads: int = 48,
    n_images: int = 2000,
    n_texts: int = 3500,
    d_out: int = 512,
    k: int = 20,
    seed: int = 0,
    rank: int = 80,
) -> dict:
    """Time both implementations (float64, CPU threads as configured) and check that their picks agree."""
    contributions, texts = random_head_data(n_heads, n_images, n_texts, d_out, seed)

    start = time.perf_counter()
    batched = text_span(contributions, texts, k=k, rank=rank)
    batched_s = time.perf_counter() - start

    C, T = contributions.numpy(), texts.numpy()
    start = time.perf_counter()
    references = [text_span_reference(C[h], T, k=k, rank=rank) for h in tqdm(range(n_heads), desc="reference heads")]
    reference_s = time.perf_counter() - start

    same_picks = all(np.array_equal(ref.indices, batched.indices[h].numpy()) for h, ref in enumerate(references))
    reconstruction_error = max(
        float(np.abs(ref.reconstruction - batched.reconstruction[h].numpy()).max()) for h, ref in enumerate(references)
    )
    variance_error = max(
        float(np.abs(ref.variance_explained - batched.variance_explained[h].numpy()).max())
        for h, ref in enumerate(references)
    )
    result = {
        "n_heads": n_heads,
        "n_images": n_images,
        "n_texts": n_texts,
        "d_out": d_out,
        "k": k,
        "rank": rank,
        "threads": torch.get_num_threads(),
        "batched_s": batched_s,
        "reference_s": reference_s,
        "speedup": reference_s / batched_s,
        "picks_identical": same_picks,
        "max_reconstruction_abs_diff": reconstruction_error,
        "max_variance_explained_abs_diff": variance_error,
    }
    print(
        f"TextSpan {n_heads} heads x {n_images} images x {n_texts} texts x D={d_out}, k={k}, r={rank}, "
        f"{result['threads']} thread(s): batched {batched_s:.2f} s, reference {reference_s:.2f} s, "
        f"ratio {result['speedup']:.1f}x, picks identical: {same_picks}"
    )
    return result


def limit_threads(n_threads: int) -> contextlib.AbstractContextManager:
    """Limit torch and (if threadpoolctl is installed) NumPy's BLAS to n_threads."""
    torch.set_num_threads(n_threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # NumPy then uses its default; set OPENBLAS_NUM_THREADS before starting Python
        return contextlib.nullcontext()
    return threadpool_limits(n_threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--images", type=int)
    parser.add_argument("--texts", type=int)
    parser.add_argument("--d-out", type=int)
    parser.add_argument("--k", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = dict(QUICK_SIZES) if args.quick else {}
    for name, value in [
        ("n_heads", args.heads),
        ("n_images", args.images),
        ("n_texts", args.texts),
        ("d_out", args.d_out),
        ("k", args.k),
    ]:
        if value is not None:
            sizes[name] = value
    with limit_threads(args.threads):
        bench_textspan(seed=args.seed, **sizes)


if __name__ == "__main__":
    main()
