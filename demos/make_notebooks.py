"""Write the demo notebooks (demos/*.ipynb) from the cell sources below, so that they stay reviewable.

    python demos/make_notebooks.py            # rewrite the notebooks
    python demos/make_notebooks.py --check    # exit 1 if a notebook differs from what this script writes

Every notebook runs top to bottom offline on the embedded model; one variable near the top switches it to a real
CLIP (e.g. on Colab). Outputs are not stored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

INSTALL = '''\
# Installs the package when it is missing (e.g. on Colab); does nothing when it is already importable.
try:
    import vit_lens_clip  # noqa: F401
except ImportError:
    get_ipython().run_line_magic("pip", "install -q vit_lens_clip")
    import vit_lens_clip  # noqa: F401
'''

SETTINGS = '''\
import numpy as np
import plotly.express as px
import torch

from vit_lens_clip import load_clip

MODEL, PRETRAINED = "vit-lens-clip/shapes", None        # the embedded model: offline, seconds on a CPU
# MODEL, PRETRAINED = "ViT-B-16", "laion2b_s34b_b88k"   # a real CLIP (on Colab: Runtime > GPU)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)

clip = load_clip(MODEL, PRETRAINED, device=DEVICE)
cfg = clip.model.cfg
LAST = cfg.n_layers - 1
print(f"{clip.name}: {cfg.n_layers} layers, {cfg.n_heads} heads, width {cfg.d_model}, {cfg.n_ctx} tokens, "
      f"activation {cfg.act_fn}, on {DEVICE}")
'''


def md(text: str, **tables: str):
    """A markdown cell; ``{NAME}`` placeholders are replaced by ``tables[NAME]`` after dedenting."""
    text = dedent(text).strip("\n")
    for name, value in tables.items():
        text = text.replace("{" + name + "}", value)
    return new_markdown_cell(text)


def code(text: str):
    return new_code_cell(dedent(text).strip("\n"))


# ------------------------------------------------------------------------------------------ 01 quickstart
def quickstart() -> list:
    return [
        md("""
        # vit_lens_clip: quickstart

        A CLIP image encoder with TransformerLens hooks, its embedding split exactly into layers, heads and patches,
        a text description of each head (TextSpan), and text heatmaps. This notebook runs offline on the embedded
        model, a small CLIP trained on a synthetic world of coloured shapes. To use a real CLIP, change `MODEL` in
        the second cell.
        """),
        code(INSTALL),
        code(SETTINGS),
        md("""
        ## Images

        Scenes of the shapes world come with their ground truth: caption, attributes and object masks. Any PIL
        image goes through `clip.preprocess` the same way.
        """),
        code("""
        from vit_lens_clip.datasets.shapes_world import ShapesWorld

        world = ShapesWorld(seed=0)
        rng = np.random.default_rng(0)
        scenes = [world.sample(rng) for _ in range(6)]
        images = torch.stack([clip.preprocess(s.pil()) for s in scenes]).to(DEVICE)
        for i, s in enumerate(scenes):
            print(i, s.caption)
        fig = px.imshow(np.concatenate([s.image for s in scenes], axis=1), height=230)
        fig.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
        """),
        md("""
        ## Hook names and the activation cache

        `run_with_cache` returns a `transformer_lens.ActivationCache`. The hook names are TransformerLens' names,
        plus `hook_pooled_pattern` (the attention of the pooled token) and `hook_result_per_source` (each head's
        piece from each source token); see docs/hooks.md.
        """),
        code("""
        with torch.no_grad():
            embedding, cache = clip.model.run_with_cache(images)
        print(type(cache).__name__, "with", len(cache), "activations")
        last_layer = [name for name in cache.keys() if name.startswith(f"blocks.{LAST}.")]
        for name in ["hook_embed", *last_layer, "hook_pooled", "hook_image_embed"]:
            print(f"{name:45s} {tuple(cache[name].shape)}")
        """),
        md("""
        A TransformerLens method on this cache: `logit_attrs` gives each component's direct contribution to the
        score of a text. Texts can be strings, because `load_clip` attaches the text encoder. The cache uses
        TransformerLens' LayerNorm fold (each piece centred by its own mean; the LayerNorm bias β belongs to no
        piece). With β added back, the pieces sum to the score.
        """),
        code("""
        text = scenes[0].caption
        t = clip.encode_text([text])[0].to(DEVICE)
        stack, labels = cache.decompose_resid(pos_slice=0, return_labels=True)   # pieces at the CLS token
        attributions = cache.logit_attrs(stack, tokens=text, pos_slice=0)        # [components, images]
        beta = clip.model.ln_final.b @ clip.model.W_proj @ t
        assert torch.allclose(attributions.sum(0) + beta, embedding @ t, rtol=1e-4, atol=1e-4)
        px.bar(x=labels, y=attributions[:, 0].detach().cpu(), title=f"image 0 against '{text}': direct attribution",
               labels={"x": "component", "y": "attribution"}, height=350)
        """),
        md("""
        ## The decomposition, exact

        `decompose` folds the final LayerNorm and the projection into every part. It uses the paper's
        equal-share convention: see docs/decomposition.md for the math, and docs/getting-started.md for which
        API returns which convention. The parts sum to the embedding, and a layer's heads sum to the layer.
        """),
        code("""
        from vit_lens_clip.decompose import decompose

        parts = decompose(clip.model, images, layers=range(cfg.n_layers))
        error = (parts.total() - embedding).abs().max() / embedding.abs().max()
        print(f"max |Σ parts − embedding| / max |embedding| = {error:.1e}")
        assert error < 1e-5
        assert torch.allclose(parts.heads.sum(2), parts.attns, rtol=1e-4, atol=1e-5)

        scores = {"attention": (parts.attns @ t).mean(0).detach().cpu(), "MLP": (parts.mlps @ t).mean(0).detach().cpu()}
        fig = px.bar(x=[f"L{l}" for l in range(cfg.n_layers)] * 2, y=torch.cat(list(scores.values())),
                     color=[k for k in scores for _ in range(cfg.n_layers)], barmode="group", height=350,
                     title=f"direct contribution of each layer to '{text}' (mean over the 6 images)",
                     labels={"x": "layer", "y": "ĉ · t", "color": ""})
        fig
        """),
        md("""
        ## TextSpan on the last layers

        TextSpan describes each head by the texts that explain most of the variance of its outputs over a set of
        images. First collect the heads' per-image contributions, then embed a text pool (about 3,900 built-in
        image descriptions), then run.
        """),
        code("""
        from vit_lens_clip.datasets.shapes_world import ShapesDataset
        from vit_lens_clip.textspan import load_pool
        from vit_lens_clip.textspan.runs import TextSpanTable, collect_head_contributions
        from vit_lens_clip.viz import layer_head_grid

        data = ShapesDataset(400, seed=1, transform=clip.preprocess)
        contributions = collect_head_contributions(clip, torch.stack([data[i]["image"] for i in range(len(data))]),
                                                   last_n_layers=2, batch_size=100, progress=False)
        pool = load_pool("descriptions")
        pool_embeddings = clip.encode_text(pool, progress=True).cpu()
        table = TextSpanTable.compute(contributions, pool_embeddings, pool, k=5)
        for head in table.rows:
            print(f"L{head[0]}.H{head[1]}:", " | ".join(table.texts(head)))
        """),
        code("""
        explained = torch.tensor([[float(table.rows[(l, h)].variance_explained.sum()) for h in range(cfg.n_heads)]
                                  for l in contributions.layers])
        hover = {(i, h): table.texts((l, h)) for i, l in enumerate(contributions.layers) for h in range(cfg.n_heads)}
        layer_head_grid(explained, layer_labels=[f"L{l}" for l in contributions.layers], hover_text=hover,
                        title="variance explained by 5 TextSpan texts (hover for the texts)")
        """),
        md("""
        ## A text heatmap

        The map of a text t over patches m is Σ_l Σ_h ĉ_{l,h,m} · t, summed over every layer and head. It is
        computed through the pull-back of t, so the [layers, heads, patches, D] tensor is never built. Here it is
        drawn over the image with plotly.
        """),
        code("""
        from vit_lens_clip.spatial.heatmaps import joint_map, text_heatmap
        from vit_lens_clip.viz import overlay_grid

        texts = [scenes[0].caption, f"a {scenes[0].attributes.place} background"]
        maps = text_heatmap(clip.model, images[:1], texts)[0]               # [2, grid, grid]
        best = max(table.rows, key=lambda head: float(table.rows[head].variance_explained[0]))
        head_text = table.texts(best)[0]
        head_map = joint_map(clip.model, images[:1], *best, text=head_text)[0]
        panels = {texts[0]: maps[0], texts[1]: maps[1], f"L{best[0]}.H{best[1]}: {head_text}": head_map}
        overlay_grid(images[0].cpu(), {k: v.cpu() for k, v in panels.items()}, cols=3, preprocess=clip.preprocess)
        """),
        md("""
        Next: `02_reproduce_paper.ipynb` (the paper's experiments) and `03_composing_tools.ipynb` (activation
        patching and a sparse autoencoder on HookedViT's hook points).
        """),
    ]


# ------------------------------------------------------------------------------------------ 02 reproduce the paper
PAPER_SEGMENTATION = """\
| method | Pixel Acc | mIoU | mAP |
|---|---|---|---|
| LRP | 52.81 | 33.57 | 54.37 |
| partial-LRP | 61.49 | 40.71 | 72.29 |
| rollout | 60.63 | 40.64 | 74.47 |
| raw attention | 65.67 | 43.83 | 76.05 |
| GradCAM | 70.27 | 44.50 | 70.30 |
| Chefer et al. 2021 | 69.21 | 47.47 | 78.29 |
| decomposition (this method) | 75.21 | 54.50 | 81.61 |"""

PAPER_SPURIOUS = """\
| model | base | random | role heads |
|---|---|---|---|
| ViT-B-16 | 45.6 | 52.3 | 57.5 |
| ViT-L-14 | 47.7 | 57.7 | 72.9 |
| ViT-H-14 | 37.2 | 37.0 | 43.3 |"""


def reproduce() -> list:
    return [
        md("""
        # Reproducing *Interpreting CLIP's Image Representation via Text-Based Decomposition*

        Gandelsman, Efros and Steinhardt (ICLR 2024) split CLIP's image embedding into the direct contributions
        of its layers, heads and patches, and read them with text. Part 1 lists the commands for real CLIPs and
        the published results to compare against. Part 2 runs the same protocol, end to end, on the embedded model
        at small scale: offline, in about a minute on a CPU.
        """),
        md("""
        ## Part 1: on real CLIPs

        **Mean-ablation (§3).** Replace a component by its mean over the dataset and re-measure ImageNet
        zero-shot accuracy. Published finding: only the last few attention layers matter directly. Mean-ablating
        all MLPs, or all attention layers before the last 4, costs little. The cumulative curve is flat, then
        falls steeply over the last ~4 layers. Part 2's cells run this protocol on any model: set `MODEL`, and
        swap the data cell for ImageNet as its comments show.

        **TextSpan and completeness (§4).** TextSpan runs on the heads of the last 4 layers, with k = 10 texts per
        head (20 for the paper's figures) and rank 80, over a pool of ~3,500 image descriptions. Completeness
        replaces each head by its k-text reconstruction; as k grows from 10 to 60, accuracy approaches the
        baseline. Head roles reported for LAION ViT-L-14 include L21.H11 geo-locations; L22.H1 shapes, L22.H2
        locations, L22.H3 objects, L22.H6 animals, L22.H8 letters, L22.H11 colours; L23.H10 counting and L23.H12
        textures.

        ```bash
        vit-lens-clip report --model ViT-L-14 --pretrained laion2b_s32b_b82k --device cuda \\
            --images /data/imagenet_val_subset --k 20 --last-layers 4 --out report_l14
        ```

        The image folder needs class sub-folders named by class name; the report builds its classifier from them.

        **Zero-shot segmentation (§5).** ImageNet-segmentation (4,276 images, `gtsegs_ijcv.mat`); the paper's model
        is probably LAION ViT-H-14:

        ```bash
        pip install h5py
        vit-lens-clip segment --model ViT-H-14 --pretrained laion2b_s32b_b79k --device cuda \\
            --dataset imagenet-seg /data/gtsegs_ijcv.mat --out seg_vit_h14
        ```

        Published (percent):

        {PAPER_SEGMENTATION}

        Masks here follow their images through the same resize and centre crop. The published code squashes them,
        which misaligns non-square images, so expect close numbers, not equal ones. LRP is not implemented.

        **Spurious cues (§6).** Waterbirds, landbird vs waterbird, worst-group accuracy. The settings are: the
        base model; 10 random heads mean-ablated (best of 5); the heads whose TextSpan texts are about places
        mean-ablated. The last two also mean-ablate all MLPs and the attention layers before the last 4. Published:

        {PAPER_SPURIOUS}

        `run_spurious(clip, Waterbirds(root, clip.preprocess), classnames=["landbird", "waterbird"], ...)` runs it;
        docs/spurious.md has the `Waterbirds` dataset class.
        """, PAPER_SEGMENTATION=PAPER_SEGMENTATION, PAPER_SPURIOUS=PAPER_SPURIOUS),
        md("## Part 2: the same protocol on the embedded model"),
        code(INSTALL),
        code(SETTINGS),
        md("""
        The task: zero-shot shape classification of synthetic scenes (6 shapes; chance 1/6). Change `TASK` to
        `"colour"`, `"place"`, `"count"`, `"size"` or `"position"` to ask another question (position keeps only
        the single-object scenes).
        """),
        code("""
        from vit_lens_clip.datasets.folder import TensorImages
        from vit_lens_clip.datasets.shapes_world import SceneAttributes, ShapesDataset, label_of, zero_shot_labels
        from vit_lens_clip.zeroshot import accuracy, build_classifier, logits

        TASK, N_IMAGES = "shape", 500
        names, templates = zero_shot_labels(TASK)
        classifier = build_classifier(clip, names, templates)
        scenes = ShapesDataset(N_IMAGES, seed=1, transform=clip.preprocess)
        items = [scenes[i] for i in range(N_IMAGES)]
        labels = [label_of(SceneAttributes(**item["attributes"]), TASK) for item in items]
        items, labels = zip(*[(item, label) for item, label in zip(items, labels) if label is not None])
        dataset = TensorImages(torch.stack([item["image"] for item in items]), labels)
        # On a real CLIP with ImageNet (class folders named by WordNet id: sorted, they are open_clip's class order):
        #   from vit_lens_clip.datasets.folder import ImageFolder
        #   from vit_lens_clip.zeroshot import imagenet_classifier
        #   dataset = ImageFolder("/data/imagenet/val", clip.preprocess, labelled=True)
        #   classifier = imagenet_classifier(clip)
        print(len(dataset), "images;", len(names), "classes:", names)
        """),
        md("""
        ### §3 Mean-ablation of layers

        One pass keeps every image's folded parts (divided by ‖y‖, as in the published code) and their means.
        The curve replaces the parts of layers [0, k) by their means, post-hoc.
        """),
        code("""
        from vit_lens_clip.ablation import ablate_posthoc, cumulative_layer_curve
        from vit_lens_clip.decompose import Decomposition, MeanReducer, StackReducer, run_reducers
        from vit_lens_clip.viz import ablation_curve

        KEPT = list(range(max(0, cfg.n_layers - 4), cfg.n_layers))     # the last 4 layers
        stack, means = StackReducer(), MeanReducer()
        run_reducers(clip.model, dataset, [stack, means], batch_size=100, layers=KEPT, normalize=True, progress=False)
        rows, mean_parts = stack.result(), means.result()
        parts = Decomposition(rows["embed"], rows["attns"], rows["mlps"], rows["heads"], KEPT, rows["embedding"],
                              "equal_share", True)
        labels = rows["labels"]
        curves = {kind: cumulative_layer_curve(parts, mean_parts, classifier, labels, kind=kind) for kind in ("attn", "mlp")}
        baseline = curves["attn"][0][1]

        def top1(y):
            return accuracy(logits(y, classifier), labels, topk=(1,))["top1"]

        print(f"baseline {baseline:.1%}")
        print(f"all MLPs mean-ablated: {top1(ablate_posthoc(parts, mean_parts, mlp_layers=range(cfg.n_layers))):.1%}")
        print(f"attention before layer {KEPT[0]} mean-ablated: {top1(ablate_posthoc(parts, mean_parts, attn_layers=range(KEPT[0]))):.1%}")
        ablation_curve({"attention layers [0, k)": curves["attn"], "MLPs [0, k)": curves["mlp"]}, baseline=baseline)
        """),
        md("""
        ### §4 TextSpan and completeness

        TextSpan on every head of the last 4 layers (k = 10, rank 80) with the built-in description pool. Then
        completeness: each head is replaced by its k-text reconstruction, with the MLPs and earlier attention
        layers mean-ablated.
        """),
        code("""
        from vit_lens_clip.textspan import load_pool
        from vit_lens_clip.textspan.runs import TextSpanTable, collect_head_contributions, completeness, completeness_figure

        contributions = collect_head_contributions(clip, dataset, last_n_layers=len(KEPT), batch_size=100, progress=False)
        pool = load_pool("descriptions")
        pool_embeddings = clip.encode_text(pool, progress=True).cpu()
        table = TextSpanTable.compute(contributions, pool_embeddings, pool, k=10)
        for head, row in table.rows.items():
            print(f"L{head[0]}.H{head[1]} ({float(row.variance_explained.sum()):.0%}):", " | ".join(table.texts(head)[:4]))
        """),
        code("""
        ks = [k for k in (5, 10, 20, 40, 60) if k <= min(len(pool), cfg.output_dim)]
        complete = completeness(contributions, pool_embeddings, classifier, ks=ks)
        print(complete.to_markdown())
        completeness_figure(complete)
        """),
        md("""
        ### §5 Zero-shot segmentation against the baselines

        The shapes world has exact masks: the foreground is every pixel an object painted. The classifier is the
        shape classifier; each map is made for the predicted class.
        """),
        code("""
        from vit_lens_clip.spatial.evaluate import ShapesSegmentation, evaluate_segmentation, segmentation_markdown, shapes_classes

        seg_classifier = build_classifier(clip, *shapes_classes())
        seg_data = ShapesSegmentation(150, clip.preprocess, seed=2, include_original=False)
        seg = evaluate_segmentation(clip, seg_data, seg_classifier, batch_size=50, progress=False)
        print(segmentation_markdown(seg, title=f"{clip.name} on 150 synthetic scenes"))
        """),
        md("""
        The paper, on ImageNet-segmentation (for the ranking, not the values):

        {PAPER_SEGMENTATION}
        """, PAPER_SEGMENTATION=PAPER_SEGMENTATION),
        md("""
        ### §6 Spurious cues

        Landbird vs waterbird, with the background as the spurious cue (95% agreement in training, where the
        birds are drawn small so that the place is the easier cue). The evaluation sets balance the four
        groups: birds drawn as in training, and larger birds (a shifted set where the glyph is easier to read).
        Role heads are picked automatically by their TextSpan texts' agreement with the world's place phrases
        ("on water", "on grass", ...).
        """),
        code("""
        from vit_lens_clip.spurious import SHAPES_PLACE_QUERIES, run_spurious, shapes_eval_set, shapes_group_names
        from vit_lens_clip.viz import bar_table

        tables = {}
        for bird_size in ("small", "large"):
            birds = shapes_eval_set(clip.preprocess, n_images=400, bird_size=bird_size)
            tables[bird_size] = run_spurious(clip, birds, group_names=shapes_group_names(), pool=pool,
                                             pool_embeddings=pool_embeddings, k=10,
                                             queries=SHAPES_PLACE_QUERIES, progress=False)
            print(f"birds: {bird_size}")
            print(tables[bird_size].to_markdown())
        bar_table({f"{row.setting.split(' (')[0]}, {size} birds": {"average": row.average, "worst_group": row.worst_group}
                   for size, table in tables.items() for row in table.rows}, title="landbird vs waterbird")
        """),
        md("""
        The paper, on Waterbirds (worst-group accuracy, percent):

        {PAPER_SPURIOUS}

        Read the baseline row first. If its worst group is already close to its average, the model did not pick up
        the cue, and there is nothing to remove: ablating heads can then only cost accuracy.
        """, PAPER_SPURIOUS=PAPER_SPURIOUS),
    ]


# ------------------------------------------------------------------------------------------ 03 composing tools
def composing() -> list:
    return [
        md("""
        # Composing tools on HookedViT: activation patching and a sparse autoencoder

        HookedViT is a `transformer_lens.HookedRootModule`. `run_with_hooks`, `run_with_cache`, hook names and
        `ActivationCache` all work as they do for language models. This notebook uses them directly:
        1. activation patching between two images that differ in one attribute;
        2. a small sparse autoencoder trained on a hook point's activations and spliced back into the forward pass.
        """),
        code(INSTALL),
        code(SETTINGS),
        md("""
        ## Activation patching

        Two scenes differ only in the object's colour: a red circle (clean) and a blue circle (corrupted). The
        metric is the text score cos(y, "a red circle") − cos(y, "a blue circle"). Patch an activation from the
        clean run into the corrupted run, and report the fraction of the clean–corrupted gap it restores
        (1 = all of it).
        """),
        code("""
        import dataclasses
        from functools import partial

        import torch.nn.functional as F

        from vit_lens_clip.datasets.shapes_world import ShapesWorld

        world = ShapesWorld(seed=0)
        rng = np.random.default_rng(3)
        clean_spec = dataclasses.replace(world.sample_spec(rng), kind="circle", colour="red", size="large",
                                         cells=(4,), offsets=((0, 0),), place="grass")
        corrupt_spec = dataclasses.replace(clean_spec, colour="blue")
        pair = [world.render_spec(spec, rng) for spec in (clean_spec, corrupt_spec)]
        clean, corrupt = (clip.preprocess(scene.pil())[None].to(DEVICE) for scene in pair)
        direction = clip.encode_text(["a red circle", "a blue circle"]).to(DEVICE)

        def metric(embedding):
            scores = F.normalize(embedding.float(), dim=-1) @ direction.T
            return scores[..., 0] - scores[..., 1]

        with torch.no_grad():
            clean_embedding, clean_cache = clip.model.run_with_cache(clean)
            corrupt_score = metric(clip.model(corrupt)).item()
        clean_score = metric(clean_embedding).item()
        print(f"metric: clean {clean_score:+.4f}, corrupted {corrupt_score:+.4f}")

        def restored(patched_embedding):
            return (metric(patched_embedding) - corrupt_score) / (clean_score - corrupt_score)

        px.imshow(np.concatenate([s.image for s in pair], axis=1), height=230, title="clean | corrupted")
        """),
        md("""
        **Whole layers.** Patch each attention layer's and each MLP's output, at every position.
        """),
        code("""
        def patch_all(activation, hook, clean_value):
            return clean_value

        rows = {}
        for kind in ("attn", "mlp"):
            name = "hook_attn_out" if kind == "attn" else "hook_mlp_out"
            rows[kind] = []
            for layer in range(cfg.n_layers):
                hook_name = f"blocks.{layer}.{name}"
                with torch.no_grad():
                    out = clip.model.run_with_hooks(corrupt, fwd_hooks=[(hook_name, partial(patch_all, clean_value=clean_cache[hook_name]))])
                rows[kind].append(restored(out).item())
        fig = px.bar(x=[f"L{l}" for l in range(cfg.n_layers)] * 2, y=rows["attn"] + rows["mlp"], barmode="group",
                     color=["attention"] * cfg.n_layers + ["MLP"] * cfg.n_layers, height=350,
                     labels={"x": "layer", "y": "fraction restored", "color": ""}, title="patching one layer's output")
        fig
        """),
        md("""
        **Single heads.** Patch one head's `hook_z` (its output before W_O) at every position.
        """),
        code("""
        from vit_lens_clip.viz import layer_head_grid


        def patch_head(z, hook, clean_value, head):
            z[:, :, head] = clean_value[:, :, head]
            return z

        per_head = torch.zeros(cfg.n_layers, cfg.n_heads)
        for layer in range(cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_z"
            for head in range(cfg.n_heads):
                hook = partial(patch_head, clean_value=clean_cache[name], head=head)
                with torch.no_grad():
                    per_head[layer, head] = restored(clip.model.run_with_hooks(corrupt, fwd_hooks=[(name, hook)])).item()
        layer_head_grid(per_head, title="fraction restored by patching one head", colorscale="RdBu", zmin=-1, zmax=1)
        """),
        md("""
        **Single positions.** Patch the residual stream `blocks.{l}.hook_resid_pre` at one patch at a time. All
        patches of a layer run as one batch, where item p has patch p taken from the clean run. The maps show
        where the colour information sits, layer by layer.
        """),
        code("""
        from vit_lens_clip.viz import overlay_grid

        n_patches = cfg.n_ctx - 1
        batch = corrupt.expand(n_patches, -1, -1, -1)

        def patch_one_position(resid, hook, clean_value):
            items = torch.arange(n_patches, device=resid.device)
            resid[items, items + 1] = clean_value[0, items + 1]           # item p gets patch p (position p + 1)
            return resid

        position_maps = {}
        for layer in range(cfg.n_layers):
            name = f"blocks.{layer}.hook_resid_pre"
            with torch.no_grad():
                out = clip.model.run_with_hooks(batch, fwd_hooks=[(name, partial(patch_one_position, clean_value=clean_cache[name]))])
            position_maps[f"resid_pre L{layer}"] = restored(out).reshape(cfg.grid_size).cpu()
        overlay_grid(clean[0].cpu(), position_maps, cols=min(cfg.n_layers, 6), preprocess=clip.preprocess, shared_scale=True)
        """),
        md("""
        ## A sparse autoencoder on a hook point

        Cache `blocks.{l}.hook_resid_post` of a middle layer over many scenes, and train a small sparse
        autoencoder on it: ReLU encoder, linear decoder, L1 penalty weighted by the decoder norms. Then splice its
        reconstruction back in with a hook, and measure how much the image embedding and the zero-shot accuracy
        change.
        """),
        code("""
        from vit_lens_clip.datasets.shapes_world import ShapesDataset

        SAE_LAYER = cfg.n_layers // 2
        SAE_HOOK = f"blocks.{SAE_LAYER}.hook_resid_post"
        N_TRAIN, TOKENS_PER_IMAGE = 1200, 24

        train_data = ShapesDataset(N_TRAIN, seed=10, transform=clip.preprocess)
        generator = torch.Generator().manual_seed(0)
        activations = []
        for start in range(0, N_TRAIN, 200):
            x = torch.stack([train_data[i]["image"] for i in range(start, min(start + 200, N_TRAIN))]).to(DEVICE)
            with torch.no_grad():
                _, small_cache = clip.model.run_with_cache(x, names_filter=[SAE_HOOK])
            resid = small_cache[SAE_HOOK]                                     # [batch, pos, d_model]
            keep = torch.randperm(resid.shape[1], generator=generator)[:TOKENS_PER_IMAGE].to(resid.device)
            activations.append(resid[:, keep].reshape(-1, cfg.d_model).float().cpu())
        activations = torch.cat(activations)
        scale = activations.norm(dim=-1).mean()                              # train on x / scale
        print(f"{activations.shape[0]} activation vectors of width {cfg.d_model} from {SAE_HOOK}")
        """),
        code("""
        from torch import nn


        class SparseAutoencoder(nn.Module):
            \"\"\"f = ReLU((x − b_dec) W_enc + b_enc); x̂ = f W_dec + b_dec.\"\"\"

            def __init__(self, d_model, d_sae):
                super().__init__()
                self.W_enc = nn.Parameter(torch.randn(d_model, d_sae) / d_model ** 0.5)
                self.W_dec = nn.Parameter(self.W_enc.detach().T.clone())
                self.b_enc = nn.Parameter(torch.zeros(d_sae))
                self.b_dec = nn.Parameter(torch.zeros(d_model))

            def encode(self, x):
                return F.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

            def forward(self, x):
                features = self.encode(x)
                return features @ self.W_dec + self.b_dec, features


        torch.manual_seed(0)
        sae = SparseAutoencoder(cfg.d_model, 4 * cfg.d_model)
        optimizer = torch.optim.Adam(sae.parameters(), lr=2e-3)
        x_train = activations / scale
        L1 = 0.1                                 # higher: sparser features; lower: closer reconstruction
        for step in range(400):
            x = x_train[torch.randint(len(x_train), (2048,), generator=generator)]
            recon, features = sae(x)
            mse = (recon - x).pow(2).sum(-1).mean()
            sparsity = (features * sae.W_dec.norm(dim=1)).sum(-1).mean()
            loss = mse + L1 * sparsity
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 100 == 0 or step == 399:
                print(f"step {step:3d}  mse {mse.item():.4f}  L1 {sparsity.item():.2f}")

        with torch.no_grad():
            recon, features = sae(x_train)
            explained = 1 - (recon - x_train).pow(2).sum() / (x_train - x_train.mean(0)).pow(2).sum()
            l0 = (features > 0).float().sum(-1).mean()
            dead = ((features > 0).sum(0) == 0).sum()
        print(f"variance explained {explained:.1%}, mean active features L0 = {l0:.1f} of {features.shape[1]}, dead {dead}")
        """),
        md("""
        **Splice it in.** A hook replaces the residual stream at that layer, at every position, by the SAE's
        reconstruction, so the later layers only see what the SAE kept. For reference, the same layer's residual
        stream is also replaced by its mean (per position, over the same test images).
        """),
        code("""
        sae = sae.to(DEVICE)

        def splice_sae(resid, hook):
            reconstruction, _ = sae(resid.float() / scale.to(resid.device))
            return (reconstruction * scale.to(resid.device)).to(resid.dtype)

        test_data = ShapesDataset(300, seed=11, transform=clip.preprocess)
        test_images = torch.stack([test_data[i]["image"] for i in range(len(test_data))]).to(DEVICE)
        with torch.no_grad():
            original, test_cache = clip.model.run_with_cache(test_images, names_filter=[SAE_HOOK])
            mean_resid = test_cache[SAE_HOOK].mean(0, keepdim=True)
            spliced = clip.model.run_with_hooks(test_images, fwd_hooks=[(SAE_HOOK, splice_sae)])
            mean_ablated = clip.model.run_with_hooks(test_images, fwd_hooks=[(SAE_HOOK, lambda resid, hook: mean_resid.expand_as(resid))])

        from vit_lens_clip.datasets.shapes_world import zero_shot_labels
        from vit_lens_clip.zeroshot import accuracy, build_classifier, logits

        print(f"{'':22s}{'cos to original':>16s}", *(f"{a:>10s}" for a in ("colour", "shape", "place")))
        classifiers = {a: build_classifier(clip, *zero_shot_labels(a)) for a in ("colour", "shape", "place")}
        truth = {a: torch.tensor([zero_shot_labels(a)[0].index(str(test_data[i]["attributes"][a])) for i in range(len(test_data))])
                 for a in classifiers}
        for name, y in (("original", original), ("SAE spliced", spliced), ("layer mean-ablated", mean_ablated)):
            cos = F.cosine_similarity(y, original, dim=-1).mean().item()
            accs = [accuracy(logits(y, classifiers[a]).cpu(), truth[a], topk=(1,))["top1"] for a in classifiers]
            print(f"{name:22s}{cos:16.4f}", *(f"{acc:10.1%}" for acc in accs))
        """),
        md("""
        **What do its features respond to?** For the four most frequently active features, find the test images
        where each is strongest (max over patches) and print their captions. Then draw the four features'
        activations over the patches of one test image.
        """),
        code("""
        with torch.no_grad():
            _, feature_acts = sae(test_cache[SAE_HOOK].float() / scale.to(DEVICE))   # [images, pos, d_sae]
        patch_acts = feature_acts[:, 1:].cpu()                                      # patches only
        frequent = (patch_acts > 0).float().mean((0, 1)).topk(4).indices.tolist()
        for f in frequent:
            top = patch_acts[..., f].amax(1).topk(3).indices.tolist()
            print(f"feature {f}:", " | ".join(test_data.scene(i).caption for i in top))
        print("image 0:", test_data.scene(0).caption)
        overlay_grid(test_images[0].cpu(), {f"feature {f}": patch_acts[0, :, f].reshape(cfg.grid_size) for f in frequent},
                     preprocess=clip.preprocess)
        """),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_reproduce_paper.ipynb": reproduce,
    "03_composing_tools.ipynb": composing,
}


# Notebooks written as jupytext percent scripts (demos/NN_name.py, paired with NN_name.ipynb): rendered by jupytext.
JUPYTEXT = {p.with_suffix(".ipynb").name: p for p in sorted(HERE.glob("[0-9]*.py"))}
NOTEBOOKS.update({name: None for name in JUPYTEXT})


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` with deterministic cell ids and Colab-friendly metadata, no outputs."""
    nb = new_notebook(cells=NOTEBOOKS[name]())
    stem = name.split("_")[0]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"nb{stem}-cell{i:02d}"
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    if name in JUPYTEXT:  # `jupytext --to ipynb demos/NN_name.py`, with deterministic cell ids
        import jupytext

        nb = jupytext.read(JUPYTEXT[name])
        for i, cell in enumerate(nb.cells):  # deterministic ids, as in build()
            cell["id"] = f"nb{name.split('_')[0]}-cell{i:02d}"
        return jupytext.writes(nb, fmt="ipynb")
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a notebook differs from the generated one")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date (run python demos/make_notebooks.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
