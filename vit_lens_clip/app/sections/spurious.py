"""The spurious-cue table (landbird vs waterbird) and which parts carry the place and which the bird."""

from __future__ import annotations

from vit_lens_clip.app.sections.base import ReportContext
from vit_lens_clip.datasets.shapes_adapters import (
    SHAPES_PLACE_QUERIES,
    shapes_bird_classes,
    shapes_eval_set,
    shapes_group_names,
)
from vit_lens_clip.datasets.shapes_world import TRAIN_BIRD_SIZE
from vit_lens_clip.methods.spurious import SpuriousConfig, dataset_cue_and_class_effects, effects_markdown, run_spurious
from vit_lens_clip.viz.figures import bar_table


class SpuriousSection:
    name, needs, uses, gives = "spurious", ("pool", "pool_emb", "images"), (), ()
    skippable, grad = True, True

    def run(self, ctx: ReportContext) -> None:
        config, loaded = ctx.config, ctx.loaded
        bird_size = config.spurious_bird_size or TRAIN_BIRD_SIZE
        queries = list(config.spurious_queries or SHAPES_PLACE_QUERIES)
        dataset = shapes_eval_set(loaded.preprocess, config.spurious_images, config.seed + 2, bird_size)
        classnames, templates = shapes_bird_classes()
        settings = SpuriousConfig(classnames=classnames, templates=templates, group_names=shapes_group_names(),
                                  pool=ctx.values.pool, k=config.k, last_n_layers=config.last_layers,
                                  batch_size=config.batch_size, queries=queries, progress=ctx.progress)
        table = run_spurious(loaded, dataset, settings, pool_embeddings=ctx.values.pool_emb)
        data = table.to_dict()
        data["queries"] = list(queries)
        ctx.numbers["spurious"] = data
        ctx.page.append((f"Spurious cue: landbird vs waterbird ({bird_size} birds; role heads picked by "
                         f"{', '.join(repr(q) for q in queries)})", table.to_markdown()))
        rows = {r["setting"]: {"average": r["average"], "worst_group": r["worst_group"]} for r in data["rows"]}
        ctx.page.append(("Spurious cue: accuracy per setting", bar_table(rows)))
        n_layers = loaded.model.cfg.n_layers
        effects = dataset_cue_and_class_effects(loaded, dataset, table.classifier, batch_size=config.batch_size,
                                                layers=list(range(max(0, n_layers - config.last_layers), n_layers)),
                                                progress=ctx.progress)
        data["effects"] = [{"part": e.component, "cue": e.cue, "class": e.label} for e in effects]
        ctx.page.append(("Spurious cue: which parts carry the place and which the bird (shifts of the "
                         "waterbird−landbird cosine margin; top 8 by place effect)", effects_markdown(effects, top=8)))
        for setting, row in rows.items():
            for metric, value in row.items():
                ctx.record("spurious", f"{setting}.{metric}", value)
