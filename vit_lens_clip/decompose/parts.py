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

from vit_lens_clip.decompose.fold import Convention, embedding_norms
from vit_lens_clip.decompose.map_pool import finish_map_pool, map_pool_hook_names
from vit_lens_clip.decompose.output_fold import output_fold
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.validation import check_embeddings, layer_indices

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
    extra: dict[str, Tensor] = field(default_factory=dict)

    def total(self) -> Float[Tensor, "batch d_out"]:
        """embed + Σ_l attn_l + Σ_l mlp_l (+ the MAP pooler's MLP part, ``extra["pool_mlp"]``, if any)."""
        total = self.embed + self.attns.sum(1) + self.mlps.sum(1)
        return total + self.extra["pool_mlp"] if "pool_mlp" in self.extra else total

    def head_scores(self, texts: Float[Tensor, "n_texts d_out"]) -> Float[Tensor, "batch n_kept n_heads n_texts"]:
        """ĉ_{l,h} · t for unit text embeddings t."""
        check_embeddings(texts, self.heads.shape[-1], "texts")
        return self.heads @ texts.to(self.heads).T


def _pool(model: HookedViT) -> Callable[[Tensor], Tensor]:
    return model.pool_tokens


def _check_supported(model: HookedViT) -> None:
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
        reduce_values: bool = True,
    ):
        """``reduce_values``: contract the values with the texts' pull-back during the pass (keeps [B, H, N, K+1]
        per layer instead of the values [B, N, H, d_head]); pass False when ``texts`` is replaced before
        ``finish()``."""
        _check_supported(model)
        self.model = model
        self.layers = layer_indices(layers, model.cfg.n_layers)  # out-of-range indices raise, never wrap
        self.per_source, self.convention, self.normalize = per_source, convention, normalize
        if texts is not None:
            check_embeddings(texts, model.cfg.output_dim, "texts")
        self.texts = None if texts is None else texts.float()
        self.store: dict[str, Tensor] = {}
        self._pull_back: Optional[Tensor] = None
        self.reduce_values = reduce_values
        self._texts_in_pass = self.texts

    # -------------------------------------------------------------- hooks
    def _keep(self, key: str, reduce: Callable[[Tensor], Tensor]) -> Callable:
        def hook(t: Tensor, hook) -> None:
            self.store[key] = self._own(reduce(t.detach()))

        return hook

    @staticmethod
    def _own(kept: Tensor) -> Tensor:
        """A copy when ``kept`` is a view into a larger tensor, so that the whole activation can be freed."""
        if kept.untyped_storage().nbytes() > kept.numel() * kept.element_size():
            return kept.clone()
        return kept

    def _value_scores(self, layer: int) -> Callable[[Tensor], Tensor]:
        """v [B, N, H, e] → v · (W_O^h G) [B, H, N, K+1]: all the text scores need from the values (G: pull-back)."""
        attn = self.model.blocks[layer].attn

        def reduce(v: Tensor) -> Tensor:
            if self._pull_back is None:
                m = self.model
                # the pull-back reads only γ and P (no image statistics): any pooled vector builds the fold
                placeholder = torch.zeros(1, m.W_proj.shape[0], device=m.W_proj.device)
                fold = output_fold(m, placeholder, self.convention)
                self._pull_back = fold.pull_back(self.texts.to(m.W_proj.device))  # [d, K+1]
            value_dirs = torch.einsum("hed,dk->hek", attn.W_O.float(), self._pull_back)
            return torch.einsum("bmhe,hek->bhmk", v.float(), value_dirs)

        return reduce

    def hook_names(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """Hook name → reduction applied to the activation before it is kept."""
        if self.model.cfg.pool_type == "map":
            return map_pool_hook_names(self.model, self.layers, self.per_source)
        if self.model.attn_pool is not None:
            return self._attention_pool_hook_names()
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
                names[f"blocks.{l}.attn.hook_v"] = self._value_scores(l) if self.reduce_values else ident
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
        if self.model.cfg.pool_type == "map":
            parts = finish_map_pool(self.model, self.store, self.layers, self.per_source, self.texts,
                                    self.convention, self.normalize)
            self.store = {}
            return Decomposition(**parts)
        if self.model.attn_pool is not None:
            return self._finish_attention_pool()
        m, s, cfg = self.model, self.store, self.model.cfg
        L, H, N = cfg.n_layers, cfg.n_heads, cfg.n_ctx
        K = 2 * L + 1
        fold = output_fold(m, s["hook_pooled"], self.convention)
        embedding = s["hook_image_embed"].float()
        norm = embedding_norms(embedding, self.normalize)
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
                if self.reduce_values:
                    if self.texts is not self._texts_in_pass:
                        raise ValueError("texts changed after the pass; use DecompositionCapture(reduce_values=False)")
                    value_scores = s[f"blocks.{l}.attn.hook_v"]  # [B, H, N, K+1], reduced in the hook
                else:
                    value_dirs = torch.einsum("hed,dk->hek", W_O, G)
                    value_scores = torch.einsum("bmhe,hek->bhmk", s[f"blocks.{l}.attn.hook_v"].float(), value_dirs)
                A = s[f"blocks.{l}.attn.hook_pooled_pattern"].float()
                dots = A[..., None] * value_scores + (b_O @ G) / (H * N)
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


    # ------------------------------------------------- CoCa: an attentional pooler on top of the tower
    def _attention_pool_hook_names(self) -> dict[str, Callable[[Tensor], Tensor]]:
        ident = lambda t: t  # noqa: E731
        names = {"hook_embed": ident, "hook_pooled": ident, "hook_image_embed": ident,
                 f"blocks.{self.model.cfg.n_layers - 1}.hook_resid_post": ident,
                 "attn_pool.attn.hook_pooled_pattern": ident, "attn_pool.attn.hook_z": lambda z: z[:, 0]}
        for l in range(self.model.cfg.n_layers):
            names[f"blocks.{l}.hook_attn_out"] = ident
            names[f"blocks.{l}.hook_mlp_out"] = ident
        for l in self.layers:
            names[f"blocks.{l}.attn.hook_z"] = ident
        if self.per_source:
            names["attn_pool.attn.hook_result_per_source"] = ident
        if self.texts is not None:
            raise NotImplementedError("text scores of (head, source) pieces are not implemented for CoCa's pooler")
        return names

    def _finish_attention_pool(self) -> Decomposition:
        """CoCa: r = Σ_h Σ_m A[h, m] (ln_k(x_m) W_V^h + b_V^h) W_O^h + b_O with fixed A (query 0's pattern).

        With ln_k(x_m) = γ_k ⊙ (x_m − μ_m)/σ_m + β_k and x_m = Σ_c c_m, each tower piece c (shares w_c) reaches
        r as p_c = T(c) + w_c·K0, where T(c) = Σ_m Σ_h A[h, m] (γ_k ⊙ c_m/σ_m) W_V^h W_O^h and
        K0 = −T(μ·1) + Σ_h (β_k W_V^h + b_V^h) W_O^h + b_O, so Σ_c p_c = r. Each p_c is then folded through
        ln_final like any piece. The pooler's own heads give a second, alternative split of r:
        ``extra["pool_heads"]`` [B, H_p, D] (and ``extra["pool_head_sources"]`` [B, H_p, N, D]).
        """
        m, s, cfg = self.model, self.store, self.model.cfg
        pool = m.attn_pool
        L, H = cfg.n_layers, cfg.n_heads
        K = 2 * L + 1
        A = s["attn_pool.attn.hook_pooled_pattern"].float()  # [B, Hp, N]
        x = s[f"blocks.{L - 1}.hook_resid_post"].float()
        mu = x.mean(-1, keepdim=True)
        sigma = ((x - mu).pow(2).mean(-1, keepdim=True) + pool.ln_k.eps).sqrt()  # [B, N, 1]
        gamma_k, beta_k = pool.ln_k.w.float(), pool.ln_k.b.float()
        W_V, b_V = pool.attn.W_V.float(), pool.attn.b_V.float()
        W_O, b_O = pool.attn.W_O.float(), pool.attn.b_O.float()
        W_VO = torch.einsum("hie,hed->hid", W_V, W_O)  # [Hp, d, D_pool]

        def through(c: Tensor) -> Tensor:
            """T(c) for per-token pieces c [B, N, *parts, d] → [B, *parts, D_pool]."""
            scaled = gamma_k * c / sigma.reshape(*sigma.shape[:2], *([1] * (c.ndim - 3)), 1)
            weighted = torch.einsum("bhn,bn...i->bh...i", A, scaled)
            return torch.einsum("bh...i,hid->b...d", weighted, W_VO)

        K0 = -through(mu.expand_as(x)) + torch.einsum("i,hid->d", beta_k, W_VO) + (
            torch.einsum("he,hed->d", b_V, W_O) + b_O)
        fold = output_fold(m, s["hook_pooled"], self.convention)
        embedding = s["hook_image_embed"].float()
        norm = embedding_norms(embedding, self.normalize)
        per_image = lambda t: t / norm.reshape(-1, *([1] * (t.ndim - 1)))  # noqa: E731

        raw = {"embed": through(s["hook_embed"].float()) + K0 / K}
        raw["attns"] = torch.stack([through(s[f"blocks.{l}.hook_attn_out"].float()) for l in range(L)], 1) + K0[:, None] / K
        raw["mlps"] = torch.stack([through(s[f"blocks.{l}.hook_mlp_out"].float()) for l in range(L)], 1) + K0[:, None] / K
        raw["pooled"] = s["hook_pooled"].float()
        heads = []
        for l in self.layers:
            attn = m.blocks[l].attn
            result = torch.einsum("bnhe,hed->bnhd", s[f"blocks.{l}.attn.hook_z"].float(), attn.W_O.float())
            heads.append(through(result + attn.b_O.float() / H) + K0[:, None] / (K * H))
        if heads:
            raw["heads"] = torch.stack(heads, 1)
        Hp, N = A.shape[1], A.shape[2]
        z0 = s["attn_pool.attn.hook_z"].float()  # [B, Hp, d_head]
        extra = {"pool_heads": per_image(fold.fold(torch.einsum("bhe,hed->bhd", z0, W_O) + b_O / Hp, 1 / Hp))}
        if self.per_source:
            piece = s["attn_pool.attn.hook_result_per_source"].float().transpose(1, 2) + b_O / (Hp * N)
            extra["pool_head_sources"] = per_image(fold.fold(piece, 1 / (Hp * N)))
        self.store = {}
        return Decomposition(
            embed=per_image(fold.fold(raw["embed"], 1 / K)),
            attns=per_image(fold.fold(raw["attns"], 1 / K)),
            mlps=per_image(fold.fold(raw["mlps"], 1 / K)),
            heads=per_image(fold.fold(raw["heads"], 1 / (K * H))) if heads else embedding.new_zeros(embedding.shape[0], 0, H, embedding.shape[-1]),
            layers=list(self.layers),
            embedding=per_image(embedding),
            convention=self.convention,
            normalized=self.normalize,
            raw=raw,
            extra=extra,
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
