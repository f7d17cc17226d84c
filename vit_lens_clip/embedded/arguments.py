"""The trainer's command-line options, shared by ``python -m vit_lens_clip.embedded.train`` and
``vit-lens-clip train-embedded``.

Light on purpose (argparse and pathlib only): the CLI builds its parser from this module, so
``vit-lens-clip train-embedded --help`` imports no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vit_lens_clip.options import check_ranges

DESCRIPTION = "Train the embedded default model: a small open_clip CLIP on the synthetic shapes world."

# the numeric options' ranges (both command lines check them before any work; app/preflight.py reads them too)
TRAIN_MINIMUM: dict[str, float] = {"steps": 1, "seed": 0, "batch_size": 1, "warmup": 0, "threads": 1, "log_every": 1,
                                   "checkpoint_every": 1, "eval_every": 0, "group_size": 1, "stop_at": 0}
TRAIN_POSITIVE = ("lr", "max_minutes", "pos_init_scale")
TRAIN_FRACTIONS = ("bird_fraction", "sweep_fraction")


def check_train_numbers(args: argparse.Namespace) -> None:
    """Every numeric option of the trainer in its range (one-line ``BadInputError``)."""
    check_ranges(args, TRAIN_MINIMUM, TRAIN_POSITIVE, TRAIN_FRACTIONS)


def parse_weights(text: str) -> dict[str, float]:
    """'position=0.4,shape=0.4' -> {'position': 0.4, 'shape': 0.4}."""
    try:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected name=weight pairs separated by commas, got {text!r}") from err


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every option of the trainer (``embedded.train.train_from_args`` reads them)."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, then the exported local-dir model)")
    parser.add_argument("--steps", type=int, default=3400, help="schedule length")
    parser.add_argument("--seed", type=int, default=0, help="model init and batch stream seed")
    parser.add_argument("--batch-size", type=int, default=128, help="scenes per batch")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices")
    parser.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--log-every", type=int, default=50, help="steps between log lines")
    parser.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints")
    parser.add_argument("--eval-every", type=int, default=0, help="steps between zero-shot summaries (0 = never)")
    parser.add_argument("--group-size", type=int, default=4, help="scenes per hard-negative group or sweep")
    parser.add_argument("--bird-fraction", type=float, default=0.2, help="share of spurious-cue bird scenes per batch")
    parser.add_argument("--sweep-fraction", type=float, default=0.6, help="share of groups that are sweeps")
    parser.add_argument("--no-sincos-init", action="store_true", help="plain random positional embedding init")
    parser.add_argument("--sweep-weights", type=parse_weights, default=None,
                        help="sweep attribute mix, e.g. position=0.6,shape=0.3,count=0.1 (None: the shapes world's "
                             "SWEEP_WEIGHTS, the shipped mix)")
    parser.add_argument("--pos-init-scale", type=float, default=1.0,
                        help="std of the sine-cosine positional start, in units of open_clip's width^-1/2")
    parser.add_argument("--stop-at", type=int, default=None, help="checkpoint and exit after this step")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock safety net (stops early)")
    return parser


def build_train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The trainer's own parser (``python -m vit_lens_clip.embedded.train``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_train_arguments(parser)
