"""Zero-shot segmentation from neurons.

For the predicted class c (argmax e·C), score every neuron of the chosen layers by |⟨r_n, C_c⟩| and keep
the top ``top`` per class; the map is the mean of those neurons' post-activations a_{l,n}(t) over the
patch tokens (no sign flip), on the patch grid. Then the package's pipeline, as for the head-based map:
bilinear upsampling, ``zero_shot_segment`` (clip below 0, min-max, foreground above the mean) and
``SegmentationMetrics`` (pixel accuracy, mIoU, mAP).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vit_lens_clip.datasets.geometry import upsample_patch_map
from vit_lens_clip.datasets.segmentation import collate_segmentation
from vit_lens_clip.methods.neurons.effects import neuron_activation_hook
from vit_lens_clip.methods.spatial.evaluate import method_maps
from vit_lens_clip.methods.spatial.metrics import SegmentationMetrics, zero_shot_segment
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.pooling import patch_slice


def top_neurons_per_class(
    directions: dict[int, Float[Tensor, "neurons d_out"]], classifier: Float[Tensor, "d_out n_classes"], top: int = 200
) -> tuple[Int[Tensor, "n_classes top"], Int[Tensor, "n_classes top"]]:
    """(layer, neuron) of the ``top`` neurons per class by |⟨r_n, C_c⟩| over all given layers."""
    layers = sorted(directions)
    stacked = torch.cat([directions[l].float() for l in layers])  # [ΣN, D]
    layer_of = torch.cat([torch.full((directions[l].shape[0],), l) for l in layers])
    neuron_of = torch.cat([torch.arange(directions[l].shape[0]) for l in layers])
    top = min(top, stacked.shape[0])
    best = (stacked @ classifier.float()).abs().topk(top, dim=0).indices.T  # [C, top]
    return layer_of[best], neuron_of[best]


def neuron_maps(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    classifier: Float[Tensor, "d_out n_classes"],
    selected: tuple[Int[Tensor, "n_classes top"], Int[Tensor, "n_classes top"]],
    labels: Optional[Int[Tensor, " batch"]] = None,
) -> Float[Tensor, "batch grid_h grid_w"]:
    """Mean post-activation of the predicted class's selected neurons at each patch, in one forward pass."""
    layer_of, neuron_of = selected
    store: dict[int, Tensor] = {}
    patches = patch_slice(model.cfg.n_prefix)  # no class token (SigLIP), or registers after it (DINOv2)
    hooks = []
    for l in sorted(set(layer_of.flatten().tolist())):
        name, activation = neuron_activation_hook(model, l)  # hook_post, or EVA02's hidden LayerNorm output
        hooks.append((name, lambda t, hook, l=l, activation=activation:
                      store.__setitem__(l, activation(t[:, patches].detach()).float())))
    with torch.no_grad():
        embedding = model.run_with_hooks(images.to(model.W_patch.device), fwd_hooks=hooks).float()
    if labels is None:
        labels = (embedding @ classifier.to(embedding)).argmax(-1)
    maps = []
    for b, c in enumerate(labels.tolist()):
        acts = torch.stack([store[l][b, :, n] for l, n in zip(layer_of[c].tolist(), neuron_of[c].tolist())])
        maps.append(acts.mean(0))
    return torch.stack(maps).reshape(len(maps), *model.cfg.grid_size).cpu()


def compare_segmentation(
    loaded,
    dataset: Dataset,
    classifier: Float[Tensor, "d_out n_classes"],
    directions: dict[int, Float[Tensor, "neurons d_out"]],
    top: int = 200,
    batch_size: int = 16,
    limit: Optional[int] = None,
    heads_methods: Sequence[str] = ("decomposition",),
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Pixel accuracy, mIoU and mAP of the neuron map beside the head-based (and baseline) maps, same images."""
    model: HookedViT = loaded.model
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    selected = top_neurons_per_class(directions, classifier, top)
    names = ["neurons", *heads_methods]
    metrics = {m: SegmentationMetrics() for m in names}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_segmentation)
    for batch in tqdm(loader, desc="neuron segmentation", disable=not progress):
        images = batch["image"].to(model.W_patch.device)
        maps = method_maps(model, images, classifier, heads_methods) if heads_methods else {}
        maps["neurons"] = neuron_maps(model, images, classifier, selected)
        for name in names:
            seg = zero_shot_segment(upsample_patch_map(maps[name], model.cfg.image_size))
            for soft, pred, gt in zip(seg.soft_map, seg.mask, batch["mask"]):
                metrics[name].update(soft, pred, gt)
    return {m: metrics[m].compute() for m in names}
