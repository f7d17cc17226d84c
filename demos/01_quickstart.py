# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # vit_lens_clip: quickstart
#
# A CLIP image encoder with TransformerLens hooks, its embedding split exactly into layers, heads and patches,
# a text description of each head (TextSpan), and text heatmaps. This notebook runs offline on the embedded
# model, a small CLIP trained on a synthetic world of coloured shapes. To use a real CLIP, change `MODEL` in
# the second cell.

# %% [markdown]
# ## Runtime and install
#
# **Runtime**: a CPU is enough for the embedded model (about 20 s on 2 shared CPU cores). A real CLIP wants a GPU
# (on Colab: Runtime > Change runtime type > GPU).
#
# The next cell installs the released package, `pip install vit_lens_clip`, unless it is already importable. To
# install another build, set the environment variable `VIT_LENS_CLIP_SPEC` to any pip requirement before running
# it: a wheel file (`%env VIT_LENS_CLIP_SPEC=/content/vit_lens_clip-0.1.0-py3-none-any.whl`), a VCS URL
# (`%env VIT_LENS_CLIP_SPEC=git+https://example.org/you/vit_lens_clip.git@main`) or a version
# (`vit_lens_clip==0.1.0`). When it is set, that requirement is installed even over an installed copy.

# %%
# Install vit_lens_clip where this notebook is opened (Colab, a cluster venv); see the cell above.
import importlib.util
import os
import shlex

VIT_LENS_CLIP_SPEC = os.environ.get("VIT_LENS_CLIP_SPEC", "")
if VIT_LENS_CLIP_SPEC or importlib.util.find_spec("vit_lens_clip") is None:
    get_ipython().run_line_magic("pip", "install -q " + shlex.quote(VIT_LENS_CLIP_SPEC or "vit_lens_clip"))

# %%
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

# %% [markdown]
# ## Images
#
# Scenes of the shapes world come with their ground truth: caption, attributes and object masks. Any PIL
# image goes through `clip.preprocess` the same way.

# %%
from vit_lens_clip.datasets.shapes_world import ShapesWorld

world = ShapesWorld(seed=0)
rng = np.random.default_rng(0)
scenes = [world.sample(rng) for _ in range(6)]
images = torch.stack([clip.preprocess(s.pil()) for s in scenes]).to(DEVICE)
for i, s in enumerate(scenes):
    print(i, s.caption)
fig = px.imshow(np.concatenate([s.image for s in scenes], axis=1), height=230)
fig.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)

# %% [markdown]
# ## Hook names and the activation cache
#
# `run_with_cache` returns a `transformer_lens.ActivationCache`. The hook names are TransformerLens' names,
# plus `hook_pooled_pattern` (the attention of the pooled token) and `hook_result_per_source` (each head's
# piece from each source token); see docs/hooks.md.

# %%
with torch.no_grad():
    embedding, cache = clip.model.run_with_cache(images)
print(type(cache).__name__, "with", len(cache), "activations")
last_layer = [name for name in cache.keys() if name.startswith(f"blocks.{LAST}.")]
for name in ["hook_embed", *last_layer, "hook_pooled", "hook_image_embed"]:
    print(f"{name:45s} {tuple(cache[name].shape)}")

# %% [markdown]
# A TransformerLens method on this cache: `logit_attrs` gives each component's direct contribution to the
# score of a text. Texts can be strings, because `load_clip` attaches the text encoder. The cache uses
# TransformerLens' LayerNorm fold (each piece centred by its own mean; the LayerNorm bias β belongs to no
# piece). With β added back, the pieces sum to the score.

# %%
text = scenes[0].caption
t = clip.encode_text([text])[0].to(DEVICE)
stack, labels = cache.decompose_resid(pos_slice=0, return_labels=True)   # pieces at the CLS token
attributions = cache.logit_attrs(stack, tokens=text, pos_slice=0)        # [components, images]
beta = clip.model.ln_final.b @ clip.model.W_proj @ t
assert torch.allclose(attributions.sum(0) + beta, embedding @ t, rtol=1e-4, atol=1e-4)
px.bar(x=labels, y=attributions[:, 0].detach().cpu(), title=f"image 0 against '{text}': direct attribution",
       labels={"x": "component", "y": "attribution"}, height=350)

# %% [markdown]
# ## The decomposition, exact
#
# `decompose` folds the final LayerNorm and the projection into every part. It uses the paper's
# equal-share convention: see docs/decomposition.md for the math, and docs/getting-started.md for which
# API returns which convention. The parts sum to the embedding, and a layer's heads sum to the layer.

# %%
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

# %% [markdown]
# ## TextSpan on the last layers
#
# TextSpan describes each head by the texts that explain most of the variance of its outputs over a set of
# images. First collect the heads' per-image contributions, then embed a text pool (about 3,900 built-in
# image descriptions), then run.

# %%
from vit_lens_clip.datasets.shapes_world import ShapesDataset
from vit_lens_clip.methods.textspan import load_pool
from vit_lens_clip.methods.textspan.runs import TextSpanTable, collect_head_contributions
from vit_lens_clip.viz import layer_head_grid

data = ShapesDataset(400, seed=1, transform=clip.preprocess)
contributions = collect_head_contributions(clip, torch.stack([data[i]["image"] for i in range(len(data))]),
                                           last_n_layers=2, batch_size=100, progress=False)
pool = load_pool("descriptions")
pool_embeddings = clip.encode_text(pool, progress=True).cpu()
table = TextSpanTable.compute(contributions, pool_embeddings, pool, k=5)
for head in table.rows:
    print(f"L{head[0]}.H{head[1]}:", " | ".join(table.texts(head)))

# %%
explained = torch.tensor([[float(table.rows[(l, h)].variance_explained.sum()) for h in range(cfg.n_heads)]
                          for l in contributions.layers])
hover = {(i, h): table.texts((l, h)) for i, l in enumerate(contributions.layers) for h in range(cfg.n_heads)}
layer_head_grid(explained, layer_labels=[f"L{l}" for l in contributions.layers], hover_text=hover,
                title="variance explained by 5 TextSpan texts (hover for the texts)")

# %% [markdown]
# ## A text heatmap
#
# The map of a text t over patches m is Σ_l Σ_h ĉ_{l,h,m} · t, summed over every layer and head. It is
# computed through the pull-back of t, so the [layers, heads, patches, D] tensor is never built. Here it is
# drawn over the image with plotly.

# %%
from vit_lens_clip.methods.spatial.heatmaps import joint_map, text_heatmap
from vit_lens_clip.viz import overlay_grid

texts = [scenes[0].caption, f"a {scenes[0].attributes.place} background"]
maps = text_heatmap(clip.model, images[:1], texts)[0]               # [2, grid, grid]
best = max(table.rows, key=lambda head: float(table.rows[head].variance_explained[0]))
head_text = table.texts(best)[0]
head_map = joint_map(clip.model, images[:1], *best, text=head_text)[0]
panels = {texts[0]: maps[0], texts[1]: maps[1], f"L{best[0]}.H{best[1]}: {head_text}": head_map}
overlay_grid(images[0].cpu(), {k: v.cpu() for k, v in panels.items()}, cols=3, preprocess=clip.preprocess)

# %% [markdown]
# Next: `02_reproduce_paper.ipynb` (the paper's experiments) and `03_composing_tools.ipynb` (activation
# patching and a sparse autoencoder on HookedViT's hook points).
