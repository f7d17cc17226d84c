"""Zero-shot accuracy of every task on the collected embeddings."""

from __future__ import annotations

from vit_lens_clip.app.sections.base import ReportContext, SectionSkipped
from vit_lens_clip.methods.zeroshot import accuracy, logits


class ZeroShotSection:
    name, needs, uses, gives, skippable, grad = "zero_shot", ("contributions", "tasks"), (), (), False, False

    def run(self, ctx: ReportContext) -> None:
        embedding, indices = ctx.values.contributions.embedding, ctx.values.contributions.indices
        if not any((task.labels[indices] >= 0).any() for task in ctx.values.tasks):
            raise SectionSkipped("no image has a class label (zero-shot accuracy needs labelled images)")
        ctx.numbers["zero_shot"] = {}
        for task in ctx.values.tasks:
            labels = task.labels[indices]
            keep = labels >= 0
            if keep.any():
                acc = accuracy(logits(embedding[keep], task.classifier), labels[keep], topk=(1,))["top1"]
                ctx.numbers["zero_shot"][task.name] = acc
                ctx.record("zero_shot", f"{task.name}.top1", acc)
        if ctx.numbers["zero_shot"]:
            lines = ["| task | zero-shot top-1 |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in ctx.numbers["zero_shot"].items()]
            ctx.page.append(("Zero-shot accuracy", "\n".join(lines)))
