"""Text heatmaps and joint head×patch maps on four images, each titled with its predicted and true class."""

from __future__ import annotations

from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from vit_lens_clip.app.sections.base import ReportContext, Task
from vit_lens_clip.datasets.shapes_adapters import ShapesSegmentation
from vit_lens_clip.methods.spatial.heatmaps import class_heatmap, joint_map, text_heatmap
from vit_lens_clip.methods.zeroshot import logits
from vit_lens_clip.viz.figures import overlay_grid

N_IMAGES = 4
TEXTS = ("an object", "the background")


def true_class(item: dict[str, Any], task: Optional[Task]) -> str:
    """The item's class name in ``task``: a shapes scene's shape, or a labelled image's class ("unlabelled")."""
    if task is None:
        return "no task"
    if task.name == "shape" and item.get("shape"):
        return str(item["shape"])
    label = item.get("label")
    return task.classnames[int(label)] if label is not None and 0 <= int(label) < len(task.classnames) else "unlabelled"


class HeatmapSection:
    name, needs, uses, gives = "heatmaps", ("images",), ("dataset", "tasks", "textspan_table"), ()
    skippable, grad = True, True

    def run(self, ctx: ReportContext) -> None:
        loaded, model, config = ctx.loaded, ctx.loaded.model, ctx.config
        if config.images:  # the report's own images (labelled by their class folders, if any)
            data = ctx.values.dataset
            items = [data[i] for i in range(min(N_IMAGES, len(data)))]
        else:
            data = ShapesSegmentation(N_IMAGES, loaded.preprocess, seed=config.seed + 99, include_original=False)
            items = [data[i] for i in range(N_IMAGES)]
        items = [it for it in items if it.get("error") is None]
        images = torch.stack([it["image"] for it in items]).to(loaded.device)
        tasks, textspan_table = ctx.values.tasks, ctx.values.textspan_table
        task = tasks[0] if tasks else None
        best = (sorted(textspan_table.rows.items(), key=lambda kv: -float(kv[1].variance_explained[0]))[:3]
                if textspan_table else [])
        for b in tqdm(range(images.shape[0]), desc="heatmaps (images)", disable=not ctx.progress):
            maps, classes = {}, ""
            x = images[b : b + 1]
            if task is not None:
                classifier = task.classifier.to(loaded.device)
                with torch.no_grad():
                    predicted = task.classnames[int(logits(model(x), classifier).argmax(-1))]
                classes = f" ({task.name}: predicted {predicted}, true {true_class(items[b], task)})"
                maps[f"predicted {task.name} (class − mean)"] = class_heatmap(model, x, classifier)[0]
            for text in TEXTS:
                maps[f"'{text}'"] = text_heatmap(model, x, loaded.encode_text([text]))[0, 0]
            for (layer, head), _ in best:
                text = textspan_table.texts((layer, head))[0]
                maps[f"L{layer}H{head}: '{text}'"] = joint_map(model, x, layer, head, loaded.encode_text([text]))[0]
            fig = overlay_grid(x[0].cpu(), {k: v.detach().cpu() for k, v in maps.items()}, cols=3,
                               preprocess=loaded.preprocess,
                               title=f"image {b}{classes}: text heatmaps and joint head×patch maps")
            ctx.page.append((f"Heatmaps, image {b}{classes}", fig))
