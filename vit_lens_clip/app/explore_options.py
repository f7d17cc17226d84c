"""The ``explore`` command's options (light: no torch, so ``vit-lens-clip --help`` stays instant)."""

from __future__ import annotations

import argparse
from typing import Any, Callable

__all__ = ["add_explore_arguments", "add_explore_command"]

EXPLORE_HELP = ("a static offline site to see every unit of a collection folder: heads, and the neurons, SAE features "
                "and hook units of collect --examples (examples, maps, texts, search); --serve adds a live mode")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1 to 65535, got {value}")
    return value


def add_explore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="DIR", help="a collection folder (collect --parts heads,embed,means ...)")
    p.add_argument("--out", required=True, help="folder of the site (index.html, heads/L{l}H{h}.html, neurons/, "
                                                "features/, units/, images/, img/)")
    p.add_argument("--examples", type=_positive, default=8, help="top dataset examples shown per unit")
    p.add_argument("--bottom", action="store_true", help="also show each head's bottom examples (lowest scores)")
    p.add_argument("--textspan-k", type=int, default=3, help="TextSpan descriptions per head (0: none)")
    p.add_argument("--pool", default="descriptions", help="text pool: descriptions, words, or a file of texts")
    p.add_argument("--search-images", type=int, default=1024,
                   help="up to this many images, the site carries every image's head contributions and a thumbnail, "
                        "and its search shows the found heads' top images along the query (0: never)")
    p.add_argument("--queries", default=None,
                   help="more texts the offline search knows besides the pool: a file (one a line) or 'a;b;c'")
    p.add_argument("--serve", type=_port, default=None, metavar="PORT", nargs="?", const=8765,
                   help="after building, serve the site on http://127.0.0.1:PORT (default 8765) with a live mode: "
                        "search by any text, and a unit's map of an image dropped on its page (Ctrl-C stops)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None, help="text-embedding cache folder")
    p.add_argument("--quiet", action="store_true")


def add_explore_command(sub: Any, handler: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
    """Register ``explore`` on the CLI's sub-parsers, running ``handler(args)``."""
    p = sub.add_parser("explore", help=EXPLORE_HELP, description=EXPLORE_HELP)
    add_explore_arguments(p)
    p.set_defaults(func=handler)
    return p
