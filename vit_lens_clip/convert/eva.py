"""timm ``Eva`` towers with rotary attention (Perception Encoder, open_clip ``PE-Core-*``) → (ViTConfig, state dict).

The rotary embedding only turns q and k of the patch tokens; attention stays softmax(q'k'ᵀ/√d)·v, so the value
path, and with it every decomposition, is unchanged. The port copies the source's rotary table for its image
size ([sin | cos] per patch) and rotates after ``hook_q``/``hook_k`` (``hook_rot_q``/``hook_rot_k`` see the
result). What is not exact is refused by name: a sub-LayerNorm on the attention output (EVA02's
``scale_attn_inner``) mixes the heads before W_O, SwiGLU / normed MLPs (EVA02), q/k norms, gates, and the
depth-mixed rotary variant.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from vit_lens_clip.convert.support import unsupported
from vit_lens_clip.convert.timm import (
    _activation,
    _attention_pool_config,
    _heads_in,
    _identity,
    _layer_norm,
    _layer_norms,
    _map_state,
    _mlp,
    _out_proj,
    _pair,
)
from vit_lens_clip.model.config import ViTConfig


def _check_block(block: nn.Module, index: int, tower: str) -> None:
    attn = block.attn
    if type(block).__name__ != "EvaBlock" or type(attn).__name__ not in ("EvaAttention", "AttentionRope"):
        raise unsupported(tower, "timm", f"block {index} is {type(block).__name__} / {type(attn).__name__}")
    if not _identity(attn.norm):
        raise unsupported(tower, "timm (EVA02)", "a sub-LayerNorm on the attention output mixes the heads before "
                                                 "W_O, so per-head results would not be exact")
    if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads:
        raise unsupported(tower, "timm", f"block {index}: grouped-query attention")
    if not (_identity(attn.q_norm) and _identity(attn.k_norm)) or getattr(attn, "gate", None) is not None:
        raise unsupported(tower, "timm", f"block {index}: q/k norms or a gated attention")
    mlp = block.mlp
    if type(mlp).__name__ != "Mlp" or not _identity(getattr(mlp, "norm", None)):
        raise unsupported(tower, "timm (EVA02)", f"MLP {type(mlp).__name__} (SwiGLU / normed MLPs are not ported)")
    _layer_norm(block.norm1, f"block {index} norm1", tower)
    _layer_norm(block.norm2, f"block {index} norm2", tower)


def _rope_table(model: nn.Module, n_patches: int, d_head: int, tower: str) -> Optional[Tensor]:
    if model.rope is None:
        return None
    if getattr(model, "rope_mixed", False):
        raise unsupported(tower, "timm", "depth-mixed rotary embeddings")
    table = model.rope.get_embed() if hasattr(model.rope, "feat_shape") else None
    if table is None or tuple(table.shape) != (n_patches, 2 * d_head):
        raise unsupported(tower, "timm", f"a rotary table of shape {None if table is None else tuple(table.shape)}")
    return table.detach()


def config_from_eva(model: nn.Module, name: Optional[str] = None) -> ViTConfig:
    """Read a ViTConfig off an instantiated timm Eva (PE-Core)."""
    tower = type(model).__name__
    if tower != "Eva":
        raise unsupported(tower, "timm")
    if getattr(model, "dynamic_img_size", False):
        raise unsupported(tower, "timm", "dynamic_img_size=True")
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        _check_block(block, i, tower)
    norm = _layer_norm(model.norm, "norm", tower)
    fc_norm = _layer_norm(model.fc_norm, "fc_norm", tower)
    if norm is not None and fc_norm is not None:
        raise unsupported(tower, "timm", "both norm and fc_norm")
    head = model.head
    if not (_identity(head) or isinstance(head, nn.Linear)):
        raise unsupported(tower, "timm", f"classifier head {type(head).__name__}")
    attn_pool, pool_type, d_pool = None, model.global_pool, model.embed_dim
    if model.attn_pool is not None:
        attn_pool, d_pool = _attention_pool_config(model, norm, tower, include_prefix=True)
        pool_type = "map"
    elif pool_type == "token":
        pool_type = "tok"
    elif pool_type != "avg":
        raise unsupported(tower, "timm", f"global_pool={model.global_pool!r}")
    n_registers = model.num_prefix_tokens - int(model.cls_token is not None)
    attn = blocks[0].attn
    cfg = ViTConfig(
        n_layers=len(blocks),
        d_model=model.embed_dim,
        n_heads=attn.num_heads,
        d_mlp=blocks[0].mlp.fc1.out_features,
        output_dim=head.out_features if isinstance(head, nn.Linear) else d_pool,
        image_size=_pair(model.patch_embed.img_size),
        patch_size=_pair(model.patch_embed.patch_size),
        act_fn=_activation(blocks[0].mlp.act, tower),
        eps=(norm or fc_norm or blocks[0].norm1).eps,
        pool_type=pool_type,
        has_ln_pre=not _identity(model.norm_pre),
        final_ln_after_pool=pool_type != "map" and fc_norm is not None,
        attention_pool=attn_pool,
        class_token=model.cls_token is not None,
        n_registers=n_registers,
        patch_bias=model.patch_embed.proj.bias is not None,
        has_ln_final=(fc_norm is not None) if pool_type == "map" else (norm or fc_norm) is not None,
        proj_bias=isinstance(head, nn.Linear) and head.bias is not None,
        rotary=("half" if attn.rotate_half else "interleave") if model.rope is not None else "",
        in_channels=model.patch_embed.proj.in_channels,
        model_name=name or getattr(model, "default_cfg", {}).get("architecture", "eva"),
        dtype=model.patch_embed.proj.weight.dtype,
    )
    if any(b.attn.num_prefix_tokens != cfg.n_prefix for b in blocks if cfg.rotary):
        raise unsupported(tower, "timm", "rotary embeddings on prefix tokens")
    cfg.ln_eps = {k: v.eps for k, v in _layer_norms(model, cfg).items() if v.eps != cfg.eps}
    return cfg


def _qkv(attn: nn.Module) -> tuple[tuple[Tensor, Optional[Tensor]], ...]:
    """(weight, bias) of q, k and v, fused or separate."""
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


def state_dict_from_eva(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map Eva weights to HookedViT names (LayerScale folded, the rotary table copied)."""
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
    if cfg.rotary:
        sd["rope"] = _rope_table(model, cfg.n_patches, cfg.d_head, type(model).__name__)
    for name, ln in _layer_norms(model, cfg).items():
        sd[f"{name}.w"], sd[f"{name}.b"] = ln.weight, ln.bias
    for layer, block in enumerate(model.blocks):
        p = f"blocks.{layer}"
        for letter, (w, b) in zip("QKV", _qkv(block.attn)):
            sd.update(_heads_in(w, b, n, f"{p}.attn", letter))
        sd.update(_out_proj(block.attn.proj, n, f"{p}.attn", block.gamma_1))
        sd.update(_mlp(block.mlp, f"{p}.mlp", block.gamma_2))
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


def convert_eva(model: nn.Module, name: Optional[str] = None) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, state dict) of a timm Eva with rotary attention (PE-Core)."""
    cfg = config_from_eva(model, name)
    return cfg, state_dict_from_eva(model, cfg)
