"""Layer mean-ablation curves per task (post-hoc in folded space).

A labelled task's curve is top-1 accuracy against its labels; an unlabelled task's is the agreement of the
ablated model's top-1 prediction with the unablated model's (1 without ablation by construction), and its
page, figure and CSV rows (``...agreement``) say so."""

from __future__ import annotations

import dataclasses

from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens_clip.app.sections.base import ReportContext
from vit_lens_clip.decompose import Decomposition
from vit_lens_clip.methods.ablation import cumulative_layer_curve
from vit_lens_clip.methods.zeroshot import logits
from vit_lens_clip.viz.figures import ablation_curve

ACCURACY = "top-1 accuracy (against the labels)"
AGREEMENT = "agreement with the unablated model's top-1 prediction"


def image_rows(parts: Decomposition, keep: Bool[Tensor, " batch"]) -> Decomposition:
    """The parts of the images ``keep`` selects: every per-image tensor (and tensor dict) indexed, every other
    field (layers, convention, normalized) as it was."""
    def rows(value):
        if isinstance(value, Tensor):
            return value[keep]
        if isinstance(value, dict):
            return {k: rows(v) for k, v in value.items()}
        return value

    return dataclasses.replace(parts, **{f.name: rows(getattr(parts, f.name)) for f in dataclasses.fields(parts)})


class AblationSection:
    name, needs, uses, gives = "ablation", ("parts", "means", "contributions", "tasks"), (), ()
    skippable, grad = True, False

    def run(self, ctx: ReportContext) -> None:
        parts, means = ctx.values.parts, ctx.values.means
        indices = ctx.values.contributions.indices
        figures, table, measures = [], {}, {}
        for task in tqdm(ctx.values.tasks, desc="ablation curves (tasks)", disable=not ctx.progress):
            labels = task.labels[indices]
            agreement = bool((labels < 0).all())  # unlabelled: agreement with the unablated model's predictions
            if agreement:
                labels = logits(parts.embedding, task.classifier).argmax(-1)
            measures[task.name] = AGREEMENT if agreement else ACCURACY
            keep = labels >= 0
            sub = image_rows(parts, keep)
            curves = {kind: cumulative_layer_curve(sub, means, task.classifier, labels[keep], kind=kind)
                      for kind in ("attn", "mlp")}
            baseline = curves["attn"][0][1]
            table[task.name] = {"baseline": baseline, **{f"{k}_curve": v for k, v in curves.items()}}
            for kind, curve in curves.items():
                for k, acc in curve:
                    ctx.record("ablation", f"{task.name}.{kind}.{'agreement' if agreement else 'top1'}", acc,
                               layers_ablated=k)
            figures.append((task.name, ablation_curve(
                {f"attention layers ({task.name})": curves["attn"], f"MLPs ({task.name})": curves["mlp"]},
                baseline=baseline, title=f"{task.name}: mean-ablating layers [0, k) post-hoc",
                y_title=measures[task.name], baseline_name="no ablation" + (" (agrees with itself)" if agreement else ""))))
        ctx.numbers["ablation"] = table
        n_layers = parts.attns.shape[1]
        kept = min(ctx.config.last_layers, n_layers)
        lines = [f"| task | measure | no ablation | all attention layers but the last {kept} ablated | all MLPs ablated |",
                 "|---|---|---|---|---|"]
        for name, row in table.items():
            attn = dict(row["attn_curve"])[n_layers - kept]
            mlp = dict(row["mlp_curve"])[n_layers]
            lines.append(f"| {name} | {measures[name]} | {row['baseline']:.3f} | {attn:.3f} | {mlp:.3f} |")
        ctx.page.append(("Layer mean-ablation", "\n".join(lines)))
        ctx.page.extend((f"Ablation curve ({name})", fig) for name, fig in figures)
