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
    ablated_rows,
    ablation_accuracy,
    concentration,
    selectivity,
    significance_threshold,
)
from vit_lens_clip.methods.neurons.directions import (
    explained_parts,
    explained_ratios,
    neuron_directions,
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


@dataclass
class LayerEvaluation:
    """What one pass over the evaluation images gives for a layer (see ``evaluate_layer``)."""

    norms: Float[Tensor, "images neurons"]
    variance_explained: tuple[Float[Tensor, " neurons"], float]
    text_variance_explained: Optional[float]
    ablated: dict[str, Float[Tensor, "images d_out"]]


def evaluate_layer(
    effects: NeuronEffects,
    mean: Float[Tensor, "neurons d_out"],
    threshold: Float[Tensor, " neurons"],
    directions: Float[Tensor, "neurons d_out"],
    text_directions: Optional[Float[Tensor, "neurons d_out"]] = None,
    batch_size: int = 64,
) -> LayerEvaluation:
    """‖δ_n‖, the variance explained by r_n (and, pooled, by the normalised text directions) and the ablated
    embeddings, from ONE formation of each batch's effects: the same numbers as ``centred_norms``,
    ``variance_explained`` and ``ablated_embeddings`` called one after the other (each forms them again)."""
    if not effects.normalized:
        raise ValueError("ablations work in the space of 100·e/‖e‖: build NeuronEffects with normalized=True")
    unit_text = None if text_directions is None else torch.nn.functional.normalize(text_directions, dim=-1)
    norms, ablated = [], {}
    along, total = torch.zeros(directions.shape[0], dtype=torch.float64), torch.zeros(directions.shape[0], dtype=torch.float64)
    text_along = torch.zeros_like(along)
    for rows in effects.chunks(batch_size, desc="neuron evaluation"):
        delta = effects.effects(rows) - mean  # [b, N, D]
        batch_norms = delta.norm(dim=-1)
        norms.append(batch_norms)
        batch_along, batch_total = explained_parts(delta, directions)
        along += batch_along
        total += batch_total
        if unit_text is not None:
            text_along += explained_parts(delta, unit_text)[0]
        for k, v in ablated_rows(delta, effects.embedding(rows), threshold, directions, text_directions,
                                 batch_norms).items():
            ablated.setdefault(k, []).append(v)
    text_ve = None if unit_text is None else explained_ratios(text_along, total)[1]
    return LayerEvaluation(torch.cat(norms), explained_ratios(along, total), text_ve,
                           {k: torch.cat(v) for k, v in ablated.items()})


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
        code = text_dirs = None
        if atoms is not None:
            code = omp(atoms, dirs.directions, n_texts)
            text_dirs = code.reconstruct(atoms)
        evaluated = evaluate_layer(ev, mean, threshold, dirs.directions, text_dirs, batch_size)
        ev_norms, (ve, ve_pooled), text_ve, ablated = (evaluated.norms, evaluated.variance_explained,
                                                       evaluated.text_variance_explained, evaluated.ablated)
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
