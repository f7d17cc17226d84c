"""Completeness: accuracy when the kept heads are replaced by their k-text TextSpan reconstructions."""

from __future__ import annotations

from vit_lens_clip.app.sections.base import ReportContext, SectionSkipped
from vit_lens_clip.methods.textspan.runs import completeness, completeness_figure


class CompletenessSection:
    name, needs, uses, gives = "completeness", ("contributions", "pool_emb", "tasks"), (), ()
    skippable, grad = True, False

    def run(self, ctx: ReportContext) -> None:
        contributions, pool_emb, task = ctx.values.contributions, ctx.values.pool_emb, ctx.values.tasks[0]
        labels = task.labels[contributions.indices]
        keep = labels >= 0
        if not keep.any():
            raise SectionSkipped("no image has a class label (completeness is an accuracy on labelled images)")
        table = completeness(contributions.subset(keep), pool_emb, task.classifier, labels[keep], progress=ctx.progress)
        ctx.page += [(f"Completeness ({task.name})", table.to_markdown()),
                     (f"Completeness figure ({task.name})", completeness_figure(table))]
        for row in table.rows:
            ctx.record("completeness", f"{task.name}.top1", row["top1"], k=row["k"])
        ctx.numbers["completeness"] = {task.name: table.to_dict()}
