"""TextSpan for the heads of the last layers, and which heads span a few query texts."""

from __future__ import annotations

import json

import torch

from vit_lens_clip.app.sections.base import ReportContext
from vit_lens_clip.methods.textspan import embed_texts_cached, load_pool
from vit_lens_clip.methods.textspan.runs import TextSpanTable, heads_for_queries
from vit_lens_clip.viz.figures import layer_head_grid
from vit_lens_clip.viz.pages import textspan_cards


class TextSpanSection:
    name, needs, uses, gives = "textspan", ("contributions",), (), ("textspan_table", "pool", "pool_emb")
    skippable, grad = True, False

    def run(self, ctx: ReportContext) -> None:
        config, contributions = ctx.config, ctx.values.contributions
        pool = load_pool(config.texts)
        pool_emb = embed_texts_cached(pool, ctx.loaded.encode_text, ctx.loaded.key, progress=not config.quiet)
        table = TextSpanTable.compute(contributions, pool_emb, pool, k=config.k,
                                      title=f"TextSpan ({config.texts}, k={config.k})")
        table.write(ctx.out, "textspan")  # textspan.json, .md and .html beside the report
        total = torch.zeros(len(contributions.layers), contributions.n_heads)
        hover = {}
        for (layer, head), row in table.rows.items():
            i = contributions.layers.index(layer)
            total[i, head] = float(row.variance_explained.sum())
            hover[(i, head)] = "<br>".join(table.texts((layer, head))[:5])
        grid = layer_head_grid(total, layer_labels=[f"L{l}" for l in contributions.layers], hover_text=hover,
                               title=f"variance explained by {config.k} TextSpan texts")
        ctx.numbers["textspan"] = json.loads(table.to_json())
        ctx.page += [("TextSpan: variance explained per head", grid),
                     ("TextSpan texts per head", textspan_cards(ctx.numbers["textspan"]["heads"]))]
        for (layer, head), row in table.rows.items():
            ctx.record("textspan", f"L{layer}H{head}.variance_explained", float(row.variance_explained.sum()),
                       texts=" | ".join(table.texts((layer, head))))
        self._head_search(ctx, pool_emb)
        ctx.values.textspan_table, ctx.values.pool, ctx.values.pool_emb = table, pool, pool_emb

    @staticmethod
    def _head_search(ctx: ReportContext, pool_emb: torch.Tensor) -> None:
        """Heads ranked by the share of their variance along each query's direction."""
        lines = ["| query | top heads (share of the head's variance along the query) |", "|---|---|"]
        found = {}
        for query in ctx.config.queries:
            ranked = heads_for_queries(ctx.values.contributions, ctx.loaded, [query], top=3, centre_with=pool_emb)
            found[query] = [(f"L{l}H{h}", round(score, 4)) for (l, h), score in ranked]
            lines.append(f"| {query} | " + ", ".join(f"L{l}H{h} ({score:.3f})" for (l, h), score in ranked) + " |")
            for (l, h), score in ranked:
                ctx.record("head_search", f"{query}.L{l}H{h}", score)
        ctx.numbers["head_search"] = found
        ctx.page.append(("Which heads span a text", "\n".join(lines)))
