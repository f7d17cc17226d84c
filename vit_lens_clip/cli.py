"""The ``vit-lens-clip`` command: report (the main job), hooks, bench, segment, train-embedded."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _model_arguments(p: argparse.ArgumentParser) -> None:
    from vit_lens_clip.loading import EMBEDDED_NAME

    p.add_argument("--model", default=EMBEDDED_NAME, help="open_clip name (SigLIP too), timm:NAME (a timm ViT), local-dir:PATH, hf-hub:ID, hf:ID, or the embedded default")
    p.add_argument("--pretrained", default=None, help="pretrained tag or local .safetensors/.bin file "
                   "(omitted: random weights built from the config, no download)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])


def _cmd_hooks(args: argparse.Namespace) -> None:
    """Print every hook point with the shape it carries for one image."""
    import torch

    from vit_lens_clip.loading import load_clip
    from vit_lens_clip.model.config import ViTConfig
    from vit_lens_clip.model.hooked_vit import HookedViT

    if args.random:
        model = HookedViT(ViTConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, output_dim=32, image_size=32, patch_size=8))
    else:
        model = load_clip(args.model, args.pretrained, device=args.device, precision=args.precision).model
    x = torch.randn(1, model.cfg.in_channels, *model.cfg.image_size, device=model.W_proj.device, dtype=model.W_proj.dtype)
    _, cache = model.run_with_cache(x)
    print(f"{model.cfg.model_name}: {model.cfg.n_layers} layers, {model.cfg.n_heads} heads, d_model {model.cfg.d_model}, "
          f"{model.cfg.n_ctx} tokens, activation {model.cfg.act_fn}, pooling {model.cfg.pool_type}")
    for name, value in cache.items():
        print(f"  {name:48s} {tuple(value.shape)}")


def _cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from vit_lens_clip.bench import bench_model

    if args.threads:
        torch.set_num_threads(args.threads)
    print(bench_model(args.arch, batch_size=args.batch_size, device=args.device, repeats=args.repeats,
                      include_naive=not args.no_naive))
    if args.heatmaps:
        import open_clip
        import torch.nn.functional as F

        from vit_lens_clip.model.hooked_vit import HookedViT
        from vit_lens_clip.spatial.evaluate import bench_heatmaps

        dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = HookedViT.from_open_clip(open_clip.create_model(args.arch, pretrained=None).eval().to(dev))
        x = torch.randn(args.batch_size, 3, *model.cfg.image_size, device=dev)
        bench_heatmaps(model, x, F.normalize(torch.randn(1, model.cfg.output_dim, device=dev), dim=-1), repeats=args.repeats)
    if args.textspan:
        from vit_lens_clip.textspan.bench import bench_textspan

        bench_textspan()


def _cmd_segment(args: argparse.Namespace) -> None:
    from vit_lens_clip.spatial.evaluate import run_segment_command

    run_segment_command(args)


def _cmd_report(args: argparse.Namespace) -> None:
    from vit_lens_clip.report import run_report

    run_report(args)


def _cmd_train(args: argparse.Namespace) -> None:
    from vit_lens_clip.embedded.train import main as train_main

    train_main(args.train_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit-lens-clip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("report", help="the whole analysis, written as an offline HTML report + JSON/CSV")
    _model_arguments(p)
    from vit_lens_clip.report import add_report_arguments

    add_report_arguments(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("hooks", help="list hook names and shapes")
    _model_arguments(p)
    p.add_argument("--random", action="store_true", help="a tiny random ViT instead of loading a model")
    p.set_defaults(func=_cmd_hooks)

    p = sub.add_parser("bench", help="HookedViT and decomposition cost as ratios over open_clip / a plain forward")
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (random weights)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-naive", action="store_true", help="skip the naive [L,H,N,D] build")
    p.add_argument("--heatmaps", action="store_true", help="also time heatmaps and segmentation baselines")
    p.add_argument("--textspan", action="store_true", help="also time batched TextSpan vs the reference")
    p.set_defaults(func=_cmd_bench)

    from vit_lens_clip.spatial.evaluate import add_segment_arguments

    p = sub.add_parser("segment", help="zero-shot segmentation: decomposition vs baselines, with metrics")
    add_segment_arguments(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("train-embedded", help="train the embedded shapes CLIP (arguments go to the trainer)")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-embedded"]:  # everything after the word goes to the trainer untouched
        from vit_lens_clip.embedded.train import main as train_main

        train_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"vit-lens-clip {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
