"""Raw pieces of the pooled vector, per kind of readout: what to hook, and how the kept activations add up to r.

**A row readout** (the class token, the patch mean, a text's EOT token; ``model.pooling``). The pooled residual
is r = e + Σ_l attn_l + Σ_l mlp_l at that row, and with the pooled query's attention A_{l,h}[m]

    attn_l = Σ_h Σ_m A_{l,h}[m] · v_{l,h,m} W_O^h + b_O,   v_{l,h,m} = ln_1(x_m) W_V^h + b_V^h.

The output bias b_O is shared equally among the layer's H·N (head, source) pieces, so a head's piece is
z_pool^h W_O^h + b_O/H and a (head, source) piece A[m] v_m W_O^h + b_O/(H·N). Text scores of the (head, source)
pieces need only v · (W_O^h G) with the texts' pull-back G (``fold.LNFold.pull_back``), never [B, L, H, N, D].

**An attentional pooler** (CoCa; MAP: SigLIP, timm ``global_pool="map"``, PE-Core). The trunk's last residual
x_m = Σ_c c_m is a sum of the components c at every token m; the pooler's query 0 attends over its sources with
A[h, m] (fixed, read from the forward pass) through ln_k applied PER TOKEN (μ_m, σ_m, frozen):

    a = Σ_h Σ_m A[h, m] (x̂_m W_V^h + b_V^h) W_O^h + b_O,   x̂_m = γ ⊙ (x_m − μ_m)/σ_m + β
    r = a (+ u = mlp(ln_mlp(a)) for a MAP pooler with an MLP)

Because Σ_m A[h, m] = 1, a = Σ_c T(c) + K₀ exactly, with

    T(c) = Σ_m Σ_h A[h, m] (γ ⊙ c_m/σ_m) W_V^h W_O^h,   K₀ = −T(μ) + Σ_h (β W_V^h + b_V^h) W_O^h + b_O.

With K components (the pooler's MLP u is one more, as the paper treats MLPs) sharing K₀ equally, the pieces
p_c = T(c) + K₀/K and p_u = u + K₀/K sum to r. A head (l, h) is c = z_{l,h} W_O^h + b_O/H at every token (share
K₀/(K·H)); its (head, token m) pieces are the per-token terms of T (share K₀/(K·H·N)). Tokens the pooler does
not attend to (prefix tokens with ``include_prefix=False``) carry only their share. The pooler's own heads are
a second split of r − p_u: pool head h' = z0_{h'} W_O^{h'} + b_O/H_p − s_u·K₀/H_p with share (1 − s_u)/H_p, where
s_u = 1/K with a pooler MLP and 0 without; per source, the same divided by the number of sources.

**The patch mean of a per-token final LayerNorm** (a timm ViT with ``global_pool="avg"`` and no ``fc_norm``): the
norm is applied at every token and the normed patches are averaged, y = mean_{m∈P} LN(x_m)·P + b. With each token's
μ_m, σ_m frozen this is the attentional pooler's case with a uniform pattern over the patches and no value map:

    r' = mean_{m∈P} LN(x_m) = Σ_c T(c) + K₀,   T(c) = mean_{m∈P} γ ⊙ c_m/σ_m,   K₀ = β − T(μ),

and r' goes to the output through P and b alone. A (head, source s) piece is γ ⊙ Ā[h, s]·v_s W_O^h with the
σ-weighted pattern Ā[h, s] = mean_{m∈P} A[h, m, s]/σ_m (plus its shares of T(b_O) and K₀), so it sums to its head.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.decompose.assemble import RawParts, stack_layers
from vit_lens_clip.decompose.fold import Convention, ln_statistics
from vit_lens_clip.decompose.output_fold import BiasedFold, ProjectionFold
from vit_lens_clip.model.pooling import Readout

Reduce = Callable[[Tensor], Tensor]
PullBack = Callable[[], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


def _z_normed(attn) -> bool:
    """EVA02's sub-LayerNorm on the concatenated heads: per-head parts are read from ``hook_result``."""
    return getattr(attn, "ln_z", None) is not None


class RowPieces:
    """Pieces at a readout's pooled row (module docstring, first part), for either tower."""

    def __init__(self, model, readout: Readout, layers: Sequence[int], per_source: bool,
                 pool_index: Optional[Int[Tensor, " batch"]] = None, embed_hooks: Sequence[str] = ("hook_embed",)):
        self.model, self.readout, self.layers, self.per_source = model, readout, list(layers), per_source
        self.pool_index, self.embed_hooks = pool_index, tuple(embed_hooks)

    def _pool(self, t: Tensor) -> Tensor:
        return self.readout.pool(t, self.pool_index)

    def _pool_heads(self, z: Tensor) -> Tensor:
        return self._pool(z.flatten(-2)).unflatten(-1, z.shape[-2:])

    def _pool_results(self, result: Tensor) -> Tensor:
        """[B, pos, H, d] → [B, H, d] at the pooled row."""
        return self._pool(result.transpose(1, 2))

    def hook_names(self, with_texts: bool, value_scores: Optional[Callable[[int], Reduce]]) -> dict[str, Reduce]:
        """Hook name → reduction of the activation kept; ``value_scores(l)`` reduces values during the pass."""
        names: dict[str, Reduce] = {name: self._pool for name in self.embed_hooks}
        names["hook_pooled"] = _identity
        for l in range(self.model.cfg.n_layers):
            names[f"blocks.{l}.hook_attn_out"] = self._pool
            names[f"blocks.{l}.hook_mlp_out"] = self._pool
        for l in self.layers:
            if _z_normed(self.model.blocks[l].attn):  # heads and their text scores from the frozen-statistics pieces
                names[f"blocks.{l}.attn.hook_result"] = self._pool_results
                if self.per_source or with_texts:
                    names[f"blocks.{l}.attn.hook_result_per_source"] = _identity
                continue
            names[f"blocks.{l}.attn.hook_z"] = self._pool_heads
            if self.per_source:
                names[f"blocks.{l}.attn.hook_result_per_source"] = _identity
            if with_texts:
                names[f"blocks.{l}.attn.hook_v"] = _identity if value_scores is None else value_scores(l)
                names[f"blocks.{l}.attn.hook_pooled_pattern"] = _identity
        return names

    def raw(self, store: dict[str, Tensor], dtype: torch.dtype, pull_back: Optional[Tensor],
            values_reduced: bool) -> RawParts:
        """The pieces of r; with ``pull_back`` G [d, T+1] also the (head, source) pieces' dots with G."""
        m, L, H = self.model, self.model.cfg.n_layers, self.model.cfg.n_heads
        get = lambda name: store[name].to(dtype)  # noqa: E731
        heads, sources, dots = [], [], []
        for l in self.layers:
            attn = m.blocks[l].attn
            W_O, b_O = attn.W_O.detach().to(dtype), attn.b_O.detach().to(dtype)
            if _z_normed(attn):
                heads.append(get(f"blocks.{l}.attn.hook_result") + b_O / H)
                if self.per_source or pull_back is not None:
                    per_source = get(f"blocks.{l}.attn.hook_result_per_source").transpose(1, 2)
                    per_source = per_source + b_O / (H * per_source.shape[2])
                    if self.per_source:
                        sources.append(per_source)
                    if pull_back is not None:
                        dots.append(per_source @ pull_back)
                continue
            heads.append(torch.einsum("bhe,hed->bhd", get(f"blocks.{l}.attn.hook_z"), W_O) + b_O / H)
            if self.per_source:
                per_source = get(f"blocks.{l}.attn.hook_result_per_source").transpose(1, 2)  # [B, H, N, d]
                sources.append(per_source + b_O / (H * per_source.shape[2]))
            if pull_back is not None:
                if values_reduced:
                    value_scores = get(f"blocks.{l}.attn.hook_v")  # [B, H, N, T+1], reduced in the hook
                else:
                    value_scores = value_dots(get(f"blocks.{l}.attn.hook_v"), W_O, pull_back)
                A = get(f"blocks.{l}.attn.hook_pooled_pattern")  # [B, H, N]
                dots.append(A[..., None] * value_scores + (b_O @ pull_back) / (H * A.shape[-1]))
        return RawParts(
            pooled=get("hook_pooled"),
            embed=sum(get(name) for name in self.embed_hooks),
            attns=stack_layers(store, "blocks.{}.hook_attn_out", range(L)).to(dtype),
            mlps=stack_layers(store, "blocks.{}.hook_mlp_out", range(L)).to(dtype),
            n_heads=H,
            heads=torch.stack(heads, 1) if heads else None,
            sources=torch.stack(sources, 1) if sources else None,
            source_dots=torch.stack(dots, 1) if dots else None,
        )


def value_dots(
    values: Float[Tensor, "batch n_src n_heads d_head"],
    W_O: Float[Tensor, "n_heads d_head d"],
    pull_back: Float[Tensor, "d n_texts_plus_1"],
) -> Float[Tensor, "batch n_heads n_src n_texts_plus_1"]:
    """v_m · (W_O^h G): all that the (head, source) text scores need from the values."""
    value_dirs = torch.einsum("hed,dk->hek", W_O.to(pull_back.dtype), pull_back)
    return torch.einsum("bmhe,hek->bhmk", values.to(pull_back.dtype), value_dirs)


class PoolerPieces:
    """Pieces through an attentional pooler's query 0 (module docstring, second part): CoCa and MAP alike."""

    def __init__(self, model, layers: Sequence[int], per_source: bool, convention: Convention):
        if convention != "equal_share" and model.ln_final is None:
            raise ValueError(
                f"convention={convention!r} is not defined for attention-pooled towers without a final LayerNorm "
                f"({model.cfg.model_name}): the trunk's norm is folded per token with equal shares and no norm "
                "follows the pooler; use convention='equal_share'")
        self.model, self.layers, self.per_source = model, list(layers), per_source
        self.pool = model.attn_pool

    def hook_names(self, with_texts: bool, value_scores=None) -> dict[str, Reduce]:
        L = self.model.cfg.n_layers
        names: dict[str, Reduce] = {
            "hook_embed": _identity, "hook_pooled": _identity, f"blocks.{L - 1}.hook_resid_post": _identity,
            "attn_pool.attn.hook_pooled_pattern": _identity, "attn_pool.attn.hook_z": lambda z: z[:, 0]}
        if self.pool.mlp is not None:
            names["attn_pool.hook_mlp_out"] = lambda u: u[:, 0]
        for l in range(L):
            names[f"blocks.{l}.hook_attn_out"] = _identity
            names[f"blocks.{l}.hook_mlp_out"] = _identity
        for l in self.layers:
            z_normed = _z_normed(self.model.blocks[l].attn)
            names[f"blocks.{l}.attn.hook_result" if z_normed else f"blocks.{l}.attn.hook_z"] = _identity
        if self.per_source:
            names["attn_pool.attn.hook_result_per_source"] = _identity
        return names

    def raw(self, store: dict[str, Tensor], dtype: torch.dtype, pull_back: Optional[Tensor],
            values_reduced: bool) -> RawParts:
        m, pool = self.model, self.pool
        L, H, N = m.cfg.n_layers, m.cfg.n_heads, m.cfg.n_ctx
        get = lambda name: store[name].to(dtype)  # noqa: E731
        through = PerTokenFold(pool, get(f"blocks.{L - 1}.hook_resid_post"), get("attn_pool.attn.hook_pooled_pattern"),
                               m.cfg.n_prefix)
        K = 1 + 2 * L + (pool.mlp is not None)
        K0 = through.K0  # [B, D_pool]
        heads, sources = [], []
        for l in self.layers:
            attn = m.blocks[l].attn
            if _z_normed(attn):  # per-token head results under the sub-LayerNorm's frozen statistics
                result = get(f"blocks.{l}.attn.hook_result")
            else:
                result = torch.einsum("bnhe,hed->bnhd", get(f"blocks.{l}.attn.hook_z"), attn.W_O.detach().to(dtype))
            result = result + attn.b_O.detach().to(dtype) / H  # [B, N, H, d]
            heads.append(through.summed(result) + K0[:, None] / (K * H))
            if self.per_source or pull_back is not None:
                sources.append(through.per_token(result).transpose(1, 2) + K0[:, None, None] / (K * H * N))
        pool_mlp = get("attn_pool.hook_mlp_out") + K0 / K if pool.mlp is not None else None
        raw = RawParts(
            pooled=get("hook_pooled"),
            embed=through.summed(get("hook_embed")) + K0 / K,
            attns=through.summed(stack_layers(store, "blocks.{}.hook_attn_out", range(L), 2).to(dtype)) + K0[:, None] / K,
            mlps=through.summed(stack_layers(store, "blocks.{}.hook_mlp_out", range(L), 2).to(dtype)) + K0[:, None] / K,
            n_heads=H, heads=torch.stack(heads, 1) if heads else None, pool_mlp=pool_mlp,
            sources=torch.stack(sources, 1) if sources else None, keep_sources=self.per_source)
        # the pooler's own heads: a second split of r − p_u (module docstring)
        mlp_share = 1 / K if pool.mlp is not None else 0.0
        Hp = pool.attn.n_heads
        W_O, b_O = pool.attn.W_O.detach().to(dtype), pool.attn.b_O.detach().to(dtype)
        head_offset = b_O / Hp - mlp_share * K0[:, None] / Hp  # [B, 1, D]
        pool_heads = torch.einsum("bhe,hed->bhd", get("attn_pool.attn.hook_z"), W_O) + head_offset
        raw.extras["pool_heads"] = (pool_heads, (1 - mlp_share) / Hp)
        if self.per_source:
            per_src = get("attn_pool.attn.hook_result_per_source").transpose(1, 2)  # [B, Hp, n_src, D]
            n_src = per_src.shape[2]
            raw.extras["pool_head_sources"] = (per_src + head_offset[:, :, None] / n_src, (1 - mlp_share) / (Hp * n_src))
        return raw


class NormedMeanPieces:
    """Pieces of the patch mean of per-token normed tokens (module docstring, third part)."""

    def __init__(self, model, layers: Sequence[int], per_source: bool, convention: Convention):
        if convention != "equal_share":
            raise ValueError(
                f"convention={convention!r} is not defined for a tower whose final LayerNorm is applied at every token "
                f"before the patches are averaged ({model.cfg.model_name}): each token's mean is folded with equal "
                "shares and no norm follows the pooling; use convention='equal_share'")
        self.model, self.layers, self.per_source = model, list(layers), per_source
        self.n_prefix = model.cfg.n_prefix

    def hook_names(self, with_texts: bool, value_scores=None) -> dict[str, Reduce]:
        L = self.model.cfg.n_layers
        names: dict[str, Reduce] = {"hook_embed": _identity, "hook_pooled": _identity,
                                    f"blocks.{L - 1}.hook_resid_post": _identity}
        for l in range(L):
            names[f"blocks.{l}.hook_attn_out"] = _identity
            names[f"blocks.{l}.hook_mlp_out"] = _identity
        for l in self.layers:
            names[f"blocks.{l}.attn.hook_z"] = _identity
            if self.per_source or with_texts:
                names[f"blocks.{l}.attn.hook_pattern"] = _identity
                names[f"blocks.{l}.attn.hook_v"] = _identity
        return names

    def output_fold(self, store: dict[str, Tensor], dtype: torch.dtype, convention: Convention):
        """No norm after pooling: the projection and its bias only."""
        fold = ProjectionFold(self.model.W_proj.detach().to(dtype))
        bias = self.model.b_proj
        return fold if bias is None else BiasedFold(fold, bias.detach().to(dtype))

    def raw(self, store: dict[str, Tensor], dtype: torch.dtype, pull_back: Optional[Tensor],
            values_reduced: bool) -> RawParts:
        m, ln = self.model, self.model.ln_final
        L, H = m.cfg.n_layers, m.cfg.n_heads
        get = lambda name: store[name].to(dtype)  # noqa: E731
        patches = slice(self.n_prefix, None)
        resid = get(f"blocks.{L - 1}.hook_resid_post")
        mu, sigma = ln_statistics(resid, ln.eps)
        inv_sigma = 1 / sigma.to(dtype)[:, patches]  # [B, N_p]
        gamma, beta = ln.w.detach().to(dtype), ln.b.detach().to(dtype)

        def T(c: Tensor) -> Tensor:
            """mean over the patches of γ ⊙ c_m/σ_m, for c [B, pos, *parts, d]."""
            weights = inv_sigma.reshape(*inv_sigma.shape, *([1] * (c.ndim - 2)))
            return gamma * (c[:, patches] * weights).mean(1)

        K = 1 + 2 * L
        K0 = beta - T(mu.to(dtype)[..., None].expand_as(resid))  # [B, d]
        heads, sources = [], []
        for l in self.layers:
            attn = m.blocks[l].attn
            W_O, b_O = attn.W_O.detach().to(dtype), attn.b_O.detach().to(dtype)
            result = torch.einsum("bnhe,hed->bnhd", get(f"blocks.{l}.attn.hook_z"), W_O) + b_O / H
            heads.append(T(result) + K0[:, None] / (K * H))
            if self.per_source or pull_back is not None:
                pattern = get(f"blocks.{l}.attn.hook_pattern")  # [B, H, query, source]
                weighted = (pattern[:, :, patches] * inv_sigma[:, None, :, None]).mean(2)  # Ā [B, H, N]
                values = torch.einsum("bshe,hed->bhsd", get(f"blocks.{l}.attn.hook_v"), W_O)  # [B, H, N, d]
                N = values.shape[2]
                shared = (T(b_O.expand(*resid.shape[:2], -1)) / (H * N) + K0 / (K * H * N))[:, None, None]
                sources.append(gamma * weighted[..., None] * values + shared)
        return RawParts(
            pooled=T(resid) + K0,
            embed=T(get("hook_embed")) + K0 / K,
            attns=T(stack_layers(store, "blocks.{}.hook_attn_out", range(L), 2).to(dtype)) + K0[:, None] / K,
            mlps=T(stack_layers(store, "blocks.{}.hook_mlp_out", range(L), 2).to(dtype)) + K0[:, None] / K,
            n_heads=H, heads=torch.stack(heads, 1) if heads else None,
            sources=torch.stack(sources, 1) if sources else None, keep_sources=self.per_source)


class PerTokenFold:
    """T(c) of the module docstring, per token or summed over tokens, with ln_k's statistics frozen."""

    def __init__(self, pool, resid: Float[Tensor, "batch n d"], pattern: Float[Tensor, "batch n_heads n_src"],
                 n_prefix: int):
        dtype = resid.dtype
        mu, sigma = ln_statistics(resid, pool.ln_k.eps)
        self.sigma = sigma.to(dtype)[..., None]  # [B, N, 1]
        if not pool.include_prefix:  # the pooler's sources are the patches: prefix tokens get weight 0
            pattern = torch.cat([pattern.new_zeros(*pattern.shape[:2], n_prefix), pattern], dim=-1)
        self.A = pattern  # [B, Hp, N]
        self.gamma, beta = pool.ln_k.w.detach().to(dtype), pool.ln_k.b.detach().to(dtype)
        W_V, b_V = pool.attn.W_V.detach().to(dtype), pool.attn.b_V.detach().to(dtype)
        W_O, b_O = pool.attn.W_O.detach().to(dtype), pool.attn.b_O.detach().to(dtype)
        self.W_VO = torch.einsum("hie,hed->hid", W_V, W_O)  # [Hp, d, D_pool]
        mean = mu.to(dtype)[..., None].expand_as(resid)
        self.K0 = (-self.summed(mean) + torch.einsum("i,hid->d", beta, self.W_VO)
                   + torch.einsum("he,hed->d", b_V, W_O) + b_O)  # [B, D_pool]

    def _scaled(self, c: Tensor) -> Tensor:
        return self.gamma * c / self.sigma.reshape(*self.sigma.shape[:2], *([1] * (c.ndim - 3)), 1)

    def per_token(self, c: Float[Tensor, "batch n *parts d"]) -> Float[Tensor, "batch n *parts d_pool"]:
        """Σ_h A[h, m] (γ ⊙ c_m/σ_m) W_VO^h for every token m."""
        A = self.A.reshape(*self.A.shape, *([1] * (c.ndim - 3)))  # [B, Hp, N, *1]
        return torch.einsum("bhn...,bn...i,hid->bn...d", A, self._scaled(c), self.W_VO)

    def summed(self, c: Float[Tensor, "batch n *parts d"]) -> Float[Tensor, "batch *parts d_pool"]:
        """T(c) = Σ_m Σ_h A[h, m] (γ ⊙ c_m/σ_m) W_VO^h."""
        weighted = torch.einsum("bhn,bn...i->bh...i", self.A, self._scaled(c))
        return torch.einsum("bh...i,hid->b...d", weighted, self.W_VO)
