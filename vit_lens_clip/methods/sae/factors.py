"""Which SAE features line up with the shapes world's known factors, measured against the scenes' labels.

    python -m vit_lens_clip.methods.sae.factors [--images 600] [--threshold 0.9]

For every feature that fires on the scenes, two image scores (its activation at the class token, and its
maximum over all tokens) are compared with each factor value's indicator (colour = red, shape = star,
position = top left (single-object scenes), place = water, count = three, size = large) by AUROC; a feature
is "aligned" with the value of highest AUROC when that AUROC ≥ the threshold. Prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Sequence

import torch

from vit_lens_clip.datasets.shapes_world import (
    ATTRIBUTES,
    Scene,
    label_of,
    zero_shot_labels,
)
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.sae import explain
from vit_lens_clip.methods.sae.sae import SparseAutoencoder
from vit_lens_clip.methods.sae.shipped import load_shipped_sae
from vit_lens_clip.methods.sae.train import EVAL_SEED, images_of, scenes


def factor_summary(acts: torch.Tensor, scene_list: Sequence[Scene], threshold: float = 0.9) -> dict:
    """Per alive feature, its best (attribute, value, AUROC, score); and counts of aligned features per attribute."""
    labels = {a: [label_of(s.attributes, a) for s in scene_list] for a in ATTRIBUTES}
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


def markdown(summary: dict) -> str:
    lines = [f"{summary['n_aligned']} of {summary['n_alive']} live features have AUROC ≥ {summary['threshold']} "
             "for one factor value.", "", "| factor | aligned features | values with an aligned feature |",
             "|---|---|---|"]
    for a in ATTRIBUTES:
        covered = summary["values_covered"][a]
        lines.append(f"| {a} | {summary['per_attribute'].get(a, 0)} | {len(covered)} of {summary['n_values'][a]}"
                     f"{': ' + ', '.join(covered) if covered else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Align the shipped SAE's features with the shapes world's factors.")
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--json", default=None, help="also write the full summary here")
    args = p.parse_args(argv)
    loaded = load_clip("vit-lens-clip/shapes")
    sae: SparseAutoencoder = load_shipped_sae()
    scene_list = scenes(args.images, EVAL_SEED + 1)
    acts = explain.feature_activations(loaded.model, sae, images_of(loaded, scene_list), progress=True)
    summary = factor_summary(acts, scene_list, args.threshold)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(markdown(summary))


if __name__ == "__main__":
    main()
