"""Mean-ablation of layers, heads, MLPs and the CLS→CLS term: post-hoc (in decomposition space) and by
intervention (forward hooks that replace activations during the pass, so later layers see the change).

Post-hoc, a part c is replaced by its dataset mean c̄: ``y' = y − ĉ + mean(ĉ)`` with folded parts (the paper's
protocol, ``space="folded"``), or ``r' = r − c + c̄`` in the residual stream followed by the exact final
LayerNorm and projection (``space="residual"``).
"""

from __future__ import annotations

from typing import Callable, Iterable

from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.decompose.parts import Decomposition
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.zeroshot import accuracy, logits
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.pooling import compute_dtype
from vit_lens_clip.validation import head_index, layer_index

Head = tuple[int, int]


def _head_index(parts: Decomposition, layer: int, n_layers: int) -> int:
    layer = layer_index(layer, n_layers)
    if layer not in parts.layers:
        raise ValueError(f"layer {layer} heads were not kept in the decomposition (kept: {parts.layers})")
    return parts.layers.index(layer)


def ablate_posthoc(
    parts: Decomposition,
    means: dict[str, Tensor],
    attn_layers: Iterable[int] = (),
    mlp_layers: Iterable[int] = (),
    heads: Iterable[Head] = (),
    embed: bool = False,
    space: str = "folded",
    model: HookedViT | None = None,
) -> Float[Tensor, "batch d_out"]:
    """Embeddings with the chosen parts replaced by their means (``means`` from ``MeanReducer.result()``).

    The parts form a set: an index listed twice (``-1`` and ``L-1`` alike) is ablated once; a head may not be
    listed together with its whole attention layer.
    """
    if space not in ("folded", "residual"):
        raise ValueError("space must be 'folded' or 'residual'")
    flag = means.get("normalized")  # recorded by MeanReducer; absent in means built by hand
    if space == "folded" and flag is not None and bool(flag) != bool(parts.normalized):
        raise BadInputError(f"the means were taken over parts with normalize={bool(flag)} but these parts have "
                            f"normalize={bool(parts.normalized)}: decompose both the same way")
    prefix = "" if space == "folded" else "raw."
    src = parts.__dict__ if space == "folded" else parts.raw
    n_layers = src["attns"].shape[1]
    out = (parts.total() if space == "folded" else parts.raw["pooled"]).clone()

    def swap(key: str, index: tuple) -> None:
        nonlocal out
        out = out - src[key][(slice(None), *index)] + means[prefix + key][index].to(out)

    if embed:
        swap("embed", ())
    n_heads = src["heads"].shape[2] if "heads" in src else 0
    for key in ("attns", "mlps", "heads"):  # means of other layers would be applied to the wrong parts
        mean = means.get(prefix + key)
        if key in src and mean is not None and tuple(mean.shape) != tuple(src[key].shape[1:]):
            raise ValueError(f"means[{prefix + key!r}] has shape {tuple(mean.shape)} but the parts are "
                             f"{tuple(src[key].shape[1:])} per image: means from other layers or another model")
    attn_set = sorted({layer_index(l, n_layers) for l in attn_layers})  # a part listed twice is ablated once
    head_set = sorted({head_index(l, h, n_layers, n_heads) for l, h in heads})
    inside = [(l, h) for l, h in head_set if l in attn_set]
    if inside:
        raise BadInputError(f"head {inside[0]} lies in attention layer {inside[0][0]}, which is ablated as a whole: "
                            "list the layer or its heads, not both")
    for l in attn_set:
        swap("attns", (l,))
    for l in sorted({layer_index(l, n_layers) for l in mlp_layers}):
        swap("mlps", (l,))
    for l, h in head_set:
        swap("heads", (_head_index(parts, l, n_layers), h))
    if space == "folded":
        return out
    if model is None:
        raise ValueError("space='residual' needs the model (for the final LayerNorm and projection)")
    return model.output_from_pooled(out.to(model.W_proj.dtype)).to(compute_dtype(model.W_proj.dtype))


def mean_ablation_hooks(
    activation_means: dict[str, Tensor],
    attn_layers: Iterable[int] = (),
    mlp_layers: Iterable[int] = (),
    heads: Iterable[Head] = (),
    cls_to_cls: Iterable[Head] = (),
) -> list[tuple[str, Callable]]:
    """Forward hooks that replace activations by their per-position dataset means during the pass.

    Needs means (``ActivationMeanReducer``) of ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out`` for layers,
    ``blocks.{l}.attn.hook_result`` for heads, ``blocks.{l}.attn.hook_result_per_source`` for CLS→CLS.
    """

    def need(name: str) -> Tensor:
        if name not in activation_means:
            raise KeyError(f"no mean for {name}: collect it with ActivationMeanReducer([{name!r}])")
        return activation_means[name]

    def replace_all(mean: Tensor) -> Callable:
        return lambda t, hook: mean.to(t).expand_as(t).clone()

    def replace_head(mean: Tensor, head: int, source: int | None = None) -> Callable:
        n_heads = mean.shape[-2]
        if not 0 <= head < n_heads:
            raise BadInputError(f"head {head} out of range for a model with {n_heads} heads per layer")
        def hook(t: Tensor, hook) -> Tensor:
            t = t.clone()
            if source is None:
                t[:, :, head] = mean[:, head].to(t)
            else:
                t[:, source, head] = mean[source, head].to(t)
            return t

        return hook

    hooks: list[tuple[str, Callable]] = []
    for l in attn_layers:
        hooks.append((f"blocks.{l}.hook_attn_out", replace_all(need(f"blocks.{l}.hook_attn_out"))))
    for l in mlp_layers:
        hooks.append((f"blocks.{l}.hook_mlp_out", replace_all(need(f"blocks.{l}.hook_mlp_out"))))
    for l, h in heads:
        hooks.append((f"blocks.{l}.attn.hook_result", replace_head(need(f"blocks.{l}.attn.hook_result"), h)))
    for l, h in cls_to_cls:
        name = f"blocks.{l}.attn.hook_result_per_source"
        hooks.append((name, replace_head(need(name), h, source=0)))
    return hooks


def cumulative_layer_curve(
    parts: Decomposition,
    means: dict[str, Tensor],
    classifier: Float[Tensor, "d_out n_classes"],
    labels: Tensor,
    kind: str = "attn",
) -> list[tuple[int, float]]:
    """Top-1 accuracy when layers [0, k) are mean-ablated post-hoc, for k = 0..L (the paper's curve).

    ``kind``: "attn" (attention layers), "mlp", or "both".
    """
    if kind not in ("attn", "mlp", "both"):
        raise ValueError("kind must be 'attn', 'mlp' or 'both'")
    n_layers = parts.attns.shape[1]
    curve = []
    for k in range(n_layers + 1):
        layers = range(k)
        y = ablate_posthoc(
            parts, means,
            attn_layers=layers if kind in ("attn", "both") else (),
            mlp_layers=layers if kind in ("mlp", "both") else (),
        )
        curve.append((k, accuracy(logits(y, classifier), labels, topk=(1,))["top1"]))
    return curve
