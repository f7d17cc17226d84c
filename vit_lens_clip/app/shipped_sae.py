"""The embedded model's shipped SAE on the shapes world: retrain it, and measure which of its features line up
with the world's factors. Two scripts (the methods they call hold no synthetic data):

    python -m vit_lens_clip.app.shipped_sae train --out DIR [--hook ...] [--d-sae 1024] [--k 16] ...
    python -m vit_lens_clip.app.shipped_sae factors [--images 600] [--threshold 0.9]

``factors``: for every feature that fires on the scenes, two image scores (its activation at the class token,
and its maximum over all tokens) are compared with each factor value's indicator (colour = red, shape = star,
position = top left (single-object scenes), place = water, count = three, size = large) by AUROC; a feature
is "aligned" with the value of highest AUROC when that AUROC ≥ the threshold. Prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.datasets.shapes_adapters import sample_scenes, scene_images
from vit_lens_clip.datasets.shapes_world import ATTRIBUTES, Scene, label_of, zero_shot_labels
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.sae import explain
from vit_lens_clip.methods.sae.formats import save_sae_lens
from vit_lens_clip.methods.sae.shipped import load_shipped_sae
from vit_lens_clip.methods.sae.train import (
    collect_activations,
    reconstruction_figures,
    train_topk_sae,
    zero_shot_with_sae,
)

TRAIN_SEED = 2026  # the scenes the shipped SAE was trained on
EVAL_SEED = 12345  # held-out scenes for its figures (factors: EVAL_SEED + 1)


def attribute_labels(scenes: Sequence[Scene], attributes: Sequence[str] = ATTRIBUTES) -> dict[str, list[int | None]]:
    """Per attribute, each scene's class index in ``zero_shot_labels(attribute)`` (None where undefined)."""
    return {a: [label_of(s.attributes, a) for s in scenes] for a in attributes}


def factor_summary(acts: Float[Tensor, "n pos d_sae"], scenes: Sequence[Scene], threshold: float = 0.9) -> dict:
    """Per alive feature, its best (attribute, value, AUROC, score); and counts of aligned features per attribute."""
    labels = attribute_labels(scenes)
    names = {a: zero_shot_labels(a)[0] for a in ATTRIBUTES}
    alive = [int(j) for j in torch.nonzero(acts.amax((0, 1)) > 0).flatten()]
    best = []
    for how in ("cls", "max"):
        rows = explain.factor_alignment(explain.image_scores(acts[..., alive], how), labels, names)
        best.append([{**r, "feature": alive[i], "score": how} for i, r in enumerate(rows)])
    per_feature = [max(a, b, key=lambda r: r["auroc"]) for a, b in zip(*best)]
    aligned = [r for r in per_feature if r["auroc"] >= threshold]
    values = Counter((r["attribute"], r["value"]) for r in aligned)
    return {"n_alive": len(alive), "n_aligned": len(aligned), "threshold": threshold,
            "per_attribute": dict(Counter(r["attribute"] for r in aligned)),
            "values_covered": {a: sorted({v for (att, v) in values if att == a}) for a in ATTRIBUTES},
            "n_values": {a: len(names[a]) for a in ATTRIBUTES},
            "per_feature": per_feature}


def factor_markdown(summary: dict) -> str:
    """``factor_summary`` as a Markdown table, one row per factor."""
    lines = [f"{summary['n_aligned']} of {summary['n_alive']} live features have AUROC ≥ {summary['threshold']} "
             "for one factor value.", "", "| factor | aligned features | values with an aligned feature |",
             "|---|---|---|"]
    for a in ATTRIBUTES:
        covered = summary["values_covered"][a]
        lines.append(f"| {a} | {summary['per_attribute'].get(a, 0)} | {len(covered)} of {summary['n_values'][a]}"
                     f"{': ' + ', '.join(covered) if covered else ''} |")
    return "\n".join(lines)


def train(args: argparse.Namespace) -> None:
    """Train a TopK SAE on the shapes world's scenes and save it (SAELens format) with its figures.json."""
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    loaded = load_clip(args.model)
    train_images = scene_images(loaded.preprocess, sample_scenes(args.images, TRAIN_SEED))
    acts = collect_activations(loaded.model, train_images, args.hook).flatten(0, 1)
    sae, losses = train_topk_sae(acts, args.hook, args.d_sae, args.k, args.steps, args.batch_size, args.lr, args.seed)
    del acts
    eval_scenes = sample_scenes(args.eval_images, EVAL_SEED)
    eval_images = scene_images(loaded.preprocess, eval_scenes)
    figures = reconstruction_figures(sae, collect_activations(loaded.model, eval_images, args.hook).flatten(0, 1))
    classes = {a: zero_shot_labels(a) for a in ATTRIBUTES}
    figures["zero_shot"] = zero_shot_with_sae(loaded, sae, eval_images, attribute_labels(eval_scenes), classes)
    figures["train_seconds"] = round(time.perf_counter() - t0, 1)
    figures["final_train_nmse"] = float(np.mean(losses[-50:]))
    settings = {k: v for k, v in vars(args).items() if k not in ("action", "run")}
    figures["command"] = "python -m vit_lens_clip.app.shipped_sae train " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    out = save_sae_lens(sae, args.out, {"model_name": args.model, "trained_by": "vit_lens_clip.app.shipped_sae",
                                        "train_images": args.images, "train_seed": TRAIN_SEED, "steps": args.steps})
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def factors(args: argparse.Namespace) -> None:
    """Print (and with --json, save) which shipped-SAE features line up with the world's factor values."""
    loaded = load_clip("vit-lens-clip/shapes")
    scenes = sample_scenes(args.images, EVAL_SEED + 1)
    acts = explain.feature_activations(loaded.model, load_shipped_sae(), scene_images(loaded.preprocess, scenes),
                                       progress=True)
    summary = factor_summary(acts, scenes, args.threshold)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(factor_markdown(summary))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The embedded model's shipped SAE on the shapes world.")
    actions = parser.add_subparsers(dest="action", required=True)
    p = actions.add_parser("train", help="train a TopK SAE on one hook of the embedded shapes model")
    p.add_argument("--model", default="vit-lens-clip/shapes")
    p.add_argument("--hook", default="blocks.4.hook_resid_post")
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--images", type=int, default=4000, help="training scenes (all token positions are used)")
    p.add_argument("--eval-images", type=int, default=1000, help="held-out scenes for the figures")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (SAELens format + figures.json)")
    p.set_defaults(run=train)
    f = actions.add_parser("factors", help="align the shipped SAE's features with the shapes world's factors")
    f.add_argument("--images", type=int, default=600)
    f.add_argument("--threshold", type=float, default=0.9)
    f.add_argument("--json", default=None, help="also write the full summary here")
    f.set_defaults(run=factors)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
