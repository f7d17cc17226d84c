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
# # Composing tools on HookedViT: activation patching and a sparse autoencoder
#
# HookedViT is a `transformer_lens.HookedRootModule`. `run_with_hooks`, `run_with_cache`, hook names and
# `ActivationCache` all work as they do for language models. This notebook uses them directly:
# 1. activation patching between two images that differ in one attribute;
# 2. a small sparse autoencoder trained on a hook point's activations and spliced back into the forward pass.

# %% [markdown]
# ## Runtime and install
#
# **Runtime**: a CPU is enough for the embedded model (about a minute on 2 shared CPU cores). A real CLIP wants a
# GPU (on Colab: Runtime > Change runtime type > GPU).
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
# ## Activation patching
#
# Two scenes differ only in the object's colour: a red circle (clean) and a blue circle (corrupted). The
# metric is the text score cos(y, "a red circle") − cos(y, "a blue circle"). Patch an activation from the
# clean run into the corrupted run, and report the fraction of the clean–corrupted gap it restores
# (1 = all of it).

# %%
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


# %% [markdown]
# **Whole layers.** Patch each attention layer's and each MLP's output, at every position.

# %%
def patch_all(activation, hook, clean_value):
    return clean_value

rows = {}
for kind in ("attn", "mlp"):
    name = "hook_attn_out" if kind == "attn" else "hook_mlp_out"
    rows[kind] = []
    for layer in range(cfg.n_layers):
        hook_name = f"blocks.{layer}.{name}"
        with torch.no_grad():
            hook = partial(patch_all, clean_value=clean_cache[hook_name])
            out = clip.model.run_with_hooks(corrupt, fwd_hooks=[(hook_name, hook)])
        rows[kind].append(restored(out).item())
fig = px.bar(x=[f"L{l}" for l in range(cfg.n_layers)] * 2, y=rows["attn"] + rows["mlp"], barmode="group",
             color=["attention"] * cfg.n_layers + ["MLP"] * cfg.n_layers, height=350,
             labels={"x": "layer", "y": "fraction restored", "color": ""}, title="patching one layer's output")
fig

# %% [markdown]
# **Single heads.** Patch one head's `hook_z` (its output before W_O) at every position.

# %%
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

# %% [markdown]
# **Single positions.** Patch the residual stream `blocks.{l}.hook_resid_pre` at one patch at a time. All
# patches of a layer run as one batch, where item p has patch p taken from the clean run. The maps show
# where the colour information sits, layer by layer.

# %%
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

# %% [markdown]
# ## A sparse autoencoder on a hook point
#
# Cache `blocks.{l}.hook_resid_post` of a middle layer over many scenes, and train a small sparse
# autoencoder on it: ReLU encoder, linear decoder, L1 penalty weighted by the decoder norms. Then splice its
# reconstruction back in with a hook, and measure how much the image embedding and the zero-shot accuracy
# change.

# %%
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

# %%
from torch import nn


class SparseAutoencoder(nn.Module):
    """f = ReLU((x − b_dec) W_enc + b_enc); x̂ = f W_dec + b_dec."""

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

# %% [markdown]
# **Splice it in.** A hook replaces the residual stream at that layer, at every position, by the SAE's
# reconstruction, so the later layers only see what the SAE kept. For reference, the same layer's residual
# stream is also replaced by its mean (per position, over the same test images).

# %%
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
from vit_lens_clip.methods.zeroshot import accuracy, build_classifier, logits

print(f"{'':22s}{'cos to original':>16s}", *(f"{a:>10s}" for a in ("colour", "shape", "place")))
classifiers = {a: build_classifier(clip, *zero_shot_labels(a)) for a in ("colour", "shape", "place")}
truth = {a: torch.tensor([zero_shot_labels(a)[0].index(str(test_data[i]["attributes"][a])) for i in range(len(test_data))])
         for a in classifiers}
for name, y in (("original", original), ("SAE spliced", spliced), ("layer mean-ablated", mean_ablated)):
    cos = F.cosine_similarity(y, original, dim=-1).mean().item()
    accs = [accuracy(logits(y, classifiers[a]).cpu(), truth[a], topk=(1,))["top1"] for a in classifiers]
    print(f"{name:22s}{cos:16.4f}", *(f"{acc:10.1%}" for acc in accs))

# %% [markdown]
# **What do its features respond to?** For the four most frequently active features, find the test images
# where each is strongest (max over patches) and print their captions. Then draw the four features'
# activations over the patches of one test image.

# %%
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
