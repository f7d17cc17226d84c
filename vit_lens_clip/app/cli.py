"""The ``vit-lens-clip`` command: report (the main job), hooks, bench, segment, neurons, collect, textspan, train-embedded."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Optional, Sequence

from vit_lens_clip.app.benchmarks.arguments import add_bench_arguments
from vit_lens_clip.app.config import (
    ReportConfig,
    add_collect_arguments,
    add_model_arguments,
    add_neurons_arguments,
    add_report_arguments,
    add_segment_arguments,
    add_textspan_arguments,
)
from vit_lens_clip.app.explore_options import add_explore_command
from vit_lens_clip.app.huge_pages import record_for_torch
from vit_lens_clip.app.preflight import check_arguments
from vit_lens_clip.embedded.arguments import DESCRIPTION as TRAIN_DESCRIPTION
from vit_lens_clip.embedded.arguments import add_train_arguments
from vit_lens_clip.errors import user_error_message

# The parser imports only the light options module above; each command imports its heavy modules (torch,
# open_clip) inside its handler, so ``vit-lens-clip --help`` and every ``<command> --help`` stay instant.


def _cmd_hooks(args: argparse.Namespace) -> None:
    """Print every hook point with the shape it carries for one image."""
    import torch

    from vit_lens_clip.convert.sources import check_text_tokenizer
    from vit_lens_clip.loading import load_clip
    from vit_lens_clip.model.config import ViTConfig
    from vit_lens_clip.model.hooked_vit import HookedViT

    if args.text:
        check_text_tokenizer(args.model, args.tokenizer)  # offline: a hub tokenizer not cached fails before the build
        text_model = load_clip(args.model, args.pretrained, device=args.device, precision=args.precision,
                               tokenizer=args.tokenizer).text_model
        _, cache = text_model.run_with_cache(text_model.to_tokens(["a photo of a cat"]))
        c = text_model.cfg
        print(f"{c.model_name}: {c.n_layers} layers, {c.n_heads} heads, d_model {c.d_model}, {c.n_ctx} tokens, "
              f"activation {c.act_fn}, pooled token {c.pool_type}, causal {c.causal}")
        for name, value in cache.items():
            print(f"  {name:48s} {tuple(value.shape)}")
        return
    if args.random:
        model = HookedViT(ViTConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, output_dim=32, image_size=32, patch_size=8))
    else:
        model = load_clip(args.model, args.pretrained, device=args.device, precision=args.precision,
                          tokenizer=args.tokenizer).model
    x = torch.randn(1, model.cfg.in_channels, *model.cfg.image_size, device=model.W_proj.device, dtype=model.W_proj.dtype)
    _, cache = model.run_with_cache(x)
    print(f"{model.cfg.model_name}: {model.cfg.n_layers} layers, {model.cfg.n_heads} heads, d_model {model.cfg.d_model}, "
          f"{model.cfg.n_ctx} tokens, activation {model.cfg.act_fn}, pooling {model.cfg.pool_type}")
    for name, value in cache.items():
        print(f"  {name:48s} {tuple(value.shape)}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from vit_lens_clip.app.bench import run_bench

    print(run_bench(args))


def _cmd_segment(args: argparse.Namespace) -> None:
    from vit_lens_clip.app.segment import run_segment_command

    run_segment_command(args)


def _cmd_report(args: argparse.Namespace) -> None:
    from vit_lens_clip.app.report import run_report

    run_report(ReportConfig.from_args(args), command_line=args.command_line)


def _cmd_collect(args: argparse.Namespace) -> None:
    from vit_lens_clip.app.collect import run_collect

    run_collect(args)


def _cmd_textspan(args: argparse.Namespace) -> None:
    from vit_lens_clip.app.collect import run_textspan_command

    run_textspan_command(args)


def _cmd_train(args: argparse.Namespace) -> None:
    from vit_lens_clip.embedded.train import train_from_args

    train_from_args(args)


def _cmd_neurons(args: argparse.Namespace) -> None:
    from vit_lens_clip.app.neurons import run_neurons_command
    from vit_lens_clip.convert.sources import check_text_tokenizer
    from vit_lens_clip.loading import load_clip

    check_text_tokenizer(args.model, args.tokenizer)
    run_neurons_command(args, load_clip(args.model, args.pretrained, device=args.device, precision=args.precision,
                                        tokenizer=args.tokenizer))


def _cmd_explore(args: argparse.Namespace) -> None:
    from vit_lens_clip.app.explore_serve import run_explore_command  # the static site, then the live mode if asked

    run_explore_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit-lens-clip", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error (any position)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("report", help="the whole analysis, written as an offline HTML report + JSON/CSV")
    add_model_arguments(p)
    add_report_arguments(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("hooks", help="list hook names and shapes")
    add_model_arguments(p)
    p.add_argument("--random", action="store_true", help="a tiny random ViT instead of loading a model")
    p.add_argument("--text", action="store_true", help="the text tower's hooks (for one short text)")
    p.set_defaults(func=_cmd_hooks)

    p = sub.add_parser("bench", help="CPU/wall time, peak memory and agreement, side by side in one run")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("segment", help="zero-shot segmentation: decomposition vs baselines, with metrics")
    add_segment_arguments(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("neurons", help="second-order neuron lens: selectivity, ablations, texts, segmentation")
    add_model_arguments(p)
    add_neurons_arguments(p)
    p.set_defaults(func=_cmd_neurons)

    p = sub.add_parser("collect", help="dataset-scale collection of parts into safetensors shards (torchrun-aware)")
    add_model_arguments(p)
    add_collect_arguments(p)
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("textspan", help="TextSpan of every kept head of a collection folder (heads split over ranks)")
    add_textspan_arguments(p)
    p.set_defaults(func=_cmd_textspan)

    add_explore_command(sub, _cmd_explore)

    p = sub.add_parser("train-embedded", help="train the embedded shapes CLIP (the trainer's own options)",
                       description=TRAIN_DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)
    return parser


# the operating system's answers to a write that are the user's to fix (a full disk, a read-only folder), not bugs
_RESOURCE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                    errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


def _resource_error(e: BaseException) -> Optional[str]:
    """One line for an OSError the user can fix (disk full, quota, read-only), naming the file; else None."""
    if isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS:
        where = f" writing {e.filename}" if e.filename else ""
        return f"{_RESOURCE_ERRNOS[e.errno]}{where}; free space or choose another --out, then rerun"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Expected failures print one line to stderr and return 2; bugs raise (``--debug``: everything raises)."""
    # What torch will read for transparent huge pages (left as the user set it: app/huge_pages.py), recorded
    # before any command imports torch
    record_for_torch()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    args.command_line = ["vit-lens-clip", *argv]  # recorded by the report's provenance
    try:
        check_arguments(args)  # every option, path, device and model name, before torch or open_clip is imported
        args.func(args)
    except Exception as e:
        message = None if debug else (user_error_message(e) or _resource_error(e))
        if message is None:
            raise
        print(f"vit-lens-clip {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
