"""``vit-lens-clip segment``: zero-shot segmentation of one dataset by every map method, written as CSV,
Markdown and HTML.

The library side (maps, metrics, the evaluation loop) is ``vit_lens_clip.methods.spatial``; this module only
turns command-line words into a dataset, class texts and a call.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional, Sequence

import open_clip

from vit_lens_clip.app.preflight import check_out_folder
from vit_lens_clip.app.run_folder import replace_files
from vit_lens_clip.datasets.segmentation import ImageNetSegmentation, MaskFolder
from vit_lens_clip.datasets.shapes_adapters import ShapesSegmentation, shapes_classes
from vit_lens_clip.decompose.folder_lock import FolderLock
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.spatial.evaluate import (
    evaluate_segmentation,
    segmentation_examples,
    segmentation_markdown,
    write_segmentation_report,
)
from vit_lens_clip.methods.zeroshot import build_classifier
from vit_lens_clip.validation import check_output_folder


def _dataset_from_args(kind_and_path: Sequence[str], preprocess: Callable, image_size: int, limit: Optional[int]):
    kind, rest = kind_and_path[0], list(kind_and_path[1:])
    if kind == "shapes":
        if rest:
            raise ValueError("--dataset shapes takes no path")
        return ShapesSegmentation(limit or 200, preprocess, image_size=max(64, image_size))
    if kind not in ("imagenet-seg", "folder") or len(rest) != 1:
        raise ValueError("--dataset must be 'shapes', 'imagenet-seg PATH' or 'folder PATH'")
    if kind == "imagenet-seg":
        return ImageNetSegmentation(rest[0], preprocess)
    return MaskFolder(rest[0], preprocess)


def _classes_from_args(args: argparse.Namespace) -> tuple[list[str], list]:
    if args.dataset[0] == "shapes" and args.classes is None:
        return shapes_classes()
    if args.classes is not None:
        names = [line.strip() for line in Path(args.classes).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise ValueError(f"no class names in {args.classes}")
    else:
        names = list(open_clip.IMAGENET_CLASSNAMES)
    templates = open_clip.OPENAI_IMAGENET_TEMPLATES if args.templates == "openai" else open_clip.SIMPLE_IMAGENET_TEMPLATES
    return names, list(templates)


def run_segment_command(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Load the model, score every method, write CSV / Markdown / HTML to ``args.out``."""
    check_out_folder(args.out)  # usable, but created only once the model, the dataset and the classes are
    loaded = load_clip(args.model, pretrained=args.pretrained, device=args.device,
                       tokenizer=getattr(args, "tokenizer", None))
    image_size = loaded.model.cfg.image_size[0]
    dataset = _dataset_from_args(args.dataset, loaded.preprocess, image_size, args.limit)
    skipped = [(str(name), str(reason)) for name, reason in getattr(dataset, "skipped", [])]  # (file, reason)
    if skipped:
        print(f"skipped {len(skipped)} input(s) (listed in segmentation_skipped.csv): "
              + "; ".join(f"{n} ({r})" for n, r in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    classnames, templates = _classes_from_args(args)
    check_output_folder(args.out)  # the inputs are good: now the folder may be created
    out = Path(args.out)
    with FolderLock(out, "--out"):  # one writer; files put in place by renames, never written through a symlink
        classifier = build_classifier(loaded, classnames, templates)
        results = evaluate_segmentation(loaded, dataset, classifier, methods=args.methods, batch_size=args.batch_size,
                                        limit=args.limit, frame=args.frame)
        examples = segmentation_examples(loaded, dataset, classifier, methods=args.methods,
                                         n_examples=max(0, args.examples), frame=args.frame) if args.examples > 0 else []
        title = f"Zero-shot segmentation: {loaded.name} on {' '.join(args.dataset)}"
        paths = replace_files(out, lambda folder: write_segmentation_report(results, examples, folder, title=title,
                                                                            skipped=skipped))
    print(segmentation_markdown(results, title="Zero-shot segmentation"))
    print("wrote " + ", ".join(str(p) for p in paths))
    return results
