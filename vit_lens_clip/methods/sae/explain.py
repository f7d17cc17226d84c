"""Explain SAE features with the package's decomposition.

(a) Direct effect. A feature j writes a_j · d_j into the residual at its hook (d_j = the decoder row mapped
back through the SAE's normalisation: W_dec[j]/s for a constant scale s; for per-token normalisations the
token's scale multiplies it, so the direction is stated per unit of normalised activation). Along the
residual skip path it reaches the pooled vector r as pool(a_j) · d_j (pool = CLS or the patch mean, as the
tower pools), and through the final LayerNorm fold (``decompose.fold``, "own_mean" convention, share 0)

    ĉ_j = pool(a_j) · (γ ⊙ (d_j − mean(d_j)) / σ(r)) · P

exactly: ĉ_j is the part of the image embedding that the feature writes directly, for fixed σ(r). Through an
attentional pooler (CoCa; MAP: SigLIP, PE-Core) the write a_j(m)·d_j at every token m reaches the pooler's
output through ln_k with each token's statistics frozen (μ_m, σ_m) and the pooler's pattern A[h', m] frozen, as
the decomposition folds it (docs/sae.md):

    ĉ_j = fold_f( Σ_h' s_{h',j} · (γ_k ⊙ d_j) W_V^{h'} W_O^{h'} ),   s_{h',j} = Σ_m A[h', m] a_j(m) / σ_m

with fold_f the final LayerNorm at frozen μ_f, σ_f (CoCa) or nothing (SigLIP, PE-Core), then the projection
(``pooled_direct_effects``; ``feature_direct_effects`` runs either readout on images). Later
blocks also read d_j (indirect effect); ``ablation_effects`` measures the total effect instead: the change of
the image embedding when the feature is set to 0 with the SAE spliced with its error term, per image. Its
TextSpan (``describe``) is the sparse text description over the feature's effects on a dataset.

(b) Sources. The encoder pre-activation of feature j at token p is pre_j(p) = n(x_p) · w̃_j + c_j, with
c_j = b_enc[j] − b_dec · W_enc[:, j] (when the SAE subtracts b_dec) and x_p the residual at the hook, which is
a sum of pieces: the embedding, every earlier head's output z_h W_O^h, the attention biases b_O and the MLP
outputs. n is linear given the token's statistics (a scalar s, √d/‖x_p‖, or (x − μ_p)/(std_p + 1e-5) for
"layer_norm", whose centring moves into w̃_j = w_j − mean(w_j)), so

    pre_j(p) = Σ_pieces coef_p · (piece_p · w̃_j) + c_j          (exact; coef_p = the token's scale)

and a head's piece splits further over source tokens m: z_h(p) = Σ_m A_h[p, m] v_h(m), so
head_source[h, m] = coef_p · A_h[p, m] · (v_h(m) W_O^h · w̃_j). ``FeatureSources.total()`` equals the
SAE's pre-activation (the tests check it on random perturbed weights).

(c) ``feature_activations`` / ``activation_maps`` / ``top_images``: activations per token, patch grids, and
the images where a feature is strongest. (d) ``feature_segmentation``: zero-shot segmentation from
features, scored like the package's other maps (``spatial.evaluate``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens_clip.datasets.segmentation import segmentation_loader
from vit_lens_clip.decompose.fold import LNFold, ln_statistics
from vit_lens_clip.errors import BadInputError, UnsupportedTowerError
from vit_lens_clip.methods.sae.sae import SparseAutoencoder
from vit_lens_clip.methods.sae.splice import attached_saes, sae_hook_name, saes_spliced
from vit_lens_clip.methods.spatial.evaluate import method_maps
from vit_lens_clip.methods.spatial.heatmaps import predict_classes
from vit_lens_clip.methods.spatial.metrics import SegmentationMetrics, segment_batch
from vit_lens_clip.methods.textspan.algorithm import TextSpanResult, text_span
from vit_lens_clip.model.hooked_vit import HookedViT

_RESIDUAL = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)$")
_IN_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _features(sae: SparseAutoencoder, features: Optional[Sequence[int]]) -> list[int]:
    feats = list(range(sae.cfg.d_sae)) if features is None else [int(f) for f in features]
    bad = [f for f in feats if not 0 <= f < sae.cfg.d_sae]
    if bad:
        raise ValueError(f"feature indices {bad[:5]} are outside 0..{sae.cfg.d_sae - 1}")
    return feats


def _check_residual_hook(model: HookedViT, sae: SparseAutoencoder) -> None:
    hook = sae.cfg.hook_name
    if not (_RESIDUAL.match(hook) or hook == "hook_embed") or sae.cfg.d_in != model.cfg.d_model:
        raise BadInputError(f"explaining features needs an SAE on a residual-width hook (hook_embed, "
                            f"blocks.l.hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out); got {hook!r} "
                            f"(d_in {sae.cfg.d_in}) for {model.cfg.model_name} (d_model {model.cfg.d_model})")


def _check_row_readout(model: HookedViT, what: str) -> None:
    if model.attn_pool is not None:
        raise UnsupportedTowerError(f"{model.cfg.model_name}: its embedding is read by an attentional pooler, not a "
                                    f"residual row; {what} needs the pooler's pattern: use pooled_direct_effects "
                                    "or feature_direct_effects")


# ------------------------------------------------------------------------------------------- (a) effects


def decoder_directions(sae: SparseAutoencoder, features: Optional[Sequence[int]] = None) -> Float[Tensor, "n_feat d_in"]:
    """d_j: what one unit of feature j adds to the activation (W_dec[j], divided by a constant input scale)."""
    d = sae.W_dec[_features(sae, features)].detach().double()
    if sae.cfg.normalize == "expected_average_only_in":
        d = d / sae.cfg.scaling_factor
    return d


def pooler_directions(model: HookedViT, sae: SparseAutoencoder,
                      features: Optional[Sequence[int]] = None) -> Float[Tensor, "pool_heads n_feat d_pool"]:
    """U_{h',j} = (γ_k ⊙ d_j) W_V^{h'} W_O^{h'}: what one unit of feature j at a token of weight 1 (pattern/σ)
    adds to the pooler's attention output through pooler head h' (ln_k's statistics frozen)."""
    pool = model.attn_pool
    d = decoder_directions(sae, features)
    W_VO = torch.einsum("hie,hed->hid", pool.attn.W_V.detach().double(), pool.attn.W_O.detach().double())
    return torch.einsum("fi,hid->hfd", d * pool.ln_k.w.detach().double(), W_VO)


def _frozen_final_fold(model: HookedViT, vectors: Tensor, pooled: Optional[Tensor]) -> Tensor:
    """fold_f: γ_f ⊙ v/σ_f (the final LayerNorm at frozen statistics, σ_f = 1 without ``pooled``), then P."""
    if model.ln_final is not None:
        scale = 1.0 if pooled is None else ln_statistics(pooled.double(), model.ln_final.eps)[1][:, None, None]
        vectors = vectors * model.ln_final.w.detach().double() / scale
    return vectors @ model.W_proj.detach().double()


@torch.no_grad()
def direct_effect_directions(model: HookedViT, sae: SparseAutoencoder,
                             features: Optional[Sequence[int]] = None) -> Float[Tensor, "n_feat d_out"]:
    """The direct effect on the image embedding per unit of activation, σ = 1: (γ ⊙ (d_j − mean d_j))·P at a
    pooled row; through an attentional pooler, fold_f(Σ_h' U_{h',j}) (one unit at every token: each pooler
    head's pattern sums to 1)."""
    _check_residual_hook(model, sae)
    if model.attn_pool is not None:
        return _frozen_final_fold(model, pooler_directions(model, sae, features).sum(0)[None], None)[0]
    d = decoder_directions(sae, features)
    return ((d - d.mean(-1, keepdim=True)) * model.ln_final.w.double()) @ model.W_proj.double()


@torch.no_grad()
def direct_effects(model: HookedViT, sae: SparseAutoencoder, pooled_acts: Float[Tensor, "batch n_feat"],
                   pooled_residual: Float[Tensor, "batch d_model"],
                   features: Optional[Sequence[int]] = None) -> Float[Tensor, "batch n_feat d_out"]:
    """ĉ_j = fold(pool(a_j) · d_j) with r's own σ: each feature's exact direct part of each image embedding
    (a tower read at a residual row; ``pooled_direct_effects`` through an attentional pooler)."""
    _check_residual_hook(model, sae)
    _check_row_readout(model, "direct_effects")
    fold = LNFold.from_residual(pooled_residual, model.ln_final.w, model.ln_final.b, model.W_proj,
                                model.ln_final.eps, convention="own_mean")
    pieces = pooled_acts.double()[..., None] * decoder_directions(sae, features)
    return fold.fold(pieces.float(), share=0.0)


def pooler_token_weights(model: HookedViT, pattern: Float[Tensor, "batch pool_heads n_src"],
                         scale: Float[Tensor, "batch pos"]) -> Float[Tensor, "batch pool_heads pos"]:
    """ω_{h'}(m) = A[h', m]/σ_m: how a write at token m reaches the pooler (``attn_pool.attn.hook_pooled_pattern``
    and ``attn_pool.ln_k.hook_scale``); tokens the pooler does not read (prefix tokens) get 0."""
    missing = scale.shape[1] - pattern.shape[-1]
    if missing:
        pattern = torch.cat([pattern.new_zeros(*pattern.shape[:2], missing), pattern], -1)
    return pattern.double() / scale.double()[:, None, :]


@torch.no_grad()
def pooled_direct_effects(model: HookedViT, sae: SparseAutoencoder, acts: Float[Tensor, "batch pos n_feat"],
                          weights: Float[Tensor, "batch pool_heads pos"], pooled: Optional[Float[Tensor, "batch d_pool"]],
                          features: Optional[Sequence[int]] = None) -> Float[Tensor, "batch n_feat d_out"]:
    """ĉ_j = fold_f(Σ_h' s_{h',j} U_{h',j}), s_{h',j} = Σ_m ω_{h'}(m) a_j(m) (module docstring): each feature's
    direct part of each image embedding through an attentional pooler, every statistic and pattern frozen.
    ``acts``: feature activations at every token (of ``features``), ``weights``: ``pooler_token_weights``,
    ``pooled``: the pooled vector r (``hook_pooled``) for the final LayerNorm's σ_f (CoCa; None: σ_f = 1)."""
    _check_residual_hook(model, sae)
    if model.attn_pool is None:
        raise UnsupportedTowerError(f"{model.cfg.model_name} has no attentional pooler: use direct_effects")
    s = torch.einsum("bhm,bmf->bhf", weights.double(), acts.double())
    effects = torch.einsum("bhf,hfd->bfd", s, pooler_directions(model, sae, features))
    return _frozen_final_fold(model, effects, pooled)


@torch.no_grad()
def feature_direct_effects(model: HookedViT, sae: SparseAutoencoder, images: Float[Tensor, "n channel h w"],
                           features: Optional[Sequence[int]] = None,
                           batch_size: int = 64) -> Float[Tensor, "n n_feat d_out"]:
    """Each feature's direct effect on each image embedding, for either readout: ``direct_effects`` at a pooled
    row, ``pooled_direct_effects`` through an attentional pooler (the SAE spliced with its error term)."""
    _check_residual_hook(model, sae)
    if model.attn_pool is not None and sae.cfg.positions != "all":
        raise BadInputError(f"{model.cfg.model_name}: its pooler reads every token, so a direct effect through it "
                            f"needs an SAE on all positions; this one reads {sae.cfg.positions!r}")
    feats = _features(sae, features)
    acts_name = sae_hook_name(sae)
    names = {acts_name, "hook_pooled"}
    if model.attn_pool is not None:
        names |= {"attn_pool.attn.hook_pooled_pattern", "attn_pool.ln_k.hook_scale"}
    out = []
    with saes_spliced(model, sae, use_error_term=True):
        for i in range(0, len(images), batch_size):
            _, cache = model.run_with_cache(images[i:i + batch_size], names_filter=lambda n: n in names)
            acts = cache[acts_name][..., feats].double()
            if model.attn_pool is not None:
                weights = pooler_token_weights(model, cache["attn_pool.attn.hook_pooled_pattern"],
                                               cache["attn_pool.ln_k.hook_scale"][..., 0])
                out.append(pooled_direct_effects(model, sae, acts, weights, cache["hook_pooled"], feats))
            else:
                out.append(direct_effects(model, sae, model.pool_tokens(acts), cache["hook_pooled"], feats).double())
    return torch.cat(out)


def nearest_texts(directions: Float[Tensor, "n_feat d_out"], text_embeddings: Float[Tensor, "n_texts d_out"],
                  texts: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """The k texts of highest cosine similarity with each direction."""
    if len(texts) != text_embeddings.shape[0]:
        raise ValueError(f"{len(texts)} texts for {text_embeddings.shape[0]} embeddings")
    sims = F.normalize(directions.double(), dim=-1) @ F.normalize(text_embeddings.double(), dim=-1).T
    top = sims.topk(min(k, len(texts)), dim=-1)
    return [[(texts[i], float(v)) for v, i in zip(vals, idx)] for vals, idx in zip(top.values, top.indices)]


@torch.no_grad()
def ablation_effects(model: HookedViT, sae: SparseAutoencoder, images: Float[Tensor, "n channel h w"],
                     features: Sequence[int], batch_size: int = 64,
                     progress: bool = False) -> Float[Tensor, "n_feat n d_out"]:
    """Total effect of each feature per image: y − y(a_j := 0), the SAE spliced with its error term. The blocks
    before the SAE's are run once per batch (``start_at_layer``): every ablated run shares them."""
    feats = _features(sae, features)
    name = sae_hook_name(sae)
    first = _first_block_reading(sae.cfg.hook_name, len(model.blocks))
    out = torch.zeros(len(feats), len(images), model.cfg.output_dim)
    with saes_spliced(model, sae, use_error_term=True):
        for i in tqdm(range(0, len(images), batch_size), desc="feature ablations", disable=not progress):
            x = images[i:i + batch_size]
            resid = model(x, stop_at_layer=first)
            base = model(resid, start_at_layer=first).float()
            for n, j in enumerate(feats):
                def zero(acts: Tensor, hook, j=j) -> Tensor:
                    acts[..., j] = 0
                    return acts

                ablated = model.run_with_hooks(resid, start_at_layer=first, fwd_hooks=[(name, zero)])
                out[n, i:i + len(x)] = (base - ablated.float()).cpu()
    return out


def _first_block_reading(hook_name: str, n_layers: int) -> int:
    """The first block whose run can change at ``hook_name``: l for 'blocks.l.…' hooks, else 0 (the whole model)."""
    inside = _IN_BLOCK.match(hook_name)
    return int(inside.group(1)) if inside and int(inside.group(1)) < n_layers else 0


def describe(effects: Float[Tensor, "n_feat n d_out"], text_embeddings: Float[Tensor, "n_texts d_out"],
             texts: Sequence[str], k: int = 3) -> TextSpanResult:
    """TextSpan over each feature's per-image effects: k texts per feature and the variance each explains."""
    return text_span(effects, text_embeddings, k=k, texts=list(texts))


# ------------------------------------------------------------------------------------------- (b) sources


@dataclass
class FeatureSources:
    """Exact split of encoder pre-activations pre_j(p) into the pieces that write them (module docstring).

    embed [B, P, F]; heads [B, len(head_layers), H, P, F]; attn_bias [B, len(head_layers), P, F];
    mlps [B, len(mlp_layers), P, F]; constant [F]; pre_acts [B, P, F] (the SAE's own, for checking);
    head_sources [B, len(head_layers), H, M, F] at token ``position`` (if asked).
    """

    features: list[int]
    hook: str
    head_layers: list[int]
    mlp_layers: list[int]
    embed: Tensor
    heads: Tensor
    attn_bias: Tensor
    mlps: Tensor
    constant: Tensor
    pre_acts: Tensor
    position: Optional[int] = None
    head_sources: Optional[Tensor] = None

    def total(self) -> Float[Tensor, "batch pos n_feat"]:
        """Σ of all pieces + the constant: equals ``pre_acts``."""
        return (self.embed + self.heads.sum((1, 2)) + self.attn_bias.sum(1) + self.mlps.sum(1)
                + self.constant)

    def top_heads(self, feature_index: int, weights: Optional[Tensor] = None, n: int = 5) -> list[tuple[int, int, float]]:
        """(layer, head, mean contribution) of the heads writing feature ``features[feature_index]`` most,
        averaged over tokens with ``weights`` [B, P] (default: the tokens where the feature is active)."""
        c = self.heads[..., feature_index]  # [B, L, H, P]
        if weights is None:
            weights = (self.pre_acts[..., feature_index] > 0).double()
        w = weights.double()[:, None, None, :]
        mean = (c * w).sum((0, 3)) / w.sum().clamp(min=1e-12)
        flat = mean.flatten()
        order = flat.abs().argsort(descending=True)[:n]
        H = mean.shape[1]
        return [(self.head_layers[int(i) // H], int(i) % H, float(flat[i])) for i in order]


def _pieces(model: HookedViT, hook: str) -> tuple[bool, list[int], list[int]]:
    """(embedding included, attention layers, MLP layers) whose outputs sum to the activation at ``hook``."""
    if hook == "hook_embed":
        return True, [], []
    m = _RESIDUAL.match(hook)
    assert m is not None
    l, kind = int(m.group(1)), m.group(2)
    return {
        "resid_pre": (True, list(range(l)), list(range(l))),
        "resid_mid": (True, list(range(l + 1)), list(range(l))),
        "resid_post": (True, list(range(l + 1)), list(range(l + 1))),
        "attn_out": (False, [l], []),
        "mlp_out": (False, [], [l]),
    }[kind]


@torch.no_grad()
def feature_sources(model: HookedViT, sae: SparseAutoencoder, images: Float[Tensor, "batch channel h w"],
                    features: Optional[Sequence[int]] = None, position: Optional[int] = None) -> FeatureSources:
    """Split each feature's encoder pre-activation over the embedding, heads, biases and MLPs (exact)."""
    _check_residual_hook(model, sae)
    if sae.cfg.positions != "all":
        raise BadInputError(f"sources are split for SAEs that read every token position; this one reads "
                            f"{sae.cfg.positions!r}")
    feats = _features(sae, features)
    hook = sae.cfg.hook_name
    with_embed, attn_layers, mlp_layers = _pieces(model, hook)
    if hook.endswith("mlp_out"):
        raise BadInputError("an MLP output is not linear in the heads: explain an SAE on a residual hook")
    x_name = sae_hook_name(sae, "hook_sae_input") if hook in attached_saes(model) else hook
    z_normed = {l for l in attn_layers if getattr(model.blocks[l].attn, "ln_z", None) is not None}  # EVA02
    names = {x_name, "hook_embed"} | {f"blocks.{l}.attn.hook_z" for l in attn_layers} | {
        f"blocks.{l}.hook_mlp_out" for l in mlp_layers} | {f"blocks.{l}.attn.hook_result" for l in z_normed} | {
        f"blocks.{l}.attn.ln_z.hook_scale" for l in z_normed}
    if position is not None:
        names |= {f"blocks.{l}.attn.hook_pattern" for l in attn_layers} | {f"blocks.{l}.attn.hook_v" for l in attn_layers}
    _, cache = model.run_with_cache(images, names_filter=lambda n: n in names)
    x = cache[x_name].double()
    W = sae.W_enc[:, feats].detach().double()  # [d, F]
    how = sae.cfg.normalize
    if how == "layer_norm":
        coef = 1.0 / ((x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + 1e-5)
        W = W - W.mean(0, keepdim=True)
    elif how == "constant_norm_rescale":
        coef = sae.cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True)
    elif how == "expected_average_only_in":
        coef = torch.full_like(x[..., :1], sae.cfg.scaling_factor)
    else:
        coef = torch.ones_like(x[..., :1])
    b_dec = sae.b_dec.detach().double()
    constant = sae.b_enc.detach().double()[feats] - (b_dec @ sae.W_enc[:, feats].detach().double()
                                                      if sae.cfg.apply_b_dec_to_input else 0.0)
    B, P = x.shape[:2]
    embed = coef * (cache["hook_embed"].double() @ W) if with_embed else x.new_zeros(B, P, len(feats))
    heads, biases, sources = [], [], []
    for l in attn_layers:
        attn = model.blocks[l].attn
        WO_w = torch.einsum("hed,df->hef", attn.W_O.double(), W)  # [H, d_head, F]
        if l in z_normed:  # EVA02: per-head results under the sub-LayerNorm's frozen statistics (hook_result)
            head = torch.einsum("bphd,df->bhpf", cache[f"blocks.{l}.attn.hook_result"].double(), W)
            gamma_h = attn.ln_z.w.double().unflatten(-1, (attn.n_heads, attn.d_head))
            WO_w = WO_w * gamma_h[..., None]  # the value path (γ_h ⊙ v) W_O^h, divided by the query's σ_z below
        else:
            head = torch.einsum("bphe,hef->bhpf", cache[f"blocks.{l}.attn.hook_z"].double(), WO_w)
        heads.append(coef[:, None] * head)
        biases.append(coef * (attn.b_O.double() @ W))
        if position is not None:
            A = cache[f"blocks.{l}.attn.hook_pattern"].double()[:, :, position]  # [B, H, M]
            v = cache[f"blocks.{l}.attn.hook_v"].double()  # [B, M, H, e]
            per_source = A[..., None] * torch.einsum("bmhe,hef->bhmf", v, WO_w)
            if l in z_normed:  # A/σ_z(p) (γ_h ⊙ v_m) W_O^h, plus an equal share of the head's mean and β term
                per_source = per_source / cache[f"blocks.{l}.attn.ln_z.hook_scale"].double()[:, position, 0, None, None, None]
                rest = head[:, :, position] - per_source.sum(2)  # [B, H, F]
                per_source = per_source + rest[:, :, None] / per_source.shape[2]
            sources.append(coef[:, position, None, None] * per_source)
    mlps = [coef * (cache[f"blocks.{l}.hook_mlp_out"].double() @ W) for l in mlp_layers]
    x_normed, _ = sae.normalize_in(x.to(sae.W_enc.dtype))
    pre = sae.pre_acts(x_normed)[..., feats].double()
    z = x.new_zeros
    return FeatureSources(
        features=feats, hook=hook, head_layers=attn_layers, mlp_layers=mlp_layers, embed=embed,
        heads=torch.stack(heads, 1) if heads else z(B, 0, model.cfg.n_heads, P, len(feats)),
        attn_bias=torch.stack(biases, 1) if biases else z(B, 0, P, len(feats)),
        mlps=torch.stack(mlps, 1) if mlps else z(B, 0, P, len(feats)),
        constant=constant, pre_acts=pre, position=position,
        head_sources=torch.stack(sources, 1) if sources else None,
    )


# ------------------------------------------------------------------------------------- (c) maps, top images


@torch.no_grad()
def feature_activations(model: HookedViT, sae: SparseAutoencoder, images: Float[Tensor, "n channel h w"],
                        features: Optional[Sequence[int]] = None, batch_size: int = 64,
                        progress: bool = False) -> Float[Tensor, "n pos n_feat"]:
    """Feature activations at every token (the SAE spliced with its error term: the model is unchanged)."""
    return activations_and_inputs(model, sae, images, features, batch_size, progress)[0]


@torch.no_grad()
def activations_and_inputs(model: HookedViT, sae: SparseAutoencoder, images: Float[Tensor, "n channel h w"],
                           features: Optional[Sequence[int]] = None, batch_size: int = 64, progress: bool = False,
                           ) -> tuple[Float[Tensor, "n pos n_feat"], Float[Tensor, "n pos d_in"]]:
    """Feature activations at every token and the SAE's input there (the model's activation at its hook, in the
    SAE's dtype), from one forward pass per batch."""
    feats = _features(sae, features)
    names = (sae_hook_name(sae), sae_hook_name(sae, "hook_sae_input"))
    acts, inputs = [], []
    with saes_spliced(model, sae, use_error_term=True):
        for i in tqdm(range(0, len(images), batch_size), desc="feature activations", disable=not progress):
            _, cache = model.run_with_cache(images[i:i + batch_size], names_filter=lambda n: n in names)
            acts.append(cache[names[0]][..., feats].float().cpu())
            inputs.append(cache[names[1]].float().cpu())
    return torch.cat(acts), torch.cat(inputs)


def activation_maps(model: HookedViT, acts: Float[Tensor, "n pos n_feat"]) -> Float[Tensor, "n n_feat grid_h grid_w"]:
    """Patch-position activations as image grids (the prefix tokens, class token and registers, dropped)."""
    gh, gw = model.cfg.grid_size
    n_prefix = model.cfg.n_prefix
    if acts.shape[1] != n_prefix + gh * gw:
        raise ValueError(f"expected {n_prefix + gh * gw} token positions, got {acts.shape[1]}")
    return acts[:, n_prefix:].transpose(1, 2).reshape(acts.shape[0], acts.shape[2], gh, gw)


def image_scores(acts: Float[Tensor, "n pos n_feat"], how: str = "max") -> Float[Tensor, "n n_feat"]:
    """One number per image and feature: the max over tokens ("max"), the class token ("cls", position 0) or
    the mean."""
    if how == "max":
        return acts.amax(1)
    if how == "cls":
        return acts[:, 0]
    if how == "mean":
        return acts.mean(1)
    raise ValueError(f"how must be 'max', 'cls' or 'mean', got {how!r}")


def top_images(acts: Float[Tensor, "n pos n_feat"], n: int = 5, how: str = "max") -> Tensor:
    """Indices [n_feat, n] of the images where each feature is strongest."""
    return image_scores(acts, how).topk(min(n, acts.shape[0]), dim=0).indices.T


# ------------------------------------------------------------------------------------- (d) segmentation


def feature_text_map(model: HookedViT, sae: SparseAutoencoder, acts: Float[Tensor, "batch pos d_sae"],
                     texts: Float[Tensor, "batch d_out"]) -> Float[Tensor, "batch grid_h grid_w"]:
    """m(p) = Σ_j a_j(p) · ⟨direct effect of d_j, t⟩: every feature's patch activation weighted by how much
    its direction writes the image's text t."""
    weights = direct_effect_directions(model, sae).float() @ texts.float().T  # [d_sae, B]
    maps = torch.einsum("bpj,jb->bp", acts.float(), weights)
    return activation_maps(model, maps[..., None])[:, 0]


def feature_segmentation(loaded, sae: SparseAutoencoder, dataset, classifier: Float[Tensor, "d_out n_classes"],
                         batch_size: int = 16, limit: Optional[int] = None, progress: bool = True,
                         threshold="mean", known: Optional[tuple[Tensor, Tensor]] = None) -> dict[str, dict[str, float]]:
    """Zero-shot segmentation from features, next to the decomposition map, on the same images and metrics.

    ``known``: (predicted labels [n], decomposition maps [n, grid_h, grid_w]) of the dataset's first n images,
    already computed with this classifier (e.g. by ``evaluate_segmentation(keep=...)``); used in place of
    recomputing them.

    Text per image: the predicted class's column minus the mean column (as the decomposition map uses).
    "sae_features": ``feature_text_map``; "sae_top_feature": the patch activations of the single feature whose
    direct effect has the largest ⟨·, t⟩ among those active in the image.
    """
    model: HookedViT = loaded.model
    classifier = classifier.float()
    methods = ("decomposition", "sae_features", "sae_top_feature")
    metrics = {m: SegmentationMetrics() for m in methods}
    effects = direct_effect_directions(model, sae).float()  # [d_sae, d_out]
    start = 0
    for batch in tqdm(segmentation_loader(dataset, batch_size, limit), desc="SAE segmentation", disable=not progress):
        images = batch["image"]
        rows = slice(start, start + len(images))
        start += len(images)
        if known is not None and rows.stop <= len(known[0]):
            labels, decomposition = known[0][rows].to(images.device), known[1][rows]
        else:
            labels = predict_classes(model, images, classifier)
            decomposition = method_maps(model, images, classifier, ("decomposition",), labels)["decomposition"]
        texts = (classifier - classifier.mean(1, keepdim=True))[:, labels].T  # [B, d_out]
        acts = feature_activations(model, sae, images)
        maps = {"decomposition": decomposition, "sae_features": feature_text_map(model, sae, acts, texts)}
        score = (effects @ texts.T).T  # [B, d_sae]
        active = acts.amax(1) > 0
        best = score.masked_fill(~active, float("-inf")).argmax(-1)
        grids = activation_maps(model, acts)  # [B, d_sae, gh, gw]
        maps["sae_top_feature"] = grids[torch.arange(len(images)), best]
        for method in methods:
            for soft, pred, gt in segment_batch(maps[method], batch, "model", model.cfg.image_size, threshold):
                metrics[method].update(soft, pred, gt)
    return {m: metrics[m].compute() for m in methods}


# ------------------------------------------------------------------------------------- factors of the world


def auroc(scores: Tensor, positives: Tensor) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties)."""
    pos = positives.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.double().argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    sorted_scores = scores.double()[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = (ends - (counts.double() - 1) / 2)[inverse]
    ranks[order] = avg
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def factor_alignment(scores: Float[Tensor, "n n_feat"], labels: dict[str, list[Optional[int]]],
                     value_names: dict[str, Sequence[str]]) -> list[dict]:
    """For each feature, the (attribute, value) whose indicator its image score separates best (AUROC).

    ``labels[attribute][i]`` is image i's value index (None where undefined, e.g. position of several objects).
    """
    rows = []
    for j in range(scores.shape[1]):
        best = {"feature": j, "attribute": None, "value": None, "auroc": 0.5}
        for attribute, lab in labels.items():
            idx = [i for i, v in enumerate(lab) if v is not None]
            if not idx:
                continue
            y = torch.tensor([lab[i] for i in idx])
            s = scores[idx, j]
            for v, name in enumerate(value_names[attribute]):
                a = auroc(s, y == v)
                if not math.isnan(a) and a > best["auroc"]:
                    best = {"feature": j, "attribute": attribute, "value": name, "auroc": a}
        rows.append(best)
    return rows
