"""The GPU check of the per-batch path: any host-device synchronisation raises.

    python -m vit_lens_clip.app.benchmarks.host_syncs [--arch ViT-B-16] [--batches 4] [--batch-size 8]

Under ``torch.cuda.set_sync_debug_mode("error")``, on a random open_clip model (biases and LayerNorms perturbed):
forwards inside ``validation.deferred_checks()``, decompositions (the hooked pass and ``DecompositionCapture.finish``
with text scores and ``normalize=True``), and every batch of a collection (``reducers.run_step``: forward,
decomposition, ShardWriter, MeanReducer, StackReducer, TextScoreReducer). Only the per-batch region runs under
"error": what a run reads on purpose (after the first batch, at checkpoints, at the end) stays outside. Each
section first runs once unchecked (CUDA's lazy initialisation). Exit status 0 and one line per section when
nothing synchronised; the error names the synchronising call otherwise. The CPU counterpart, which counts host
reads: tests/integration/test_host_syncs.py.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from vit_lens_clip.app.benchmarks.suites import perturbed_open_clip
from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.decompose import reducers
from vit_lens_clip.decompose.parts import DecompositionCapture
from vit_lens_clip.decompose.reducers import MeanReducer, StackReducer, TextScoreReducer, run_reducers
from vit_lens_clip.decompose.store_writer import ShardWriter
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.validation import deferred_checks


@contextlib.contextmanager
def syncs_raise() -> Iterator[None]:
    """Inside, any CUDA synchronisation raises (``torch.cuda.set_sync_debug_mode("error")``)."""
    torch.cuda.synchronize()
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def check_forward(model: HookedViT, batches: list[torch.Tensor]) -> str:
    with torch.no_grad(), deferred_checks():
        model(batches[0])
        with syncs_raise():
            for x in batches:
                model(x)
    return f"forward: {len(batches)} batches, no synchronisation"


def check_decomposition(model: HookedViT, batches: list[torch.Tensor], texts: torch.Tensor) -> str:
    capture = DecompositionCapture(model, texts=texts, normalize=True)  # the texts are checked here, once
    with torch.no_grad(), deferred_checks():
        model.run_with_hooks(batches[0], fwd_hooks=capture.hooks())
        capture.finish()
        with syncs_raise():
            for x in batches:
                model.run_with_hooks(x, fwd_hooks=capture.hooks())
                capture.finish()
    return f"decomposition (text scores, normalize=True): {len(batches)} batches, no synchronisation"


def check_collection(model: HookedViT, images: torch.Tensor, batch_size: int, texts: torch.Tensor) -> str:
    """run_reducers as ``collect`` runs it, each batch's ``run_step`` under "error"."""
    step, steps = reducers.run_step, []

    def checked_step(*args, **kwargs):
        with syncs_raise():
            step(*args, **kwargs)
        steps.append(1)

    reducers.run_step = checked_step
    try:
        with tempfile.TemporaryDirectory() as tmp:
            writer = ShardWriter(Path(tmp) / "parts", ("heads", "embed", "scores"), shard_size=10**9)
            run = [writer, MeanReducer(), StackReducer(), TextScoreReducer(texts)]
            run_reducers(model, TensorImages(images), run, batch_size=batch_size, texts=texts, normalize=True,
                         checkpoint_dir=Path(tmp) / "checkpoint", checkpoint_every=2, pin_memory=torch.cuda.is_available(),
                         progress=False, device=texts.device)
            writer.result()
    finally:
        reducers.run_step = step
    return f"collection (shards, means, stacks, text scores; checkpoints every 2): {len(steps)} batches, no synchronisation"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (random weights)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("host_syncs needs a CUDA device (the CPU check is tests/integration/test_host_syncs.py)")
    device = torch.device("cuda")
    model = HookedViT.from_open_clip(perturbed_open_clip(args.arch, torch.device("cpu"))).to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batches * args.batch_size, 3, *model.cfg.image_size, generator=g)
    batches = [b.to(device) for b in images.split(args.batch_size)]
    texts = F.normalize(torch.randn(7, model.cfg.output_dim, generator=g), dim=-1).to(device)
    print(f"{args.arch} on {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print(check_forward(model, batches))
    print(check_decomposition(model, batches, texts))
    print(check_collection(model, images, args.batch_size, texts))


if __name__ == "__main__":
    main()
