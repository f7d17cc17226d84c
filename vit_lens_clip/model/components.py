"""HookedViT building blocks, with TransformerLens parameter and hook names.

Expensive hook points (per-head results, the per-source contributions to the pooled token, the attention
pattern) are computed only when a hook is attached to them; otherwise the fused path runs.
"""

from __future__ import annotations

import math
from typing import Optional

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from vit_lens_clip.model.config import ViTConfig
from vit_lens_clip.model.pooling import NoPooledTokenError, Readout, TokenReadout, compute_dtype, readout_for


def _hooked(*points: HookPoint) -> bool:
    """True when any of these hook points has a forward hook attached."""
    return any(p.fwd_hooks for p in points)


def _affine(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """x · W + b with W [d_in, d_out], fused (addmm) and without copying W."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).reshape(*x.shape[:-1], W.shape[-1])


def quick_gelu(x: Tensor) -> Tensor:
    """QuickGELU, x·σ(1.702x), the activation OpenAI's CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


def rotate(x: Float[Tensor, "batch pos head d_head"], table: Float[Tensor, "n_rot two_d_head"], half: bool) -> Tensor:
    """Rotary position embedding of the last ``n_rot`` positions: x·cos + rot(x)·sin (``table`` = [sin, cos]).

    rot pairs neighbouring channels, (x0, x1) → (−x1, x0), or the two halves (``half``), (a, b) → (−b, a).
    """
    sin, cos = (t[:, None, :].to(x.dtype) for t in table.chunk(2, -1))
    n_rot = table.shape[0]
    fixed, moving = x[:, : x.shape[1] - n_rot], x[:, x.shape[1] - n_rot :]
    if half:
        a, b = moving.chunk(2, -1)
        turned = torch.cat([-b, a], -1)
    else:
        turned = torch.stack([-moving[..., 1::2], moving[..., ::2]], -1).reshape(moving.shape)
    return torch.cat([fixed, moving * cos + turned * sin], dim=1)


def activation(x: Tensor, act_fn: str) -> Tensor:
    """GELU (erf), GELU with the tanh approximation (SigLIP), QuickGELU, or SiLU (SwiGLU's gate)."""
    if act_fn == "quick_gelu":
        return quick_gelu(x)
    if act_fn == "silu":
        return F.silu(x)
    return F.gelu(x, approximate="tanh" if act_fn == "gelu_tanh" else "none")


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens hooks.

    ``hook_scale`` = sqrt(var(x) + eps) (shape [..., 1]), ``hook_normalized`` = (x − mean(x)) / scale.
    Statistics are taken in ``compute_dtype`` (float32, or float64 for float64 inputs) and the result is cast
    back to the input dtype.
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        dtype, work = x.dtype, compute_dtype(x.dtype)
        w, b = self.w.to(work), self.b.to(work)
        if not _hooked(self.hook_scale, self.hook_normalized):
            return F.layer_norm(x.to(work), (x.shape[-1],), w, b, self.eps).to(dtype)
        x = x.to(work)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        return (x * w + b).to(dtype)


class Attention(nn.Module):
    """Multi-head attention in TransformerLens layout.

    W_Q, W_K, W_V: [n_heads, d_in, d_head]; W_O: [n_heads, d_head, d_out]; b_O: [d_out].
    ``result[b, q, h] = z[b, q, h] · W_O[h]`` and ``attn_out = Σ_h result + b_O``.

    ``readout`` (model.pooling) names the pooled query: the class token, the mean over patch queries, query 0
    of an attentional pooler, or a per-sequence ``pool_index`` such as a text's EOT token; ``None`` for the
    trunk of an attention-pooled tower, which has no pooled row. The pooled query gets two extra hook points,
    computed only when hooked:

    - ``hook_pooled_pattern`` [batch, n_heads, n_src]: the pooled query's attention weights A[h, m];
    - ``hook_result_per_source`` [batch, n_src, n_heads, d_out]: A[h, m] · (v[m, h] · W_O[h]). Summed over
      sources and heads, plus b_O, it is the attention output at the pooled token. The [N, N, H, d] tensor is
      never built: only the pooled query row is used.

    Both are writable: the change an edit makes to the pooled output, Σ(edited pieces) − Σ(original pieces),
    is written back by the readout into the row(s) the pool is read from. Unedited, the change is exactly zero.
    ``attn_mask`` is an additive mask broadcastable to [batch, n_heads, query, source].
    """

    def __init__(
        self,
        d_in: int,
        n_heads: int,
        d_head: int,
        d_out: int,
        d_kv_in: Optional[int] = None,
        readout: Optional[Readout] = None,
        rotary: str = "",
        z_norm_eps: Optional[float] = None,
    ):
        super().__init__()
        d_kv_in = d_kv_in or d_in
        self.n_heads, self.d_head, self.readout = n_heads, d_head, readout
        self.rotary = rotary
        # EVA02: LayerNorm over the concatenated heads before W_O; per-head hooks use its frozen statistics
        self.ln_z = LayerNorm(n_heads * d_head, z_norm_eps) if z_norm_eps is not None else None
        if rotary:  # PE-Core: q and k of the patch tokens are rotated; these hooks see them after the rotation
            self.hook_rot_q = HookPoint()  # [batch, query, head, d_head]
            self.hook_rot_k = HookPoint()  # [batch, source, head, d_head]
        self.W_Q = nn.Parameter(torch.empty(n_heads, d_in, d_head))
        self.W_K = nn.Parameter(torch.empty(n_heads, d_kv_in, d_head))
        self.W_V = nn.Parameter(torch.empty(n_heads, d_kv_in, d_head))
        self.W_O = nn.Parameter(torch.empty(n_heads, d_head, d_out))
        self.b_Q = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_K = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_V = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_O = nn.Parameter(torch.zeros(d_out))
        for w in (self.W_Q, self.W_K, self.W_V, self.W_O):
            nn.init.normal_(w, std=d_in**-0.5)
        self.hook_q = HookPoint()  # [batch, query, head, d_head]
        self.hook_k = HookPoint()  # [batch, source, head, d_head]
        self.hook_v = HookPoint()  # [batch, source, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query, source]
        self.hook_pattern = HookPoint()  # [batch, head, query, source]
        self.hook_z = HookPoint()  # [batch, query, head, d_head]
        self.hook_result = HookPoint()  # [batch, query, head, d_out]
        if readout is not None:  # the trunk of an attention-pooled tower has no pooled row: its pooler has these
            self.hook_pooled_pattern = HookPoint()  # [batch, head, source]
            self.hook_result_per_source = HookPoint()  # [batch, source, head, d_out]

    def _project(self, x: Tensor, W: Tensor, b: Tensor) -> Tensor:
        """x · W[h] + b[h] for every head: [..., d] → [..., n_heads, d_head]."""
        out = _affine(x, einops.rearrange(W, "h d e -> d (h e)"), b.reshape(-1))
        return out.unflatten(-1, (self.n_heads, self.d_head))

    def forward(
        self,
        query_input: Float[Tensor, "batch n_query d_in"],
        kv_input: Optional[Float[Tensor, "batch n_src d_kv"]] = None,
        attn_mask: Optional[Float[Tensor, "batch_or_1 heads_or_1 n_query n_src"]] = None,
        pool_index: Optional[Int[Tensor, " batch"]] = None,
        rope: Optional[Float[Tensor, "n_patches two_d_head"]] = None,
    ) -> Float[Tensor, "batch n_query d_out"]:
        kv_input = query_input if kv_input is None else kv_input
        q = self.hook_q(self._project(query_input, self.W_Q, self.b_Q))
        k = self.hook_k(self._project(kv_input, self.W_K, self.b_K))
        if self.rotary:
            q = self.hook_rot_q(rotate(q, rope, self.rotary == "half"))
            k = self.hook_rot_k(rotate(k, rope, self.rotary == "half"))
        v = self.hook_v(self._project(kv_input, self.W_V, self.b_V))
        want_pooled = self.readout is not None and _hooked(self.hook_pooled_pattern, self.hook_result_per_source)
        want_pattern = _hooked(self.hook_attn_scores, self.hook_pattern) or (
            want_pooled and self.readout.needs_full_pattern
        )

        pattern = None
        if want_pattern:
            work = compute_dtype(q.dtype)
            scores = torch.einsum("bqhe,bshe->bhqs", q.to(work), k.to(work)) / math.sqrt(self.d_head)
            if attn_mask is not None:
                scores = scores + attn_mask.to(work)
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(scores.softmax(-1)).to(v.dtype)
            z = torch.einsum("bhqs,bshe->bqhe", pattern, v)
        else:
            mask = None if attn_mask is None else attn_mask.to(q.dtype)
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            ).transpose(1, 2)
        z = self.hook_z(z)
        if self.ln_z is not None:
            return self._z_norm_out(z, q, k, v, pattern, attn_mask, pool_index, want_pooled)

        if _hooked(self.hook_result):
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
            out = result.sum(-2) + self.b_O
        else:
            out = _affine(z.flatten(-2), self.W_O.flatten(0, 1), self.b_O)

        if want_pooled:
            original = self.readout.pooled_pattern(q, k, pattern, attn_mask, pool_index)
            out = self.readout.add_to_pooled(out, self._pooled_edit(v, original), pool_index)
        return out

    def _z_norm_out(self, z: Tensor, q: Tensor, k: Tensor, v: Tensor, pattern: Optional[Tensor],
                    attn_mask: Optional[Tensor], pool_index: Optional[Tensor], want_pooled: bool) -> Tensor:
        """W_O after the sub-LayerNorm on the concatenated heads (EVA02), y = γ ⊙ (z − μ)/σ + β.

        With μ, σ of each query frozen, head h's result is (γ_h ⊙ z_h/σ) W_O^h + κ/H, κ = (β − γ·μ/σ) W_O
        (every head takes an equal share of the mean and β term); Σ_h result + b_O is the output exactly. The
        pooled pieces are A[h, m]/σ · (γ_h ⊙ v_m^h) W_O^h + κ/(H·N) (docs/decomposition.md).
        """
        flat = z.flatten(-2)
        if not (_hooked(self.hook_result) or want_pooled):
            return _affine(self.ln_z(flat), self.W_O.flatten(0, 1), self.b_O)
        self.ln_z(flat)  # its hooks see the statistics
        work = compute_dtype(z.dtype)
        gamma, beta = self.ln_z.w.to(work), self.ln_z.b.to(work)
        W_O = self.W_O.to(work)
        mu = flat.to(work).mean(-1, keepdim=True)
        inv_sigma = ((flat.to(work) - mu).pow(2).mean(-1, keepdim=True) + self.ln_z.eps).rsqrt()  # [B, Q, 1]
        kappa = torch.einsum("bqi,id->bqd", beta - gamma * mu * inv_sigma, W_O.flatten(0, 1))  # [B, Q, d]
        gamma_h = gamma.unflatten(-1, (self.n_heads, self.d_head))
        scaled = z.to(work) * gamma_h * inv_sigma[..., None]
        result = self.hook_result(
            (torch.einsum("bqhe,hed->bqhd", scaled, W_O) + kappa[:, :, None] / self.n_heads).to(z.dtype))
        out = result.sum(-2) + self.b_O
        if want_pooled:
            if self.readout.needs_full_pattern:
                weighted = self.readout.pool(pattern.to(work) * inv_sigma[:, None], pool_index)  # Σ_q w_q A_q/σ_q
            else:
                weighted = None
            original = self.readout.pooled_pattern(q, k, pattern, attn_mask, pool_index).to(work)
            mean_inv_sigma = self.readout.pool(inv_sigma, pool_index)[:, :, None]  # [B, 1, 1]
            weighted = original * mean_inv_sigma if weighted is None else weighted
            value_out = torch.einsum("bshe,hed->bshd", v.to(work) * gamma_h, W_O)
            const = self.readout.pool(kappa, pool_index)[:, None, None] / (self.n_heads * v.shape[1])
            out = self.readout.add_to_pooled(
                out, self._pooled_edit_scaled(value_out, original, weighted, mean_inv_sigma, const), pool_index)
        return out

    def _pooled_edit_scaled(self, value_out: Tensor, original: Tensor, weighted: Tensor, mean_inv_sigma: Tensor,
                            const: Tensor) -> Tensor:
        """``_pooled_edit`` under a frozen sub-LayerNorm: pieces Ã[h, m] (γ_h ⊙ v_m^h) W_O^h + κ/(H·N), with
        Ã = Σ_q w_q A_q[h, m]/σ_q; an edit ΔA of the pooled pattern moves Ã by ΔA · Σ_q w_q/σ_q."""
        pooled = self.hook_pooled_pattern(original.clone().to(self.W_O.dtype)).to(original.dtype)
        edited = weighted + (pooled - original) * mean_inv_sigma
        before = (einops.rearrange(weighted, "b h s -> b s h 1") * value_out + const).sum((1, 2))
        pieces = einops.rearrange(edited, "b h s -> b s h 1") * value_out + const
        if _hooked(self.hook_result_per_source):
            pieces = self.hook_result_per_source(pieces.to(self.W_O.dtype)).to(pieces.dtype)
        return pieces.sum((1, 2)) - before

    def _pooled_edit(
        self,
        v: Float[Tensor, "batch n_src n_heads d_head"],
        original: Float[Tensor, "batch n_heads n_src"],
    ) -> Float[Tensor, "batch d_out"]:
        """Run the pooled hooks; the change their edits make to the pooled output (exactly 0 when unedited)."""
        pooled = self.hook_pooled_pattern(original.clone())
        if _hooked(self.hook_result_per_source):
            value_out = torch.einsum("bshe,hed->bshd", v, self.W_O)
            # the same product and reduction for both, so that an unedited run gives a change of exactly 0
            before = (einops.rearrange(original, "b h s -> b s h 1").to(value_out.dtype) * value_out).sum((1, 2))
            pieces = einops.rearrange(pooled, "b h s -> b s h 1").to(value_out.dtype) * value_out
            return self.hook_result_per_source(pieces).sum((1, 2)) - before
        z_change = torch.einsum("bhs,bshe->bhe", (pooled - original).to(v.dtype), v)
        return torch.einsum("bhe,hed->bd", z_change, self.W_O)

    def pooled_pattern(
        self,
        q: Float[Tensor, "batch n_query n_heads d_head"],
        k: Float[Tensor, "batch n_src n_heads d_head"],
        pattern: Optional[Float[Tensor, "batch n_heads n_query n_src"]] = None,
        attn_mask: Optional[Tensor] = None,
        pool_index: Optional[Int[Tensor, " batch"]] = None,
    ) -> Float[Tensor, "batch n_heads n_src"]:
        """Attention weights of the pooled query (see ``model.pooling``)."""
        if self.readout is None:
            raise NoPooledTokenError("this tower is read by its attention pooler: hook attn_pool.attn.hook_pooled_pattern")
        return self.readout.pooled_pattern(q, k, pattern, attn_mask, pool_index)


class MLP(nn.Module):
    """mlp_out = act(x · W_in + b_in) · W_out + b_out, with W_in [d_model, d_mlp], W_out [d_mlp, d_model]."""

    def __init__(self, d_model: int, d_mlp: int, act_fn: str = "gelu"):
        super().__init__()
        self.act_fn = act_fn
        self.W_in = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.W_in, std=d_model**-0.5)
        nn.init.normal_(self.W_out, std=d_mlp**-0.5)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(_affine(x, self.W_in, self.b_in))
        post = self.hook_post(activation(pre, self.act_fn))
        return _affine(post, self.W_out, self.b_out)


class GatedMLP(nn.Module):
    """SwiGLU (EVA02): post = silu(x·W_gate + b_gate) ⊙ (x·W_in + b_in); mlp_out = ln?(post)·W_out + b_out.

    Hooks as TransformerLens' gated MLP: ``hook_pre`` the gate's pre-activation, ``hook_pre_linear`` the linear
    branch, ``hook_post`` their product [batch, pos, d_mlp]; ``ln`` (EVA02-CLIP's ``scale_mlp``) has its own
    ``hook_scale``/``hook_normalized``. The MLP stays one part of the decomposition.
    """

    def __init__(self, d_model: int, d_mlp: int, act_fn: str = "silu", norm_eps: Optional[float] = None):
        super().__init__()
        self.act_fn = act_fn
        self.W_gate = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_gate = nn.Parameter(torch.zeros(d_mlp))
        self.W_in = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        for w, fan_in in ((self.W_gate, d_model), (self.W_in, d_model), (self.W_out, d_mlp)):
            nn.init.normal_(w, std=fan_in**-0.5)
        self.ln = LayerNorm(d_mlp, norm_eps) if norm_eps is not None else None
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(_affine(x, self.W_gate, self.b_gate))
        linear = self.hook_pre_linear(_affine(x, self.W_in, self.b_in))
        post = self.hook_post(activation(pre, self.act_fn) * linear)
        return _affine(self.ln(post) if self.ln is not None else post, self.W_out, self.b_out)


class PreLNBlock(nn.Module):
    """Pre-LN residual block around a given attention (image or text tower):
    resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

    LayerScale, where the source model has it, is folded into W_O/b_O and W_out/b_out at conversion.
    """

    def __init__(self, layer: int, attn: Attention, d_model: int, d_mlp: int, act_fn: str, eps: float,
                 mlp: Optional[nn.Module] = None):
        super().__init__()
        self.layer = layer
        self.ln1 = LayerNorm(d_model, eps)
        self.attn = attn
        self.ln2 = LayerNorm(d_model, eps)
        self.mlp = mlp if mlp is not None else MLP(d_model, d_mlp, act_fn)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def residual(self, resid_pre: Float[Tensor, "batch pos d_model"], **attn_inputs) -> Float[Tensor, "batch pos d_model"]:
        """The block's forward; ``attn_inputs`` go to the attention (rotary table, mask, pooled-token index)."""
        resid_pre = self.hook_resid_pre(resid_pre)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(self.attn(self.ln1(resid_pre), **attn_inputs)))
        return self.hook_resid_post(resid_mid + self.hook_mlp_out(self.mlp(self.ln2(resid_mid))))


class TransformerBlock(PreLNBlock):
    """The image tower's block (``PreLNBlock``): its attention knows the pooled token and any rotary table."""

    def __init__(self, cfg: ViTConfig, layer: int):
        attn = Attention(cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_model,
                         readout=readout_for(cfg.pool_type, cfg.n_prefix), rotary=cfg.rotary,
                         z_norm_eps=cfg.eps if cfg.attn_z_norm else None)
        mlp = None
        if cfg.mlp_type == "swiglu":
            mlp = GatedMLP(cfg.d_model, cfg.d_mlp, cfg.act_fn, cfg.eps if cfg.mlp_norm else None)
        elif cfg.mlp_norm:
            raise ValueError("mlp_norm is supported with mlp_type='swiglu' only")
        super().__init__(layer, attn, cfg.d_model, cfg.d_mlp, cfg.act_fn, cfg.eps, mlp)

    def forward(
        self, resid_pre: Float[Tensor, "batch pos d_model"], rope: Optional[Tensor] = None
    ) -> Float[Tensor, "batch pos d_model"]:
        return self.residual(resid_pre, rope=rope)


class AttentionPool(nn.Module):
    """An attentional pooler (config: ``AttentionPoolConfig``); the queries are parameters.

    CoCa: ``out = attn(ln_q(query), ln_k(tokens))``. MAP (SigLIP): ``a = attn(query, ln_k(tokens))`` with
    ``ln_k`` the trunk's final norm, then ``out = a + mlp(ln_mlp(a))``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        pc = cfg.attention_pool
        assert pc is not None
        self.include_prefix, self.n_prefix = pc.include_prefix, cfg.n_prefix
        self.query = nn.Parameter(torch.zeros(pc.n_queries, pc.d_query))
        self.ln_q = LayerNorm(pc.d_query, pc.eps) if pc.query_norm else None
        self.ln_k = LayerNorm(pc.d_context, pc.eps)
        self.attn = Attention(pc.d_query, pc.n_heads, pc.d_head, pc.d_model, d_kv_in=pc.d_context,
                              readout=TokenReadout(0))
        self.hook_attn_out = HookPoint()  # [batch, n_queries, d_model]
        if pc.d_mlp:
            self.ln_mlp = LayerNorm(pc.d_model, pc.eps)
            self.mlp = MLP(pc.d_model, pc.d_mlp, pc.act_fn)
            self.hook_mlp_out = HookPoint()  # [batch, n_queries, d_model]
        else:
            self.ln_mlp = self.mlp = None
        self.hook_out = HookPoint()  # [batch, n_queries, d_model]

    def sources(self, tokens: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch n_src d"]:
        """The tokens the queries attend to: all, or the patches only (``include_prefix=False``)."""
        return tokens if self.include_prefix else tokens[:, self.n_prefix :]

    def forward(self, tokens: Float[Tensor, "batch pos d_context"]) -> Float[Tensor, "batch n_queries d_pool"]:
        queries = self.query if self.ln_q is None else self.ln_q(self.query)
        queries = queries.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        out = self.hook_attn_out(self.attn(queries, self.ln_k(self.sources(tokens))))
        if self.mlp is not None:
            out = out + self.hook_mlp_out(self.mlp(self.ln_mlp(out)))
        return self.hook_out(out)
