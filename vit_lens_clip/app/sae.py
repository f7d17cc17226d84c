"""Report section: an SAE's features explained with the decomposition (for ``vit-lens-clip report``).

``add_sae_features(out, loaded, scenes)`` writes into a ``ReportOutput``: page parts (title, figure or Markdown)
in order, everything measured as ``out.numbers["sae"]``, and CSV rows. For the ``n_features`` most active features
(largest mean activation over all tokens of the scenes) it shows: the texts nearest to the feature's direct effect
on the image embedding, a TextSpan description of its total (ablation) effect, the heads that write it (exact
sources of its encoder pre-activation, weighted by where it fires), the shapes-world factor it separates best
(AUROC against the scenes' labels), and its top images with activation maps. It also reports the SAE's
reconstruction figures on these scenes and zero-shot segmentation from features.
"""

from __future__ import annotations

from typing import Optional, Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from vit_lens_clip.app.report_output import ReportOutput
from vit_lens_clip.datasets.shapes_adapters import ShapesSegmentation, shapes_classes, shapes_texts
from vit_lens_clip.datasets.shapes_world import Scene, label_of, zero_shot_labels
from vit_lens_clip.methods.sae import explain
from vit_lens_clip.methods.sae.sae import SparseAutoencoder
from vit_lens_clip.methods.sae.shipped import load_shipped_sae
from vit_lens_clip.methods.sae.train import reconstruction_figures
from vit_lens_clip.methods.spatial.evaluate import segmentation_markdown
from vit_lens_clip.methods.zeroshot import build_classifier
from vit_lens_clip.viz.figures import map_to_pixels, to_display_image
from vit_lens_clip.viz.html import Markdown

FACTORS = ("colour", "shape", "position", "place", "count", "size")
SAE_MAPS = {"sae_features": "SAE features (all, weighted by the text)", "sae_top_feature": "SAE feature (the top one)"}


def _feature_figure(images: torch.Tensor, maps: torch.Tensor, scores: Sequence[float], preprocess, title: str) -> go.Figure:
    """Top images with the feature's patch activations drawn over them."""
    n = len(images)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[f"max {s:.2f}" for s in scores])
    zmax = float(maps.max()) or 1.0
    for i in range(n):
        pixels = to_display_image(images[i], preprocess=preprocess)
        z = map_to_pixels(maps[i], pixels.shape[:2])
        fig.add_trace(go.Image(z=pixels), row=1, col=i + 1)
        fig.add_trace(go.Heatmap(z=z, opacity=0.5, zmin=0, zmax=zmax, colorscale="Viridis", showscale=i == n - 1,
                                 hovertemplate="activation %{z:.2f}<extra></extra>"), row=1, col=i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(title=title, height=260, width=170 * n + 120, margin={"l": 10, "r": 10, "t": 70, "b": 10})
    return fig


@torch.no_grad()
def add_sae_features(out: ReportOutput, loaded, scenes: Sequence[Scene], sae: Optional[SparseAutoencoder] = None,
                     n_features: int = 10, n_top_images: int = 4, ablation_images: int = 100,
                     segmentation_images: int = 60, batch_size: int = 64, progress: bool = True, seed: int = 0,
                     segmentation_maps: Optional[dict] = None) -> None:
    """Explain the ``n_features`` most active features of ``sae`` (default: the shipped one) on ``scenes``.
    ``segmentation_maps``: the report's segmentation section's labels and decomposition maps (``ReportValues``),
    reused when they are for the same scenes (seed + 1, ``segmentation_images`` of them)."""
    sae = load_shipped_sae() if sae is None else sae
    model, numbers = loaded.model, {}
    out.numbers["sae"] = numbers
    images = torch.stack([loaded.preprocess(s.pil()) for s in scenes])
    # [N, P, d_sae] and the SAE's input [N, P, d_in], from one pass
    acts, x = explain.activations_and_inputs(model, sae, images, batch_size=batch_size, progress=progress)
    numbers["reconstruction"] = reconstruction_figures(sae, x.flatten(0, 1))
    mean_act = acts.mean((0, 1))
    feats = [int(j) for j in mean_act.argsort(descending=True)[:n_features]]
    numbers["features"] = feats

    # texts: direct effect (nearest texts) and TextSpan over the total effect
    pool = [t for texts in shapes_texts().values() for t in texts]
    pool_emb = loaded.encode_text(pool)
    direct = explain.direct_effect_directions(model, sae, feats)
    nearest = explain.nearest_texts(direct, pool_emb, pool, k=3)
    effects = explain.ablation_effects(model, sae, images[:ablation_images], feats, batch_size)
    span = explain.describe(effects, pool_emb, pool, k=3)
    # heads: exact sources of the pre-activation at the images where the feature is strongest
    top = explain.top_images(acts[..., feats], n=n_top_images)  # [F, n]
    # factors: AUROC of each feature's image score against the scenes' labels
    labels = {a: [label_of(s.attributes, a) for s in scenes] for a in FACTORS}
    names = {a: zero_shot_labels(a)[0] for a in FACTORS}
    best_max = explain.factor_alignment(explain.image_scores(acts[..., feats], "max"), labels, names)
    # the class token's activation, where the tower has one (SigLIP, PE-Core: none; the max over tokens alone)
    best_cls = (explain.factor_alignment(explain.image_scores(acts[..., feats], "cls"), labels, names)
                if model.cfg.class_token else [])
    grids = explain.activation_maps(model, acts[..., feats])  # [N, F, gh, gw]

    lines = ["| feature | mean act. | fires on | nearest texts (direct effect) | TextSpan of the total effect "
             "(var. explained) | top heads (layer.head: mean contribution) | best factor (AUROC) |",
             "|---|---|---|---|---|---|---|"]
    per_feature = []
    for n, j in enumerate(feats):
        src = explain.feature_sources(model, sae, images[top[n]], features=[j])
        heads = src.top_heads(0, n=3)
        scored = (((best_cls[n], "CLS"),) if best_cls else ()) + ((best_max[n], "max"),)
        factor = max(scored, key=lambda r: r[0]["auroc"])
        fires = float((acts[..., j] > 0).float().mean())
        span_row = span[n]
        described = ", ".join(f"{t} ({v:.2f})" for t, v in zip(span_row.texts, span_row.variance_explained.tolist()))
        row = {"feature": j, "mean_activation": float(mean_act[j]), "fires_on_tokens": fires,
               "nearest_texts": nearest[n], "textspan": described,
               "top_heads": [(l, h, c) for l, h, c in heads],
               "best_factor": {**factor[0], "score": factor[1]}, "top_images": top[n].tolist()}
        per_feature.append(row)
        out.record("sae", f"feature{j}.auroc", factor[0]["auroc"], attribute=factor[0]["attribute"],
                   factor_value=factor[0]["value"])
        lines.append(
            f"| {j} | {row['mean_activation']:.3f} | {fires:.1%} of tokens | "
            + ", ".join(f"{t} ({s:.2f})" for t, s in nearest[n]) + f" | {described} | "
            + ", ".join(f"L{l}.H{h}: {c:+.2f}" for l, h, c in heads)
            + f" | {factor[0]['attribute']} = {factor[0]['value']} ({factor[0]['auroc']:.2f}, {factor[1]}) |")
    numbers["per_feature"] = per_feature
    rec = numbers["reconstruction"]
    intro = (f"SAE at `{sae.cfg.hook_name}` ({sae.cfg.d_sae} features, {sae.cfg.architecture}"
             f"{' k=' + str(sae.cfg.k) if sae.cfg.k else ''}) on {len(scenes)} scenes: explained variance "
             f"{rec['explained_variance']:.3f}, L0 {rec['l0']:.1f}, {rec['dead_features']} features never active.\n\n")
    out.page.append(("SAE features: texts, heads, factors", Markdown(intro + "\n".join(lines))))
    for n, j in enumerate(feats):
        idx = top[n]
        scores = acts[idx, :, j].amax(1).tolist()
        out.page.append((f"SAE feature {j}: top images and activation maps",
                          _feature_figure(images[idx], grids[idx, n], scores, loaded.preprocess,
                                          f"feature {j}: " + ", ".join(t for t, _ in nearest[n][:2]))))

    # zero-shot segmentation from features
    if segmentation_images:
        names_cls, templates = shapes_classes()
        classifier = build_classifier(loaded, names_cls, templates)
        dataset = ShapesSegmentation(segmentation_images, loaded.preprocess, seed=seed + 1, include_original=False)
        known = None
        if (segmentation_maps is not None and segmentation_maps["seed"] == seed + 1
                and segmentation_maps["n"] == segmentation_images):
            known = (segmentation_maps["labels"], segmentation_maps["decomposition"])
        seg = explain.feature_segmentation(loaded, sae, dataset, classifier, batch_size=16, progress=progress,
                                           known=known)
        numbers["segmentation"] = seg
        out.page.append(("Zero-shot segmentation from SAE features",
                         Markdown(segmentation_markdown(seg, titles=SAE_MAPS))))
        for m, r in seg.items():
            for metric in ("pixel_accuracy", "miou", "mean_ap"):
                out.record("sae", f"segmentation.{m}.{metric}", r[metric])
