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
# # Reproducing *Interpreting CLIP's Image Representation via Text-Based Decomposition*
#
# Gandelsman, Efros and Steinhardt (ICLR 2024) split CLIP's image embedding into the direct contributions
# of its layers, heads and patches, and read them with text. Part 1 lists the commands for real CLIPs and
# the published results to compare against. Part 2 runs the same protocol, end to end, on the embedded model
# at small scale: offline, in about a minute on a CPU.

# %% [markdown]
# ## Runtime and install
#
# **Runtime**: a CPU is enough for the embedded model (Part 2 takes about 1.5 minutes on 2 shared CPU cores; Part
# 1's commands on real CLIPs need a GPU and hours). A real CLIP wants a GPU (on Colab: Runtime > Change runtime
# type > GPU).
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

# %% [markdown]
# ## Part 1: on real CLIPs
#
# **Mean-ablation (§3).** Replace a component by its mean over the dataset and re-measure ImageNet
# zero-shot accuracy. Published finding: only the last few attention layers matter directly. Mean-ablating
# all MLPs, or all attention layers before the last 4, costs little. The cumulative curve is flat, then
# falls steeply over the last ~4 layers. Part 2's cells run this protocol on any model: set `MODEL`, and
# swap the data cell for ImageNet as its comments show.
#
# **TextSpan and completeness (§4).** TextSpan runs on the heads of the last 4 layers, with k = 10 texts per
# head (20 for the paper's figures) and rank 80, over a pool of ~3,500 image descriptions. Completeness
# replaces each head by its k-text reconstruction; as k grows from 10 to 60, accuracy approaches the
# baseline. Head roles reported for LAION ViT-L-14 include L21.H11 geo-locations; L22.H1 shapes, L22.H2
# locations, L22.H3 objects, L22.H6 animals, L22.H8 letters, L22.H11 colours; L23.H10 counting and L23.H12
# textures.
#
# ```bash
# vit-lens-clip report --model ViT-L-14 --pretrained laion2b_s32b_b82k --device cuda \
#     --images /data/imagenet_val_subset --k 20 --last-layers 4 --out report_l14
# ```
#
# The image folder needs class sub-folders named by class name; the report builds its classifier from them.
#
# **Zero-shot segmentation (§5).** ImageNet-segmentation (4,276 images, `gtsegs_ijcv.mat`); the paper's model
# is probably LAION ViT-H-14:
#
# ```bash
# pip install h5py
# vit-lens-clip segment --model ViT-H-14 --pretrained laion2b_s32b_b79k --device cuda \
#     --dataset imagenet-seg /data/gtsegs_ijcv.mat --out seg_vit_h14
# ```
#
# Published (percent):
#
# | method | Pixel Acc | mIoU | mAP |
# |---|---|---|---|
# | LRP | 52.81 | 33.57 | 54.37 |
# | partial-LRP | 61.49 | 40.71 | 72.29 |
# | rollout | 60.63 | 40.64 | 74.47 |
# | raw attention | 65.67 | 43.83 | 76.05 |
# | GradCAM | 70.27 | 44.50 | 70.30 |
# | Chefer et al. 2021 | 69.21 | 47.47 | 78.29 |
# | decomposition (this method) | 75.21 | 54.50 | 81.61 |
#
# Masks here follow their images through the same resize and centre crop. The published code squashes them,
# which misaligns non-square images, so expect close numbers, not equal ones. LRP is not implemented.
#
# **Spurious cues (§6).** Waterbirds, landbird vs waterbird, worst-group accuracy. The settings are: the
# base model; 10 random heads mean-ablated (best of 5); the heads whose TextSpan texts are about places
# mean-ablated. The last two also mean-ablate all MLPs and the attention layers before the last 4. Published:
#
# | model | base | random | role heads |
# |---|---|---|---|
# | ViT-B-16 | 45.6 | 52.3 | 57.5 |
# | ViT-L-14 | 47.7 | 57.7 | 72.9 |
# | ViT-H-14 | 37.2 | 37.0 | 43.3 |
#
# `run_spurious(clip, Waterbirds(root, clip.preprocess), classnames=["landbird", "waterbird"], ...)` runs it;
# docs/spurious.md has the `Waterbirds` dataset class.

# %% [markdown]
# ## Part 2: the same protocol on the embedded model

# %%
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
# The task: zero-shot shape classification of synthetic scenes (6 shapes; chance 1/6). Change `TASK` to
# `"colour"`, `"place"`, `"count"`, `"size"` or `"position"` to ask another question (position keeps only
# the single-object scenes).

# %%
from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.datasets.shapes_world import SceneAttributes, ShapesDataset, label_of, zero_shot_labels
from vit_lens_clip.methods.zeroshot import accuracy, build_classifier, logits

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
#   from vit_lens_clip.methods.zeroshot import imagenet_classifier
#   dataset = ImageFolder("/data/imagenet/val", clip.preprocess, labelled=True)
#   classifier = imagenet_classifier(clip)
print(len(dataset), "images;", len(names), "classes:", names)

# %% [markdown]
# ### §3 Mean-ablation of layers
#
# One pass keeps every image's folded parts (divided by ‖y‖, as in the published code) and their means.
# The curve replaces the parts of layers [0, k) by their means, post-hoc.

# %%
from vit_lens_clip.decompose import Decomposition, MeanReducer, StackReducer, run_reducers
from vit_lens_clip.methods.ablation import ablate_posthoc, cumulative_layer_curve
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

# %% [markdown]
# ### §4 TextSpan and completeness
#
# TextSpan on every head of the last 4 layers (k = 10, rank 80) with the built-in description pool. Then
# completeness: each head is replaced by its k-text reconstruction, with the MLPs and earlier attention
# layers mean-ablated.

# %%
from vit_lens_clip.methods.textspan import load_pool
from vit_lens_clip.methods.textspan.runs import TextSpanTable, collect_head_contributions, completeness, completeness_figure

contributions = collect_head_contributions(clip, dataset, last_n_layers=len(KEPT), batch_size=100, progress=False)
pool = load_pool("descriptions")
pool_embeddings = clip.encode_text(pool, progress=True).cpu()
table = TextSpanTable.compute(contributions, pool_embeddings, pool, k=10)
for head, row in table.rows.items():
    print(f"L{head[0]}.H{head[1]} ({float(row.variance_explained.sum()):.0%}):", " | ".join(table.texts(head)[:4]))

# %%
ks = [k for k in (5, 10, 20, 40, 60) if k <= min(len(pool), cfg.output_dim)]
complete = completeness(contributions, pool_embeddings, classifier, ks=ks)
print(complete.to_markdown())
completeness_figure(complete)

# %% [markdown]
# ### §5 Zero-shot segmentation against the baselines
#
# The shapes world has exact masks: the foreground is every pixel an object painted. The classifier is the
# shape classifier; each map is made for the predicted class.

# %%
from vit_lens_clip.datasets.shapes_adapters import ShapesSegmentation, shapes_classes
from vit_lens_clip.methods.spatial.evaluate import evaluate_segmentation, segmentation_markdown

seg_classifier = build_classifier(clip, *shapes_classes())
seg_data = ShapesSegmentation(150, clip.preprocess, seed=2, include_original=False)
seg = evaluate_segmentation(clip, seg_data, seg_classifier, batch_size=50, progress=False)
print(segmentation_markdown(seg, title=f"{clip.name} on 150 synthetic scenes"))

# %% [markdown]
# The paper, on ImageNet-segmentation (for the ranking, not the values):
#
# | method | Pixel Acc | mIoU | mAP |
# |---|---|---|---|
# | LRP | 52.81 | 33.57 | 54.37 |
# | partial-LRP | 61.49 | 40.71 | 72.29 |
# | rollout | 60.63 | 40.64 | 74.47 |
# | raw attention | 65.67 | 43.83 | 76.05 |
# | GradCAM | 70.27 | 44.50 | 70.30 |
# | Chefer et al. 2021 | 69.21 | 47.47 | 78.29 |
# | decomposition (this method) | 75.21 | 54.50 | 81.61 |

# %% [markdown]
# ### §6 Spurious cues
#
# Landbird vs waterbird, with the background as the spurious cue (95% agreement in training, where the
# birds are drawn small so that the place is the easier cue). The evaluation sets balance the four
# groups: birds drawn as in training, and larger birds (a shifted set where the glyph is easier to read).
# Role heads are picked automatically by their TextSpan texts' agreement with the world's place phrases
# ("on water", "on grass", ...).

# %%
from vit_lens_clip.datasets.shapes_adapters import (
    SHAPES_PLACE_QUERIES,
    shapes_bird_classes,
    shapes_eval_set,
    shapes_group_names,
)
from vit_lens_clip.methods.spurious import SpuriousConfig, run_spurious
from vit_lens_clip.viz import bar_table

bird_names, bird_templates = shapes_bird_classes()
settings = SpuriousConfig(classnames=bird_names, templates=bird_templates, group_names=shapes_group_names(), pool=pool,
                          k=10, queries=SHAPES_PLACE_QUERIES, progress=False)
tables = {}
for bird_size in ("small", "large"):
    birds = shapes_eval_set(clip.preprocess, n_images=400, bird_size=bird_size)
    tables[bird_size] = run_spurious(clip, birds, settings, pool_embeddings=pool_embeddings)
    print(f"birds: {bird_size}")
    print(tables[bird_size].to_markdown())
bar_table({f"{row.setting.split(' (')[0]}, {size} birds": {"average": row.average, "worst_group": row.worst_group}
           for size, table in tables.items() for row in table.rows}, title="landbird vs waterbird")

# %% [markdown]
# The paper, on Waterbirds (worst-group accuracy, percent):
#
# | model | base | random | role heads |
# |---|---|---|---|
# | ViT-B-16 | 45.6 | 52.3 | 57.5 |
# | ViT-L-14 | 47.7 | 57.7 | 72.9 |
# | ViT-H-14 | 37.2 | 37.0 | 43.3 |
#
# Read the baseline row first. If its worst group is already close to its average, the model did not pick up
# the cue, and there is nothing to remove: ablating heads can then only cost accuracy.
