"""The last layer's attention patterns on one image (circuitsvis)."""

from __future__ import annotations

from vit_lens_clip.app.sections.base import ReportContext
from vit_lens_clip.viz.attention import attention_patterns_html, patch_labels


class AttentionSection:
    name, needs, uses, gives, skippable, grad = "attention", ("dataset",), (), (), True, True

    def run(self, ctx: ReportContext) -> None:
        model, dataset = ctx.loaded.model, ctx.values.dataset
        item = next(dataset[i] for i in range(len(dataset)) if dataset[i].get("error") is None)
        last = model.cfg.n_layers - 1
        name = f"blocks.{last}.attn.hook_pattern"
        _, cache = model.run_with_cache(item["image"][None].to(ctx.loaded.device), names_filter=[name])
        cfg = model.cfg  # the tokens in the model's order: class token (if any), registers, then the patches
        prefix = ["CLS"] * cfg.class_token + [f"reg{i}" for i in range(cfg.n_registers)]
        labels = prefix + patch_labels(*cfg.grid_size, cls_label=None)
        html = attention_patterns_html(cache[name][0].float().cpu(), labels=labels)
        ctx.page.append((f"Attention patterns, last layer (L{last})", html))
