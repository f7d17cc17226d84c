"""Text heatmaps and joint head×patch maps on four images."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from vit_lens_clip.app.sections.base import ReportContext
from vit_lens_clip.datasets.folder import ImageFolder
from vit_lens_clip.datasets.shapes_adapters import ShapesSegmentation
from vit_lens_clip.methods.spatial.heatmaps import class_heatmap, joint_map, text_heatmap
from vit_lens_clip.viz.figures import overlay_grid

N_IMAGES = 4
TEXTS = ("an object", "the background")


class HeatmapSection:
    name, needs, uses, gives = "heatmaps", ("images",), ("tasks", "textspan_table"), ()
    skippable, grad = True, True

    def run(self, ctx: ReportContext) -> None:
        loaded, model, config = ctx.loaded, ctx.loaded.model, ctx.config
        if config.images:
            data = ImageFolder(config.images, loaded.preprocess)
            items = [data[i] for i in range(min(N_IMAGES, len(data)))]
            images = torch.stack([it["image"] for it in items if it.get("error") is None])
        else:
            data = ShapesSegmentation(N_IMAGES, loaded.preprocess, seed=config.seed + 99, include_original=False)
            images = torch.stack([data[i]["image"] for i in range(N_IMAGES)])
        images = images.to(loaded.device)
        tasks, textspan_table = ctx.values.tasks, ctx.values.textspan_table
        task = tasks[0] if tasks else None
        best = (sorted(textspan_table.rows.items(), key=lambda kv: -float(kv[1].variance_explained[0]))[:3]
                if textspan_table else [])
        for b in tqdm(range(images.shape[0]), desc="heatmaps (images)", disable=not ctx.progress):
            maps = {}
            x = images[b : b + 1]
            if task is not None:
                maps[f"predicted {task.name} (class − mean)"] = class_heatmap(model, x, task.classifier.to(loaded.device))[0]
            for text in TEXTS:
                maps[f"'{text}'"] = text_heatmap(model, x, loaded.encode_text([text]))[0, 0]
            for (layer, head), _ in best:
                text = textspan_table.texts((layer, head))[0]
                maps[f"L{layer}H{head}: '{text}'"] = joint_map(model, x, layer, head, loaded.encode_text([text]))[0]
            fig = overlay_grid(x[0].cpu(), {k: v.detach().cpu() for k, v in maps.items()}, cols=3,
                               preprocess=loaded.preprocess, title=f"image {b}: text heatmaps and joint head×patch maps")
            ctx.page.append((f"Heatmaps, image {b}", fig))
