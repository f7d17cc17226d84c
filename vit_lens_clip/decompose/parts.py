"""Parts of the image embedding: embedding term, MLPs, attention layers, heads, (head, source) pieces.

The pooled residual is r = e + Σ_l attn_l + Σ_l mlp_l (pooled: CLS, or the mean over patches for CLIPA), and

    attn_l = Σ_h Σ_m A_{l,h}[pool, m] · v_{l,h,m} W_O^h + b_O,   v_{l,h,m} = ln_1(x_m) W_V^h + b_V^h.

The output bias b_O is shared equally among the layer's H·N (head, source) pieces, so a head's part is
z_pool^h W_O^h + b_O/H. Every part is folded through the final LayerNorm and the projection by
``fold.LNFold`` (convention "equal_share" by default), so the parts sum exactly to the image embedding.

All of it is computed from hooks during one forward pass; only pooled rows are kept, the per-(head, source)
pieces only for the chosen layers, and text scores of those pieces via the pull-back (never [B, L, H, N, D]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.decompose.fold import Convention, LNFold
from vit_lens_clip.model.hooked_vit import HookedViT

Hook = tuple[str, Callable]


@dataclass
class Decomposition:
    """Folded parts of a batch of image embeddings (see the module docstring for the math).

    embed [B, D]; attns, mlps [B, L, D]; heads [B, len(layers), H, D] for ``layers``;
    head_sources [B, len(layers), H, N, D] (if asked); source_scores [B, len(layers), H, N, K] (if texts given,
    scores ĉ · t of each (head, source) piece). ``embedding`` is the model's output. Σ parts = embedding,
    or embedding/‖embedding‖ when ``normalized``. ``raw`` holds the same pieces before the fold, in the
    residual stream (keys embed, attns, mlps, heads, pooled), for ablations that recompute the final LN.
    """

    embed: Float[Tensor, "batch d_out"]
    attns: Float[Tensor, "batch n_layers d_out"]
    mlps: Float[Tensor, "batch n_layers d_out"]
    heads: Float[Tensor, "batch n_kept n_heads d_out"]
    layers: list[int]
    embedding: Float[Tensor, "batch d_out"]
    convention: Convention
    normalized: bool
    head_sources: Optional[Float[Tensor, "batch n_kept n_heads n_src d_out"]] = None
    source_scores: Optional[Float[Tensor, "batch n_kept n_heads n_src n_texts"]] = None
    raw: dict[str, Tensor] = field(default_factory=dict)

    def total(self) -> Float[Tensor, "batch d_out"]:
        """embed + Σ_l attn_l + Σ_l mlp_l."""
        return self.embed + self.attns.sum(1) + self.mlps.sum(1)

    def head_scores(self, texts: Float[Tensor, "n_texts d_out"]) -> Float[Tensor, "batch n_kept n_heads n_texts"]:
        """ĉ_{l,h} · t for unit text embeddings t."""
        return self.heads @ texts.to(self.heads).T


def _pool(model: HookedViT) -> Callable[[Tensor], Tensor]:
    return model.pool_tokens


def _check_supported(model: HookedViT) -> None:
    if model.attn_pool is not None:
        raise NotImplementedError(
            "decomposition of CoCa's attentional pooler output into tower layers is not implemented; "
            "hook attn_pool.attn.hook_result_per_source for the pooler's (head, source) pieces"
        )
    if model.cfg.pool_type == "avg" and not model.cfg.final_ln_after_pool:
        raise NotImplementedError("average pooling with the LayerNorm applied before pooling is not supported")


class DecompositionCapture:
    """Hook functions that keep only what the decomposition needs (pooled rows), then fold it.

    Use ``hooks()`` with ``model.run_with_hooks``, then ``finish()``; or ``from_cache(cache)``.
    """

    def __init__(
        self,
        model: HookedViT,
        layers: Optional[Sequence[int]] = None,
        per_source: bool = False,
        texts: Optional[Float[Tensor, "n_texts d_out"]] = None,
        convention: Convention = "equal_share",
        normalize: bool = False,
    ):
        _check_supported(model)
        n = model.cfg.n_layers
        self.model = model
        self.layers = sorted({l % n for l in (range(n) if layers is None else layers)})
        self.per_source, self.convention, self.normalize = per_source, convention, normalize
        self.texts = None if texts is None else texts.float()
        self.store: dict[str, Tensor] = {}

    # -------------------------------------------------------------- hooks
    def _keep(self, key: str, reduce: Callable[[Tensor], Tensor]) -> Callable:
        def hook(t: Tensor, hook) -> None:
            self.store[key] = reduce(t.detach())

        return hook

    def hook_names(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """Hook name → reduction applied to the activation before it is kept."""
        pool, ident = _pool(self.model), (lambda t: t)
        names = {"hook_embed": pool, "hook_pooled": ident, "hook_image_embed": ident}
        for l in range(self.model.cfg.n_layers):
            names[f"blocks.{l}.hook_attn_out"] = pool
            names[f"blocks.{l}.hook_mlp_out"] = pool
        for l in self.layers:
            names[f"blocks.{l}.attn.hook_z"] = lambda z: pool(z.flatten(-2)).unflatten(-1, z.shape[-2:])
            if self.per_source:
                names[f"blocks.{l}.attn.hook_result_per_source"] = ident
            if self.texts is not None:
                names[f"blocks.{l}.attn.hook_v"] = ident
                names[f"blocks.{l}.attn.hook_pooled_pattern"] = ident
        return names

    def hooks(self) -> list[Hook]:
        return [(name, self._keep(name, reduce)) for name, reduce in self.hook_names().items()]

    def from_cache(self, cache) -> "Decomposition":
        """Decompose from a ``transformer_lens.ActivationCache`` that holds the needed hooks."""
        for name, reduce in self.hook_names().items():
            self.store[name] = reduce(cache[name])
        return self.finish()

    # ----------------------------------------------------------- folding
    def finish(self) -> Decomposition:
        m, s, cfg = self.model, self.store, self.model.cfg
        L, H, N = cfg.n_layers, cfg.n_heads, cfg.n_ctx
        K = 2 * L + 1
        fold = LNFold.from_residual(s["hook_pooled"], m.ln_final.w, m.ln_final.b, m.W_proj, m.ln_final.eps, self.convention)
        embedding = s["hook_image_embed"].float()
        norm = embedding.norm(dim=-1) if self.normalize else torch.ones(embedding.shape[0], device=embedding.device)
        per_image = lambda x: x / norm.reshape(-1, *([1] * (x.ndim - 1)))  # noqa: E731

        embed = fold.fold(s["hook_embed"], 1 / K)
        attns = fold.fold(torch.stack([s[f"blocks.{l}.hook_attn_out"] for l in range(L)], 1), 1 / K)
        mlps = fold.fold(torch.stack([s[f"blocks.{l}.hook_mlp_out"] for l in range(L)], 1), 1 / K)
        heads, raw_heads, sources, scores = [], [], [], []
        for l in self.layers:
            attn = m.blocks[l].attn
            W_O, b_O = attn.W_O.float(), attn.b_O.float()
            z = s[f"blocks.{l}.attn.hook_z"].float()  # [B, H, d_head]
            raw_heads.append(torch.einsum("bhe,hed->bhd", z, W_O) + b_O / H)
            heads.append(fold.fold(raw_heads[-1], 1 / (K * H)))
            if self.per_source:
                piece = s[f"blocks.{l}.attn.hook_result_per_source"].float().transpose(1, 2) + b_O / (H * N)
                sources.append(fold.fold(piece, 1 / (K * H * N)))
            if self.texts is not None:
                G = fold.pull_back(self.texts)  # [d, K+1]
                value_dirs = torch.einsum("hed,dk->hek", W_O, G)
                v = s[f"blocks.{l}.attn.hook_v"].float()
                A = s[f"blocks.{l}.attn.hook_pooled_pattern"].float()
                dots = A[..., None] * torch.einsum("bmhe,hek->bhmk", v, value_dirs) + (b_O @ G) / (H * N)
                scores.append(fold.scores(dots, self.texts, 1 / (K * H * N)))
        raw = {
            "embed": s["hook_embed"].float(),
            "attns": torch.stack([s[f"blocks.{l}.hook_attn_out"] for l in range(L)], 1).float(),
            "mlps": torch.stack([s[f"blocks.{l}.hook_mlp_out"] for l in range(L)], 1).float(),
            "pooled": s["hook_pooled"].float(),
        }
        if raw_heads:
            raw["heads"] = torch.stack(raw_heads, 1)
        self.store = {}
        return Decomposition(
            embed=per_image(embed),
            attns=per_image(attns),
            mlps=per_image(mlps),
            heads=per_image(torch.stack(heads, 1)) if heads else embed.new_zeros(embed.shape[0], 0, H, embed.shape[-1]),
            layers=list(self.layers),
            embedding=per_image(embedding),
            convention=self.convention,
            normalized=self.normalize,
            head_sources=per_image(torch.stack(sources, 1)) if sources else None,
            source_scores=per_image(torch.stack(scores, 1)) if scores else None,
            raw=raw,
        )


def decompose(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    layers: Optional[Sequence[int]] = None,
    per_source: bool = False,
    texts: Optional[Float[Tensor, "n_texts d_out"]] = None,
    convention: Convention = "equal_share",
    normalize: bool = False,
    extra_hooks: Sequence[Hook] = (),
) -> Decomposition:
    """Split the image embedding into folded parts in one hooked forward pass.

    ``layers`` selects the layers whose heads (and (head, source) pieces) are kept (default: all);
    ``per_source`` keeps the [B, layers, H, N, D] pieces; ``texts`` (unit embeddings [K, D]) returns their
    scores [B, layers, H, N, K] through the pull-back instead. ``extra_hooks`` run in the same pass
    (e.g. interventions).
    """
    capture = DecompositionCapture(model, layers, per_source, texts, convention, normalize)
    with torch.no_grad():
        model.run_with_hooks(images, fwd_hooks=list(extra_hooks) + capture.hooks())
    return capture.finish()
