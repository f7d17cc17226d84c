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
# # 04 · The second-order neuron lens
#
# MLP neurons barely write to the image embedding directly, but their writes at every token are read by the
# later attention heads and passed on to the output: the **second-order effect** (Gandelsman, Efros,
# Steinhardt, ICLR 2025). Per image, the package keeps only the scalars
# s = Σ_t A[pooled, t]·a_n(t)/σ(t) per (later layer, head, neuron); the effect of every neuron is formed on demand
# from s and image-free vectors U. This notebook runs on the embedded shapes-world CLIP in well under a minute.

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
from vit_lens_clip.datasets.shapes_adapters import shapes_images
from vit_lens_clip.datasets.shapes_world import zero_shot_labels
from vit_lens_clip.methods.neurons.ablation import ablated_embeddings, ablation_accuracy, selectivity, significance_threshold
from vit_lens_clip.methods.neurons.concepts import image_concepts, spurious_words
from vit_lens_clip.methods.neurons.directions import neuron_directions, variance_explained
from vit_lens_clip.methods.neurons.effects import NeuronEffects, collect_second_order
from vit_lens_clip.methods.neurons.omp import omp, prepare_pool
from vit_lens_clip.methods.textspan.pools import load_pool
from vit_lens_clip.methods.zeroshot import build_classifier

torch.manual_seed(0)
loaded = load_clip()  # the embedded model; e.g. load_clip("ViT-B-32", "openai") for a real CLIP
model = loaded.model
LAYER = 4  # neurons of block 4, read by the heads of block 5

# %% [markdown]
# ## Collect: one forward per batch, s stored per image (not the [N, D] effects)

# %%
ref_x, ref_y = shapes_images(loaded.preprocess, 400, seed=1000, task="shape")
ev_x, ev_y = shapes_images(loaded.preprocess, 200, seed=2000, task="shape")
ref = NeuronEffects(model, collect_second_order(model, ref_x, LAYER, ref_y))  # in the space of 100·e/‖e‖
ev = ref.with_stats(collect_second_order(model, ev_x, LAYER, ev_y))
print("s per image:", tuple(ref.stats.s.shape[1:]), f"= {ref.stats.bytes_per_image() / 1e3:.1f} kB stored per image")
print("effects of one image:", tuple(ev.effects(torch.tensor([0])).shape))

# %% [markdown]
# ## Selectivity: τ_n = the top 1.95% of ‖δ_n‖ on the reference set (the paper's threshold)

# %%
mean = ref.mean()
ref_norms, ev_norms = ref.centred_norms(mean), ev.centred_norms(mean)
tau = significance_threshold(ref_norms)
sel = selectivity(ev_norms, tau)
print(f"a neuron is significant on {100 * sel.mean():.2f}% of held-out images on average (median {100 * sel.median():.2f}%)")

# %% [markdown]
# ## One direction per neuron, and its texts (OMP over a pool)

# %%
dirs = neuron_directions(ref, mean, ref_norms, top_k=8)
ve, pooled = variance_explained(ev, mean, dirs.directions)
print(f"variance of δ_n explained by r_n: {100 * ve.mean():.1f}% (mean over neurons), {100 * pooled:.1f}% pooled")
texts = load_pool("descriptions")
atoms = prepare_pool(loaded.encode_text(texts))  # per-text normalisation (the default)
code = omp(atoms, dirs.directions, k=16)
strongest = ev_norms.pow(2).mean(0).topk(3).indices
described = code.describe(texts, top=4)
for n in strongest.tolist():
    print(f"neuron {n}:", ", ".join(f"{t} ({c:+.2f})" for t, c in described[n]))

# %% [markdown]
# ## Mean-ablation: all neurons, significant only, insignificant only, rank-1, text reconstruction

# %%
names, templates = zero_shot_labels("shape")
classifier = build_classifier(loaded, names, templates)
ablated = ablated_embeddings(ev, mean, tau, dirs.directions, code.reconstruct(atoms))
for setting, acc in ablation_accuracy(ablated, classifier, ev.stats.labels).items():
    print(f"{setting:14s} {100 * acc:.1f}%")

# %% [markdown]
# ## Concepts of one image, and words that neurons tie to "circle" rather than "square"

# %%
busiest = int((ev_norms > tau).sum(1).argmax())  # the image with the most significant neurons
print(f"image {busiest}:", image_concepts(ev_norms[busiest : busiest + 1], tau, code, texts, top=5)[0])
circle, square = (classifier[:, names.index(c)] for c in ("circle", "square"))
print(spurious_words(dirs.directions, code, texts, target=circle, true=square, blocked=["circle", "square"], top=8))
