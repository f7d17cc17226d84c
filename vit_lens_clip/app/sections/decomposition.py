"""One pass over the data: per-image folded parts (normalised by ‖y‖) and their dataset means."""

from __future__ import annotations

from vit_lens_clip.app.sections.base import ReportContext
from vit_lens_clip.decompose import Decomposition, MeanReducer, StackReducer, run_reducers
from vit_lens_clip.decompose.contributions import HeadContributions, kept_layers


class DecompositionSection:
    name, needs, uses, gives = "decomposition", ("dataset",), (), ("parts", "means", "contributions")
    skippable, grad = False, False

    def run(self, ctx: ReportContext) -> None:
        model = ctx.loaded.model
        layers = kept_layers(model.cfg.n_layers, ctx.config.last_layers)
        stack, means = StackReducer(), MeanReducer()
        summary = run_reducers(model, ctx.values.dataset, [stack, means], batch_size=ctx.config.batch_size,
                               layers=layers, normalize=True, progress=ctx.progress)
        if summary.skipped:
            ctx.numbers["skipped_images"] = summary.skipped
            print(f"[report] skipped {len(summary.skipped)} unreadable images (listed in results.json)")
        rows, mu = stack.result(), means.result()
        ctx.values.parts = Decomposition(rows["embed"], rows["attns"], rows["mlps"], rows["heads"], layers,
                                            rows["embedding"], "equal_share", True)
        ctx.values.means = mu
        ctx.values.contributions = HeadContributions(
            heads=rows["heads"], layers=layers, embed=rows["embed"], embedding=rows["embedding"],
            labels=rows.get("labels"), indices=rows["indices"], means=mu, normalized=True,
            n_layers=model.cfg.n_layers,
        )
