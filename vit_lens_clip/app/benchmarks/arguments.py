"""The bench's command-line options (argparse only, so that building the CLI parser stays cheap)."""

from __future__ import annotations

import argparse

TEXTSPAN_SIZES = {
    "paper": {"n_heads": 48, "n_images": 2000, "n_texts": 3498, "d_out": 512, "k": 20},
    "quick": {"n_heads": 6, "n_images": 300, "n_texts": 500, "d_out": 128, "k": 10},
    "tiny": {"n_heads": 2, "n_images": 40, "n_texts": 30, "d_out": 16, "k": 3, "rank": 8},
}
HEADLIKE_HEADS = 12  # heads in the head-like TextSpan table (its per-head loop is as slow as the random one's)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", choices=["default", "textspan", "full", "memory"], default="default",
                   help="default: model rows (+ --heatmaps, --neurons, --textspan); textspan: TextSpan rows only; "
                        "full: all rows, model rows in each of --precisions; memory: resident memory after "
                        "load_clip vs open_clip, a fresh process per load (--arch, comma-separated)")
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (random weights, perturbed)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed repeats (a warning under 3)")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads, pinned")
    p.add_argument("--no-naive", action="store_true", help="skip the naive [L,H,N,D] build")
    p.add_argument("--heatmaps", action="store_true", help="also time text heatmaps and a head collection")
    p.add_argument("--collect-images", type=int, default=64, help="images in the timed head collection")
    p.add_argument("--neurons", action="store_true",
                   help="also time collecting one layer's neuron second-order statistics (layer n_layers - 3)")
    p.add_argument("--textspan", action="store_true", help="also time batched TextSpan vs the per-head loop")
    p.add_argument("--textspan-size", choices=sorted(TEXTSPAN_SIZES), default="paper")
    p.add_argument("--textspan-data", choices=["random", "headlike", "both"], default="both",
                   help="TextSpan data: random full-rank float64, head-like (rank d_head + 1, float32; at most "
                        f"{HEADLIKE_HEADS} heads), or both tables")
    p.add_argument("--max-memory", type=float, default=None,
                   help="TextSpan working memory per head chunk, MiB (default: text_span's, 48)")
    p.add_argument("--precisions", default="fp32,fp16,bf16", help="full suite: comma-separated precisions")
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure with versions/threads/device")
