"""A torchrun entry for tests/integration/test_distributed_collect.py: the ``collect`` command on a shapes dataset whose items
take ``--delay`` seconds each (so a test can kill a rank mid-run). Each rank writes its pid to OUT.pids/RANK (beside
OUT: collect refuses an output folder holding files it did not write)."""

import os
import sys
import time
from pathlib import Path

from vit_lens_clip.app.cli import build_parser
from vit_lens_clip.app.collect import run_collect
from vit_lens_clip.datasets.sources import ShapesItems
from vit_lens_clip.loading import load_clip


class SlowShapes(ShapesItems):
    def __init__(self, n, preprocess, delay):
        super().__init__(n, preprocess)
        self.delay = delay

    def __getitem__(self, i):
        time.sleep(self.delay)
        return super().__getitem__(i)


if __name__ == "__main__":
    delay = float(sys.argv[1])
    args = build_parser().parse_args(sys.argv[2:])
    pids = Path(str(args.out) + ".pids")
    pids.mkdir(parents=True, exist_ok=True)
    (pids / os.environ.get("RANK", "0")).write_text(str(os.getpid()))
    n = int(args.data.split(":")[1])
    preprocess = load_clip(args.model).preprocess
    run_collect(args, SlowShapes(n, preprocess, delay), fingerprint=f"shapes:n={n},seed={args.seed}")
