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
# # Sparse autoencoders, explained with the text decomposition
#
# The package ships a TopK SAE (1024 features, k = 16) trained on the embedded shapes model's
# `blocks.4.hook_resid_post`. Here we splice it into the model, cache and edit its features with ordinary
# hooks, and explain features: the texts nearest to a feature's direct effect on the image embedding, the
# heads that write it (an exact split of its encoder pre-activation), its top images and activation maps.
# Everything runs offline on a CPU in well under a minute. Any SAELens or ViT-Prisma SAE folder loads the same
# way with `load_sae(path)`.

# %% [markdown]
# ## Runtime and install
#
# **Runtime**: a CPU is enough for the embedded model (about 30 s on 2 shared CPU cores). A real CLIP wants a GPU
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
import torch

from vit_lens_clip import load_clip
from vit_lens_clip.datasets.shapes_adapters import sample_scenes, scene_images, shapes_texts
from vit_lens_clip.methods.sae import explain, sae_hook_name, saes_spliced
from vit_lens_clip.methods.sae.shipped import load_shipped_sae, shipped_figures
from vit_lens_clip.viz.figures import overlay_grid

torch.manual_seed(0)
clip = load_clip("vit-lens-clip/shapes")
sae = load_shipped_sae()
print(sae)
figures = shipped_figures()
print({k: figures[k] for k in ("explained_variance", "l0", "dead_features")})

# %% [markdown]
# ## Splice it: with the error term the model is unchanged; without it, the output is the reconstruction

# %%
world = sample_scenes(48, seed=777)
images = scene_images(clip.preprocess, world)
with torch.no_grad():
    plain = clip.model(images)
    with saes_spliced(clip.model, sae, use_error_term=True):
        spliced, cache = clip.model.run_with_cache(images, names_filter=lambda n: ".sae." in n)
    with saes_spliced(clip.model, sae, use_error_term=False):
        reconstructed = clip.model(images)
print("max |change| with the error term:", float((spliced - plain).abs().max()))
print("cosine(plain, reconstruction-only):", float(torch.nn.functional.cosine_similarity(plain, reconstructed).mean()))
acts = cache[sae_hook_name(sae)]  # [images, tokens, features]
print("feature activations:", tuple(acts.shape), "mean L0:", float((acts > 0).sum(-1).float().mean()))

# %% [markdown]
# ## Edit a feature with an ordinary hook

# %%
feature = int(acts.mean((0, 1)).argmax())

def ablate(a, hook):
    a[..., feature] = 0
    return a

with torch.no_grad(), saes_spliced(clip.model, sae, use_error_term=True):
    ablated = clip.model.run_with_hooks(images, fwd_hooks=[(sae_hook_name(sae), ablate)])
print(f"feature {feature}: ablation moves the embedding by",
      float((ablated - plain).norm(dim=-1).mean() / plain.norm(dim=-1).mean()), "(relative)")

# %% [markdown]
# ## Explain the most active features
# (a) texts nearest to the direct effect through the final LayerNorm fold and projection;
# (b) the heads that write the feature, exact (they sum with the embedding, MLPs and biases to the pre-activation);
# (c) top images and activation maps.

# %%
pool = [t for texts in shapes_texts().values() for t in texts]
pool_emb = clip.encode_text(pool)
top_features = [int(j) for j in acts.mean((0, 1)).argsort(descending=True)[:5]]
nearest = explain.nearest_texts(explain.direct_effect_directions(clip.model, sae, top_features), pool_emb, pool, k=3)
best = explain.top_images(acts[..., top_features].float(), n=3)
for n, j in enumerate(top_features):
    sources = explain.feature_sources(clip.model, sae, images[best[n]], features=[j])
    assert torch.allclose(sources.total(), sources.pre_acts, atol=1e-4)
    heads = ", ".join(f"L{l}.H{h} {c:+.2f}" for l, h, c in sources.top_heads(0, n=3))
    print(f"feature {j}: {[t for t, _ in nearest[n]]} | top heads: {heads}")

# %%
maps = explain.activation_maps(clip.model, acts[..., top_features].float())
i = int(best[0, 0])
overlay_grid(images[i], {f"feature {j}": maps[i, n] for n, j in enumerate(top_features)}, cols=5,
             preprocess=clip.preprocess, title=f"image {i}: activation maps of the 5 most active features")
