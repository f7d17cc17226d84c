"""What timm's ``VisionTransformer`` and ``Eva`` trunks share → HookedViT: prefix tokens, final norm, pooling
(token / avg / the MAP head), classifier head, and the weights of their blocks.

Each family checks its own blocks first (``convert.timm``, ``convert.pe_core``); then ``trunk_config`` and
``trunk_state`` read the rest. LayerScale is folded into W_O/b_O and W_out/b_out: (x·W + b)·γ = x·(W·γ) + b·γ.

The MAP head (``AttentionPoolLatent``: SigLIP, PE-Core, ``global_pool="map"``) becomes an attention pool whose
``ln_k`` is the trunk's final ``norm`` (applied per token), with the pooler's MLP and its residual.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from timm.layers import GELU as TimmGELU
from timm.layers import AttentionPoolLatent, GELUTanh, Mlp, QuickGELU
from torch import Tensor, nn

from vit_lens_clip.convert.common import affine_layer_norm, heads_in, heads_out, is_identity, unsupported_tower
from vit_lens_clip.model.config import AttentionPoolConfig, ViTConfig

Gammas = Callable[[nn.Module], tuple[Optional[Tensor], Optional[Tensor]]]


def mlp_activation(act: nn.Module, tower: str) -> str:
    """The ViTConfig ``act_fn`` of a timm MLP's activation module."""
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, GELUTanh):
        return "gelu_tanh"
    if isinstance(act, TimmGELU):  # timm's own module: exact erf GELU
        return "gelu"
    raise unsupported_tower(tower, "timm", f"MLP activation {type(act).__name__}")


def check_mlp(mlp: nn.Module, tower: str, origin: str = "timm") -> str:
    """The activation of a plain two-layer ``Mlp``; gated, SwiGLU and normed MLPs are refused."""
    if type(mlp) is not Mlp or not is_identity(getattr(mlp, "norm", None)):
        raise unsupported_tower(tower, origin, f"MLP {type(mlp).__name__} (SwiGLU / gated / normed MLPs are not ported)")
    return mlp_activation(mlp.act, tower)


def _pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(int(v) for v in x)


def trunk_config(
    model: nn.Module, tower: str, act_fn: str, name: str, include_prefix: Optional[bool] = None, **fields
) -> ViTConfig:
    """The ViTConfig of a checked timm trunk (VisionTransformer or Eva): prefix tokens, final norm, pooling, head.

    The pooled vector is normed by ``norm`` (per token, before pooling) or ``fc_norm`` (after pooling), never
    both; a MAP head uses ``norm`` as its key/value norm. ``fields``: the further ViTConfig fields of the tower.
    """
    blocks = list(model.blocks)
    norm = affine_layer_norm(model.norm, "norm", tower)
    fc_norm = affine_layer_norm(model.fc_norm, "fc_norm", tower)
    if norm is not None and fc_norm is not None:
        raise unsupported_tower(tower, "timm", "both norm and fc_norm")
    head = model.head
    if not (is_identity(head) or isinstance(head, nn.Linear)):
        raise unsupported_tower(tower, "timm", f"classifier head {type(head).__name__}")
    attn_pool, pool_type, d_pool = None, model.global_pool, model.embed_dim
    if model.attn_pool is not None:
        attn_pool, d_pool = _attention_pool_config(model, norm, tower, include_prefix)
        pool_type = "map"
    elif pool_type == "token":
        pool_type = "tok"
    elif pool_type != "avg":
        raise unsupported_tower(tower, "timm", f"global_pool={model.global_pool!r} (token, avg and map are supported)")
    if pool_type == "avg" and getattr(model, "pool_include_prefix", False):
        raise unsupported_tower(tower, "timm", "average pooling that includes the prefix tokens")
    eps_source = norm or fc_norm or affine_layer_norm(blocks[0].norm1, "norm1", tower)
    cfg = ViTConfig(
        n_layers=len(blocks),
        d_model=model.embed_dim,
        n_heads=blocks[0].attn.num_heads,
        d_mlp=fields.pop("d_mlp", None) or blocks[0].mlp.fc1.out_features,
        output_dim=head.out_features if isinstance(head, nn.Linear) else d_pool,
        image_size=_pair(model.patch_embed.img_size),
        patch_size=_pair(model.patch_embed.patch_size),
        act_fn=act_fn,
        eps=eps_source.eps,
        pool_type=pool_type,
        has_ln_pre=not is_identity(model.norm_pre),
        final_ln_after_pool=pool_type != "map" and fc_norm is not None,
        attention_pool=attn_pool,
        class_token=model.cls_token is not None,
        n_registers=model.num_prefix_tokens - int(model.cls_token is not None),
        patch_bias=model.patch_embed.proj.bias is not None,
        has_ln_final=(fc_norm is not None) if pool_type == "map" else (norm or fc_norm) is not None,
        proj_bias=isinstance(head, nn.Linear) and head.bias is not None,
        in_channels=model.patch_embed.proj.in_channels,
        model_name=name,
        dtype=model.patch_embed.proj.weight.dtype,
        **fields,
    )
    cfg.ln_eps = {k: v.eps for k, v in _layer_norms(model, cfg).items() if v.eps != cfg.eps}
    return cfg


def _attention_pool_config(
    model: nn.Module, norm: Optional[nn.Module], tower: str, include_prefix: Optional[bool] = None
) -> tuple[AttentionPoolConfig, int]:
    pool = model.attn_pool
    if type(pool) is not AttentionPoolLatent:
        raise unsupported_tower(tower, "timm", f"attention pool {type(pool).__name__}")
    if pool.pos_embed is not None or not is_identity(pool.q_norm) or not is_identity(pool.k_norm):
        raise unsupported_tower(tower, "timm", "a MAP head with its own position embedding or q/k norms")
    if pool.pool != "token" or pool.mlp is None:
        raise unsupported_tower(tower, "timm", f"a MAP head with pool={pool.pool!r} / without its output MLP")
    if norm is None:
        raise unsupported_tower(tower, "timm", "a MAP head on an unnormalised trunk")
    ln_mlp = affine_layer_norm(pool.norm, "attn_pool.norm", tower)
    if ln_mlp is None:
        raise unsupported_tower(tower, "timm", "a MAP head without a norm before its MLP")
    d_out = pool.proj.out_features
    config = AttentionPoolConfig(
        n_queries=pool.latent_len,
        n_heads=pool.num_heads,
        d_model=d_out,
        d_context=pool.kv.in_features,
        eps=ln_mlp.eps,
        d_query=pool.latent_dim,
        d_attn=pool.num_heads * pool.head_dim,
        query_norm=False,
        d_mlp=pool.mlp.fc1.out_features,
        act_fn=check_mlp(pool.mlp, tower),
        include_prefix=include_prefix if include_prefix is not None
        else bool(getattr(model, "pool_include_prefix", False)) or model.num_prefix_tokens == 0,
    )
    return config, d_out


def _layer_norms(model: nn.Module, cfg: ViTConfig) -> dict[str, nn.Module]:
    """HookedViT LayerNorm name → the timm LayerNorm it is ported from."""
    out = {}
    if cfg.has_ln_pre:
        out["ln_pre"] = model.norm_pre
    for i, block in enumerate(model.blocks):
        out[f"blocks.{i}.ln1"], out[f"blocks.{i}.ln2"] = block.norm1, block.norm2
    if cfg.pool_type == "map":
        out["attn_pool.ln_k"], out["attn_pool.ln_mlp"] = model.norm, model.attn_pool.norm
        if cfg.has_ln_final:
            out["ln_final"] = model.fc_norm
    elif cfg.has_ln_final:
        out["ln_final"] = model.fc_norm if cfg.final_ln_after_pool else model.norm
    return out


def _mlp(mlp: nn.Module, prefix: str, gamma: Optional[Tensor] = None) -> dict[str, Tensor]:
    W_out, b_out = mlp.fc2.weight.T, mlp.fc2.bias
    if gamma is not None:
        W_out, b_out = W_out * gamma, b_out * gamma
    return {f"{prefix}.W_in": mlp.fc1.weight.T, f"{prefix}.b_in": mlp.fc1.bias, f"{prefix}.W_out": W_out,
            f"{prefix}.b_out": b_out}


def _qkv(attn: nn.Module) -> tuple[tuple[Tensor, Optional[Tensor]], ...]:
    """(weight, bias) of q, k and v, fused (with one bias or Eva's separate q/k/v biases) or separate."""
    if attn.qkv is not None:
        ws = attn.qkv.weight.chunk(3)
        if getattr(attn, "q_bias", None) is not None:
            bs = (attn.q_bias, attn.k_bias, attn.v_bias)
        elif attn.qkv.bias is not None:
            bs = attn.qkv.bias.chunk(3)
        else:
            bs = (None,) * 3
        return tuple(zip(ws, bs))
    return tuple((p.weight, p.bias) for p in (attn.q_proj, attn.k_proj, attn.v_proj))


def trunk_state(model: nn.Module, cfg: ViTConfig, gammas: Gammas, rope: Optional[Tensor] = None,
                mlp_state: Callable[[nn.Module, str, Optional[Tensor]], dict[str, Tensor]] = None) -> dict[str, Tensor]:
    """HookedViT weights of a timm trunk (VisionTransformer or Eva); ``gammas(block)``: its two LayerScales;
    ``mlp_state(mlp, prefix, gamma)``: a block MLP's weights when it is not a plain ``Mlp`` (EVA02's SwiGLU).

    LayerScale is folded into W_O/b_O and W_out/b_out; without a position table, or with one that skips the
    prefix tokens (``no_embed_class``), the prefix tokens get a zero position.
    """
    d, n = cfg.d_model, cfg.n_heads
    pos = model.pos_embed[0] if model.pos_embed is not None else torch.zeros(cfg.n_patches, d)
    if model.pos_embed is None or model.no_embed_class:
        pos = torch.cat([pos.new_zeros(cfg.n_prefix, d), pos])
    sd: dict[str, Tensor] = {"W_patch": model.patch_embed.proj.weight, "W_pos": pos}
    if cfg.patch_bias:
        sd["b_patch"] = model.patch_embed.proj.bias
    if cfg.class_token:
        sd["class_embedding"] = model.cls_token.reshape(d)
    if cfg.n_registers:
        sd["register_tokens"] = model.reg_token.reshape(cfg.n_registers, d)
    if rope is not None:
        sd["rope"] = rope
    for name, ln in _layer_norms(model, cfg).items():
        sd[f"{name}.w"], sd[f"{name}.b"] = ln.weight, ln.bias
    for layer, block in enumerate(model.blocks):
        p, (gamma_attn, gamma_mlp) = f"blocks.{layer}", gammas(block)
        for letter, (w, b) in zip("QKV", _qkv(block.attn)):
            sd.update(heads_in(w, b, n, f"{p}.attn", letter))
        sd.update(heads_out(block.attn.proj.weight, block.attn.proj.bias, n, f"{p}.attn", gamma_attn))
        sd.update((mlp_state or _mlp)(block.mlp, f"{p}.mlp", gamma_mlp))
    if cfg.pool_type == "map":
        sd.update(_map_state(model, cfg))
    head = model.head
    if isinstance(head, nn.Linear):
        sd["W_proj"] = head.weight.T
        if head.bias is not None:
            sd["b_proj"] = head.bias
    else:
        sd["W_proj"] = torch.eye(cfg.d_pool)
    return {k: v.detach() for k, v in sd.items()}


def _map_state(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """The MAP head's weights (``AttentionPoolLatent``) under HookedViT's ``attn_pool.*`` names."""
    pool, hp = model.attn_pool, cfg.attention_pool.n_heads
    sd = {"attn_pool.query": pool.latent[0]}
    if isinstance(pool.q, nn.Linear):
        sd.update(heads_in(pool.q.weight, pool.q.bias, hp, "attn_pool.attn", "Q"))
    else:  # q_proj=False: the latent is the query
        sd.update(heads_in(torch.eye(cfg.attention_pool.d_attn), None, hp, "attn_pool.attn", "Q"))
    w_k, w_v = pool.kv.weight.chunk(2)
    b_k, b_v = pool.kv.bias.chunk(2) if pool.kv.bias is not None else (None, None)
    sd.update(heads_in(w_k, b_k, hp, "attn_pool.attn", "K"))
    sd.update(heads_in(w_v, b_v, hp, "attn_pool.attn", "V"))
    sd.update(heads_out(pool.proj.weight, pool.proj.bias, hp, "attn_pool.attn"))
    sd.update(_mlp(pool.mlp, "attn_pool.mlp"))
    return sd
