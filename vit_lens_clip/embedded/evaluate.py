"""Measured zero-shot accuracy of a CLIP on the shapes world, and the spurious-cue (birds) baseline.

    python -m vit_lens_clip.embedded.evaluate [--model-dir DIR] [--n 1000] [--seed 12345]

Zero-shot: for each attribute the class prompts of ``zero_shot_labels`` are embedded and averaged with
open_clip's ``build_zero_shot_classifier``; an image is assigned argmax_c <f_img, w_c>. Scenes are drawn from
a fresh seeded stream never used in training. Position is scored on single-object shape scenes only, shape on
shape scenes. Count-aware accuracy (colour, shape, place, size) classifies (value, count) pairs worded as the
captions word them ('two red circles') and keeps the value; see ``count_aware_labels``. Spurious cue: landbird
vs waterbird on a set balanced over the four (bird, place group) groups;
we report per-group accuracy, the average over groups and the worst group.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from vit_lens_clip.datasets.shapes_world import (
    ATTRIBUTES,
    BIRDS,
    COUNT_AWARE_ATTRIBUTES,
    PLACE_GROUPS,
    Scene,
    ShapesWorld,
    count_aware_labels,
    label_of,
    zero_shot_labels,
)
from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR
from vit_lens_clip.embedded.config import PREPROCESS_CFG

HELD_OUT_SEED = 12345
SPURIOUS_SEED = 54321


def load_model(model_dir: str | Path | None = None, device: str = "cpu"):
    """(model, preprocess, tokenizer) from an open_clip local-dir folder (the embedded model by default)."""
    if model_dir is None:
        model_dir = EMBEDDED_MODEL_DIR
    name = "local-dir:" + str(model_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


def held_out_scenes(n: int, seed: int = HELD_OUT_SEED, image_size: int = 64) -> list[Scene]:
    """``n`` i.i.d. shape scenes from a seeded stream disjoint from the training stream."""
    world = ShapesWorld(image_size=image_size, seed=seed)
    rng = np.random.default_rng([seed, 2_000_003])
    return [world.sample(rng) for _ in range(n)]


def spurious_eval_scenes(n_per_group: int, seed: int = SPURIOUS_SEED, image_size: int = 64,
                         bird_size: str | None = None) -> list[Scene]:
    """Bird scenes balanced over the four groups (group = 2 * bird_index + place_group_index)."""
    world = ShapesWorld(image_size=image_size, seed=seed)
    rng = np.random.default_rng([seed, 3_000_017])
    return [world.sample_bird(rng, "eval", g, bird_size) for g in range(4) for _ in range(n_per_group)]


@torch.no_grad()
def encode_images(
    model,
    preprocess: Callable[[Image.Image], Tensor],
    images: Sequence[np.ndarray],
    batch_size: int = 250,
    device: str = "cpu",
) -> Float[Tensor, "n d"]:
    """L2-normalised image embeddings, computed through ``preprocess`` on PIL images."""
    feats = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([preprocess(Image.fromarray(im)) for im in images[i:i + batch_size]]).to(device)
        feats.append(model.encode_image(x, normalize=True).float().cpu())
    return torch.cat(feats)


def zero_shot_accuracy(
    model,
    tokenizer,
    image_features: Float[Tensor, "n d"],
    labels: Sequence[int],
    attribute: str,
    device: str = "cpu",
    count_aware: bool = False,
) -> float:
    """Fraction of images whose argmax over the zero-shot class embeddings of ``attribute`` equals the label.

    ``count_aware``: classify over (value, count) pairs worded with the count's grammatical number and keep
    the value (``count_aware_labels``)."""
    if len(labels) != image_features.shape[0]:
        raise ValueError(f"{len(labels)} labels for {image_features.shape[0]} images")
    values, templates = zero_shot_labels(attribute)
    classnames: Sequence = values
    if count_aware:
        classnames, templates = count_aware_labels(attribute)
    weights = open_clip.build_zero_shot_classifier(model, tokenizer, classnames, templates, device=device)
    pred = (image_features.to(device) @ weights.float()).argmax(dim=1).cpu()
    if count_aware:  # a (value, count) pair's index -> the value's index
        pred = torch.tensor([values.index(value) for value, _ in classnames])[pred]
    return float((pred == torch.as_tensor(labels)).float().mean())


def evaluate_attributes(
    model, preprocess, tokenizer, n: int = 1000, seed: int = HELD_OUT_SEED, device: str = "cpu",
    attributes: Sequence[str] = ATTRIBUTES, count_aware: bool = True,
) -> dict[str, float]:
    """Zero-shot accuracy per attribute on ``n`` held-out scenes (plus ``chance/<attr>`` and ``n/<attr>``).

    With ``count_aware`` the count-aware accuracy of the attributes that have one is added as
    ``count-aware/<attr>``."""
    scenes = held_out_scenes(n, seed)
    feats = encode_images(model, preprocess, [s.image for s in scenes], device=device)
    results: dict[str, float] = {}
    for attribute in attributes:
        idx = [i for i, s in enumerate(scenes) if label_of(s.attributes, attribute) is not None]
        labels = [label_of(scenes[i].attributes, attribute) for i in idx]
        results[attribute] = zero_shot_accuracy(model, tokenizer, feats[idx], labels, attribute, device)
        results[f"chance/{attribute}"] = 1.0 / len(zero_shot_labels(attribute)[0])
        results[f"n/{attribute}"] = len(idx)
        if count_aware and attribute in COUNT_AWARE_ATTRIBUTES:
            results[f"count-aware/{attribute}"] = zero_shot_accuracy(
                model, tokenizer, feats[idx], labels, attribute, device, count_aware=True)
    return results


def evaluate_spurious(
    model, preprocess, tokenizer, n_per_group: int = 250, seed: int = SPURIOUS_SEED, device: str = "cpu",
    bird_size: str | None = None,
) -> dict[str, float]:
    """Landbird-vs-waterbird zero-shot accuracy per (bird, place group) group, average and worst group.

    Birds are drawn at the training size by default (``None``); ``'large'`` is a shifted, easier set."""
    scenes = spurious_eval_scenes(n_per_group, seed, bird_size=bird_size)
    feats = encode_images(model, preprocess, [s.image for s in scenes], device=device)
    classnames, templates = zero_shot_labels("bird")
    weights = open_clip.build_zero_shot_classifier(model, tokenizer, classnames, templates, device=device)
    pred = (feats.to(device) @ weights.float()).argmax(dim=1).cpu().numpy()
    labels = np.array([label_of(s.attributes, "bird") for s in scenes])
    groups = np.array([s.attributes.group for s in scenes])
    results: dict[str, float] = {}
    accs = []
    for g in range(4):
        acc = float((pred[groups == g] == labels[groups == g]).mean())
        results[f"group/{BIRDS[g // 2]} on {PLACE_GROUPS[g % 2]}"] = acc
        accs.append(acc)
    results["average"] = float(np.mean(accs))
    results["worst_group"] = float(np.min(accs))
    return results


def markdown_table(attributes: dict[str, float], spurious: dict[str, float] | None = None) -> str:
    """Markdown tables of zero-shot accuracy (with chance and n) and, optionally, the spurious baseline."""
    lines = ["| attribute | zero-shot accuracy | count-aware | chance | n |", "|---|---|---|---|---|"]
    for a in [k for k in attributes if "/" not in k]:
        aware = attributes.get(f"count-aware/{a}")
        lines.append(f"| {a} | {100 * attributes[a]:.1f}% | {'-' if aware is None else f'{100 * aware:.1f}%'} | "
                     f"{100 * attributes[f'chance/{a}']:.1f}% | {int(attributes[f'n/{a}'])} |")
    if spurious:
        lines += ["", "| landbird vs waterbird | accuracy |", "|---|---|"]
        lines += [f"| {k.removeprefix('group/')} | {100 * v:.1f}% |" for k, v in spurious.items()]
    return "\n".join(lines)


def quick_report(model, tokenizer, n: int = 300, device: str = "cpu") -> str:
    """One-line zero-shot summary used to monitor training (smaller held-out set, eval preprocessing)."""
    preprocess = open_clip.image_transform(PREPROCESS_CFG["size"], is_train=False, mean=PREPROCESS_CFG["mean"],
                                           std=PREPROCESS_CFG["std"])
    res = evaluate_attributes(model, preprocess, tokenizer, n=n, device=device)
    sp = evaluate_spurious(model, preprocess, tokenizer, n_per_group=50, device=device)
    parts = [f"{a} {100 * res[a]:.0f}" for a in ATTRIBUTES]
    parts.append(f"count-aware shape {100 * res['count-aware/shape']:.0f}")
    parts.append(f"birds avg {100 * sp['average']:.0f} worst {100 * sp['worst_group']:.0f}")
    return "zero-shot: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n-per-group", type=int, default=250)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, preprocess, tokenizer = load_model(args.model_dir, args.device)
    attrs = evaluate_attributes(model, preprocess, tokenizer, args.n, args.seed, args.device)
    spurious = evaluate_spurious(model, preprocess, tokenizer, args.n_per_group, device=args.device)
    print(markdown_table(attrs, spurious))


if __name__ == "__main__":
    main()
