"""timm ``VisionTransformer`` → (ViTConfig, state dict) for HookedViT.

Read from the built modules: class token or not, register tokens, positional embeddings that skip the prefix
tokens (``no_embed_class``), the patch-embedding bias, ``norm_pre``, LayerScale (folded into W_O/b_O and
W_out/b_out: (x·W + b)·γ = x·(W·γ) + b·γ), the activation, the pooling (``global_pool`` token / avg / map),
``norm`` vs ``fc_norm`` and the classifier head. The forward of the port equals ``model(images)``: logits for
a classifier, the pooled features for ``num_classes=0``.

The MAP head (``AttentionPoolLatent``: SigLIP, ``global_pool="map"``) becomes an attention pool whose ``ln_k``
is the trunk's final ``norm`` (applied per token), with the pooler's MLP and its residual.

What follows the tower's own checks, the config (``_trunk_config``) and the weights (``_trunk_state``), is shared
with timm's ``Eva`` trunks (``convert.eva``).
"""

from __future__ import annotations

from typing import Callable, Optional

import einops
import torch
from torch import Tensor, nn

from vit_lens_clip.convert.support import unsupported
from vit_lens_clip.model.config import AttentionPoolConfig, ViTConfig


def _is(module: Optional[nn.Module], *names: str) -> bool:
    return module is not None and type(module).__name__ in names


def _identity(module: Optional[nn.Module]) -> bool:
    return module is None or isinstance(module, (nn.Identity, nn.Dropout))


def _layer_norm(module: nn.Module, where: str, tower: str) -> Optional[nn.Module]:
    """The LayerNorm (None for Identity); any other norm (RMSNorm, ...) is not supported."""
    if _identity(module):
        return None
    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        raise unsupported(tower, "timm", f"{where} is {type(module).__name__}, not an affine LayerNorm")
    return module


def _activation(act: nn.Module, tower: str) -> str:
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if type(act).__name__ == "QuickGELU":
        return "quick_gelu"
    if type(act).__name__ in ("GELUTanh", "GELU_tanh"):
        return "gelu_tanh"
    if type(act).__name__ == "GELU":  # timm.layers.GELU: exact erf GELU
        return "gelu"
    raise unsupported(tower, "timm", f"MLP activation {type(act).__name__}")


def _check_mlp(mlp: nn.Module, tower: str) -> str:
    if type(mlp).__name__ != "Mlp" or not _identity(getattr(mlp, "norm", None)):
        raise unsupported(tower, "timm", f"MLP {type(mlp).__name__} (SwiGLU / gated / normed MLPs are not ported)")
    return _activation(mlp.act, tower)


def _check_block(block: nn.Module, index: int, tower: str) -> None:
    if type(block).__name__ != "Block":
        raise unsupported(tower, "timm", f"block {index} is {type(block).__name__}")
    attn = block.attn
    extras = [n for n in ("q_norm", "k_norm", "norm") if not _identity(getattr(attn, n, None))]
    if getattr(attn, "gate", None) is not None:
        extras.append("gate")
    if type(attn).__name__ != "Attention" or extras:
        raise unsupported(tower, "timm", f"block {index}: attention {type(attn).__name__} with {extras or 'changes'}")
    _layer_norm(block.norm1, f"block {index} norm1", tower)
    _layer_norm(block.norm2, f"block {index} norm2", tower)


def _pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(int(v) for v in x)


def config_from_timm(model: nn.Module, name: Optional[str] = None) -> ViTConfig:
    """Read a ViTConfig off an instantiated timm VisionTransformer."""
    tower = type(model).__name__
    if tower != "VisionTransformer" or not hasattr(model, "blocks"):
        raise unsupported(tower, "timm")
    if getattr(model, "dynamic_img_size", False):
        raise unsupported(tower, "timm", "dynamic_img_size=True")
    if not _identity(getattr(model.patch_embed, "norm", None)):
        raise unsupported(tower, "timm", "a normalised patch embedding")
    if model.pos_embed is None:
        raise unsupported(tower, "timm", "no absolute position embedding")
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        _check_block(block, i, tower)
    act_fn = _check_mlp(blocks[0].mlp, tower)
    return _trunk_config(model, tower, act_fn, name or getattr(model, "default_cfg", {}).get("architecture", "timm"))


def _trunk_config(
    model: nn.Module, tower: str, act_fn: str, name: str, include_prefix: Optional[bool] = None, **fields
) -> ViTConfig:
    """The ViTConfig of a checked timm trunk (VisionTransformer or Eva): prefix tokens, final norm, pooling, head.

    The pooled vector is normed by ``norm`` (per token, before pooling) or ``fc_norm`` (after pooling), never
    both; a MAP head uses ``norm`` as its key/value norm. ``fields``: the further ViTConfig fields of the tower.
    """
    blocks = list(model.blocks)
    norm = _layer_norm(model.norm, "norm", tower)
    fc_norm = _layer_norm(model.fc_norm, "fc_norm", tower)
    if norm is not None and fc_norm is not None:
        raise unsupported(tower, "timm", "both norm and fc_norm")
    head = model.head
    if not (_identity(head) or isinstance(head, nn.Linear)):
        raise unsupported(tower, "timm", f"classifier head {type(head).__name__}")
    attn_pool, pool_type, d_pool = None, model.global_pool, model.embed_dim
    if model.attn_pool is not None:
        attn_pool, d_pool = _attention_pool_config(model, norm, tower, include_prefix)
        pool_type = "map"
    elif pool_type == "token":
        pool_type = "tok"
    elif pool_type != "avg":
        raise unsupported(tower, "timm", f"global_pool={model.global_pool!r} (token, avg and map are supported)")
    if pool_type == "avg" and getattr(model, "pool_include_prefix", False):
        raise unsupported(tower, "timm", "average pooling that includes the prefix tokens")
    eps_source = norm or fc_norm or _layer_norm(blocks[0].norm1, "norm1", tower)
    cfg = ViTConfig(
        n_layers=len(blocks),
        d_model=model.embed_dim,
        n_heads=blocks[0].attn.num_heads,
        d_mlp=blocks[0].mlp.fc1.out_features,
        output_dim=head.out_features if isinstance(head, nn.Linear) else d_pool,
        image_size=_pair(model.patch_embed.img_size),
        patch_size=_pair(model.patch_embed.patch_size),
        act_fn=act_fn,
        eps=eps_source.eps,
        pool_type=pool_type,
        has_ln_pre=not _identity(model.norm_pre),
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
    if type(pool).__name__ != "AttentionPoolLatent":
        raise unsupported(tower, "timm", f"attention pool {type(pool).__name__}")
    if pool.pos_embed is not None or not _identity(pool.q_norm) or not _identity(pool.k_norm):
        raise unsupported(tower, "timm", "a MAP head with its own position embedding or q/k norms")
    if pool.pool != "token" or pool.mlp is None:
        raise unsupported(tower, "timm", f"a MAP head with pool={pool.pool!r} / without its output MLP")
    if norm is None:
        raise unsupported(tower, "timm", "a MAP head on an unnormalised trunk")
    ln_mlp = _layer_norm(pool.norm, "attn_pool.norm", tower)
    if ln_mlp is None:
        raise unsupported(tower, "timm", "a MAP head without a norm before its MLP")
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
        act_fn=_check_mlp(pool.mlp, tower),
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


def _heads_in(weight: Tensor, bias: Optional[Tensor], n_heads: int, prefix: str, letter: str) -> dict[str, Tensor]:
    out = {f"{prefix}.W_{letter}": einops.rearrange(weight, "(h e) i -> h i e", h=n_heads)}
    b = bias if bias is not None else torch.zeros(weight.shape[0])
    out[f"{prefix}.b_{letter}"] = einops.rearrange(b, "(h e) -> h e", h=n_heads)
    return out


def _out_proj(linear: nn.Linear, n_heads: int, prefix: str, gamma: Optional[Tensor] = None) -> dict[str, Tensor]:
    W = einops.rearrange(linear.weight, "j (h e) -> h e j", h=n_heads)
    b = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    if gamma is not None:
        W, b = W * gamma, b * gamma
    return {f"{prefix}.W_O": W, f"{prefix}.b_O": b}


def _mlp(mlp: nn.Module, prefix: str, gamma: Optional[Tensor] = None) -> dict[str, Tensor]:
    W_out, b_out = mlp.fc2.weight.T, mlp.fc2.bias
    if gamma is not None:
        W_out, b_out = W_out * gamma, b_out * gamma
    return {f"{prefix}.W_in": mlp.fc1.weight.T, f"{prefix}.b_in": mlp.fc1.bias, f"{prefix}.W_out": W_out,
            f"{prefix}.b_out": b_out}


def _gamma(layer_scale: nn.Module) -> Optional[Tensor]:
    return layer_scale.gamma if hasattr(layer_scale, "gamma") else None


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


Gammas = Callable[[nn.Module], tuple[Optional[Tensor], Optional[Tensor]]]


def _trunk_state(model: nn.Module, cfg: ViTConfig, gammas: Gammas, rope: Optional[Tensor] = None) -> dict[str, Tensor]:
    """HookedViT weights of a timm trunk (VisionTransformer or Eva); ``gammas(block)``: its two LayerScales.

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
            sd.update(_heads_in(w, b, n, f"{p}.attn", letter))
        sd.update(_out_proj(block.attn.proj, n, f"{p}.attn", gamma_attn))
        sd.update(_mlp(block.mlp, f"{p}.mlp", gamma_mlp))
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


def state_dict_from_timm(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map timm weights to HookedViT names (LayerScale folded, prefix tokens split from the position table)."""
    return _trunk_state(model, cfg, lambda block: (_gamma(block.ls1), _gamma(block.ls2)))


def _map_state(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """The MAP head's weights (``AttentionPoolLatent``) under HookedViT's ``attn_pool.*`` names."""
    pool, hp = model.attn_pool, cfg.attention_pool.n_heads
    sd = {"attn_pool.query": pool.latent[0]}
    if isinstance(pool.q, nn.Linear):
        sd.update(_heads_in(pool.q.weight, pool.q.bias, hp, "attn_pool.attn", "Q"))
    else:  # q_proj=False: the latent is the query
        sd.update(_heads_in(torch.eye(cfg.attention_pool.d_attn), None, hp, "attn_pool.attn", "Q"))
    w_k, w_v = pool.kv.weight.chunk(2)
    b_k, b_v = pool.kv.bias.chunk(2) if pool.kv.bias is not None else (None, None)
    sd.update(_heads_in(w_k, b_k, hp, "attn_pool.attn", "K"))
    sd.update(_heads_in(w_v, b_v, hp, "attn_pool.attn", "V"))
    sd.update(_out_proj(pool.proj, hp, "attn_pool.attn"))
    sd.update(_mlp(pool.mlp, "attn_pool.mlp"))
    return sd


def convert_timm(model: nn.Module, name: Optional[str] = None) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, state dict) of a timm VisionTransformer; ``HookedViT.from_converted`` builds the model."""
    cfg = config_from_timm(model, name)
    return cfg, state_dict_from_timm(model, cfg)
