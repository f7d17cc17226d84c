"""Zero-shot segmentation of synthetic scenes (exact masks): the decomposition against the baselines."""

from __future__ import annotations

import torch

from vit_lens_clip.app.sections.base import ReportContext
from vit_lens_clip.datasets.shapes_adapters import ShapesSegmentation, shapes_classes
from vit_lens_clip.methods.spatial.evaluate import METHOD_TITLES, evaluate_segmentation, segmentation_markdown
from vit_lens_clip.methods.zeroshot import build_classifier


class SegmentationSection:
    name, needs, uses, gives, skippable, grad = "segmentation", ("images",), (), ("segmentation_maps",), True, True

    def run(self, ctx: ReportContext) -> None:
        loaded, config = ctx.loaded, ctx.config
        names, templates = shapes_classes()
        classifier = build_classifier(loaded, names, templates)
        dataset = ShapesSegmentation(config.segmentation_images, loaded.preprocess, seed=config.seed + 1,
                                     include_original=False)
        keep: dict[str, list[torch.Tensor]] = {}
        results = evaluate_segmentation(loaded, dataset, classifier, batch_size=min(config.batch_size, 32),
                                        progress=ctx.progress, keep=keep)
        ctx.values.segmentation_maps = {"seed": config.seed + 1, "n": len(dataset), "labels": torch.cat(keep["labels"]),
                                        "decomposition": torch.cat(keep["decomposition"])}
        ctx.numbers["segmentation"] = results
        ctx.page.append(("Zero-shot segmentation (synthetic scenes, exact masks)", segmentation_markdown(results)))
        for method, metrics in results.items():
            for metric in ("pixel_accuracy", "miou", "mean_ap"):
                ctx.record("segmentation", f"{METHOD_TITLES.get(method, method)}.{metric}", metrics[metric])
