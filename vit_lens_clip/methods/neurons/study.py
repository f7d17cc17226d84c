"""The paper's protocol end to end on labelled images: statistics, means, thresholds, directions, texts, ablations.

Reference images (the paper: an ImageNet train subset) give φ̄_n, τ_n and r_n; evaluation images (a disjoint
set) give the selectivity and the ablation accuracies. Both come from the caller, with the zero-shot task (for
the embedded model, the shapes world's scenes and labels from its adapters in ``vit_lens_clip.datasets``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens_clip.methods.neurons.ablation import (
    PAPER_TOP_FRACTION,
    ablated_embeddings,
    ablation_accuracy,
    concentration,
    selectivity,
    significance_threshold,
)
from vit_lens_clip.methods.neurons.directions import (
    neuron_directions,
    variance_explained,
)
from vit_lens_clip.methods.neurons.effects import NeuronEffects, collect_layers
from vit_lens_clip.methods.neurons.omp import (
    Normalization,
    SparseCode,
    omp,
    prepare_pool,
)
from vit_lens_clip.methods.zeroshot import build_classifier


@dataclass
class LayerResult:
    """What the protocol measures for one layer (per-neuron tensors over N neurons)."""

    layer: int
    threshold: Tensor
    mean: Tensor
    directions: Tensor
    top_rows: Tensor
    selectivity_eval: Tensor
    concentration_eval: Tensor
    variance_explained: Tensor
    variance_explained_pooled: float
    top_variance_explained: Tensor
    accuracy: dict[str, float]
    code: Optional[SparseCode] = None
    text_variance_explained: Optional[float] = None
    eval_norms: Optional[Tensor] = None
    effect_size: float = 0.0

    def summary(self) -> dict[str, float]:
        """Scalar numbers of this layer (for tables and JSON)."""
        out = {"selectivity_mean": self.selectivity_eval.mean().item(),
               "selectivity_median": self.selectivity_eval.median().item(),
               "concentration_top2pct": self.concentration_eval.mean().item(),
               "variance_explained_mean": self.variance_explained.mean().item(),
               "variance_explained_pooled": self.variance_explained_pooled,
               "top_variance_explained_mean": self.top_variance_explained.mean().item(),
               "effect_size": self.effect_size}
        if self.text_variance_explained is not None:
            out["text_variance_explained_pooled"] = self.text_variance_explained
        out.update({f"acc_{k}": v for k, v in self.accuracy.items()})
        return out


@dataclass
class NeuronStudy:
    task: str
    classnames: list[str]
    layers: dict[int, LayerResult]
    n_reference: int
    n_eval: int
    bytes_per_image: dict[int, int]
    texts: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    eval_images: Optional[Tensor] = None
    reference_images: Optional[Tensor] = None


def run_study(
    loaded,
    layers: Sequence[int],
    reference: tuple[Float[Tensor, "n_ref channel height width"], Int[Tensor, " n_ref"]],
    evaluation: tuple[Float[Tensor, "n_eval channel height width"], Int[Tensor, " n_eval"]],
    classnames: Sequence[str],
    templates: Sequence[Callable[[str], str]],
    task: str = "",
    texts: Optional[Sequence[str]] = None,
    text_embeddings: Optional[Tensor] = None,
    n_texts: int = 32,
    normalization: Normalization = "text",
    top_fraction: float = PAPER_TOP_FRACTION,
    shares: bool = False,
    batch_size: int = 64,
    progress: bool = True,
) -> NeuronStudy:
    """Run §2-3 of the method notes for each layer on ``reference`` and ``evaluation`` (images, labels of the
    zero-shot task ``classnames`` × ``templates``; −1 = undefined), ``task`` naming that task."""
    model = loaded.model
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    classifier = build_classifier(loaded, list(classnames), list(templates))
    ref_x, ref_y = reference
    ev_x, ev_y = evaluation
    timings["data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_stats = collect_layers(model, ref_x, layers, ref_y, batch_size, shares, progress)
    ev_stats = collect_layers(model, ev_x, layers, ev_y, batch_size, shares, progress)
    timings["collect"] = time.perf_counter() - t0
    atoms = None
    if texts is not None:
        if text_embeddings is None:
            text_embeddings = loaded.encode_text(list(texts), progress=progress)
        atoms = prepare_pool(text_embeddings, normalization)
    results = {}
    for layer in tqdm(sorted(ref_stats), desc="layers", disable=not progress):
        t0 = time.perf_counter()
        ref = NeuronEffects(model, ref_stats[layer], shares=shares)
        ev = ref.with_stats(ev_stats[layer])
        mean = ref.mean(batch_size)
        ref_norms = ref.centred_norms(mean, batch_size)
        threshold = significance_threshold(ref_norms, top_fraction)
        top_k = max(1, round(top_fraction * len(ref)))
        dirs = neuron_directions(ref, mean, ref_norms, top_k)
        ev_norms = ev.centred_norms(mean, batch_size)
        ve, ve_pooled = variance_explained(ev, mean, dirs.directions, batch_size)
        code = text_dirs = text_ve = None
        if atoms is not None:
            code = omp(atoms, dirs.directions, n_texts)
            text_dirs = code.reconstruct(atoms)
            _, text_ve = variance_explained(ev, mean, torch.nn.functional.normalize(text_dirs, dim=-1), batch_size)
        ablated = ablated_embeddings(ev, mean, threshold, dirs.directions, text_dirs, batch_size)
        results[layer] = LayerResult(
            layer=layer, threshold=threshold, mean=mean, directions=dirs.directions, top_rows=dirs.top_rows,
            selectivity_eval=selectivity(ev_norms, threshold), concentration_eval=concentration(ev_norms, top_fraction),
            variance_explained=ve, variance_explained_pooled=ve_pooled, top_variance_explained=dirs.top_variance_explained,
            accuracy=ablation_accuracy(ablated, classifier, ev_stats[layer].labels), code=code,
            text_variance_explained=text_ve, eval_norms=ev_norms,
            effect_size=(ev.embedding() - ablated["all"]).norm(dim=-1).mean().item() / 100,
        )
        timings[f"layer{layer}"] = time.perf_counter() - t0
    return NeuronStudy(task, list(classnames), results, len(ref_x), len(ev_x),
                       {l: s.bytes_per_image() for l, s in ref_stats.items()}, list(texts or []), timings,
                       eval_images=ev_x, reference_images=ref_x)
