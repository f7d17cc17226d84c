"""Perception Encoder (PE-Core: timm ``Eva`` towers with rotary attention, open_clip ``PE-Core-*``) →
(ViTConfig, state dict).

The rotary embedding only turns q and k of the patch tokens; attention stays softmax(q'k'ᵀ/√d)·v, so the value
path, and with it every decomposition, is unchanged. The port copies the source's rotary table for its image
size ([sin | cos] per patch) and rotates after ``hook_q``/``hook_k`` (``hook_rot_q``/``hook_rot_k`` see the
result). EVA02's blocks (a sub-LayerNorm on the heads, SwiGLU) are ported by ``convert.eva02``, which shares
``rope_table``; q/k norms, gates and the depth-mixed rotary variant are refused by name.

The trunk's config and weights are read by ``convert.timm_trunk``; this file checks the Eva blocks and copies
the rotary table. ``is_pe_core_name`` tells a PE-Core timm name from the other Eva towers.
"""

from __future__ import annotations

from typing import Optional

from timm.layers import AttentionRope
from timm.models.eva import Eva, EvaAttention, EvaBlock
from torch import Tensor, nn

from vit_lens_clip.convert.common import affine_layer_norm, is_identity, unsupported_tower
from vit_lens_clip.convert.timm_trunk import check_mlp, mlp_activation, trunk_config, trunk_state
from vit_lens_clip.model.config import ViTConfig

PE_CORE_PREFIX = "vit_pe_core"


def is_pe_core(model: nn.Module) -> bool:
    """A timm ``Eva`` trunk (the registry gives those with EVA02 blocks to ``convert.eva02``)."""
    return type(model) is Eva


def is_pe_core_name(timm_name: str) -> bool:
    """Whether a timm model name is a Perception Encoder (``vit_pe_core_*``), before anything is built."""
    return timm_name.startswith(PE_CORE_PREFIX)


def _check_block(block: nn.Module, index: int, tower: str) -> None:
    attn = block.attn
    if type(block) is not EvaBlock or type(attn) not in (EvaAttention, AttentionRope):
        raise unsupported_tower(tower, "timm", f"block {index} is {type(block).__name__} / {type(attn).__name__}")
    if not is_identity(attn.norm):
        raise unsupported_tower(tower, "timm (EVA02)", "a sub-LayerNorm on the attention output: an EVA02 block, "
                                                       "ported by convert.eva02")
    if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads:
        raise unsupported_tower(tower, "timm", f"block {index}: grouped-query attention")
    if not (is_identity(attn.q_norm) and is_identity(attn.k_norm)) or getattr(attn, "gate", None) is not None:
        raise unsupported_tower(tower, "timm", f"block {index}: q/k norms or a gated attention")
    check_mlp(block.mlp, tower, origin="timm (EVA02)")
    affine_layer_norm(block.norm1, f"block {index} norm1", tower)
    affine_layer_norm(block.norm2, f"block {index} norm2", tower)


def rope_table(model: nn.Module, n_patches: int, d_head: int, tower: str) -> Optional[Tensor]:
    """The source's rotary table for its image size, [sin | cos] per patch (refused if depth-mixed)."""
    if model.rope is None:
        return None
    if getattr(model, "rope_mixed", False):
        raise unsupported_tower(tower, "timm", "depth-mixed rotary embeddings")
    table = model.rope.get_embed() if hasattr(model.rope, "feat_shape") else None
    if table is None or tuple(table.shape) != (n_patches, 2 * d_head):
        raise unsupported_tower(tower, "timm", f"a rotary table of shape {None if table is None else tuple(table.shape)}")
    return table.detach()


def config_from_pe_core(model: nn.Module, name: Optional[str] = None) -> ViTConfig:
    """Read a ViTConfig off an instantiated timm Eva (PE-Core)."""
    tower = type(model).__name__
    if not is_pe_core(model):
        raise unsupported_tower(tower, "timm")
    if getattr(model, "dynamic_img_size", False):
        raise unsupported_tower(tower, "timm", "dynamic_img_size=True")
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        _check_block(block, i, tower)
    attn = blocks[0].attn
    cfg = trunk_config(
        model, tower, mlp_activation(blocks[0].mlp.act, tower),
        name or getattr(model, "default_cfg", {}).get("architecture", "eva"), include_prefix=True,
        rotary=("half" if attn.rotate_half else "interleave") if model.rope is not None else "",
    )
    if any(b.attn.num_prefix_tokens != cfg.n_prefix for b in blocks if cfg.rotary):
        raise unsupported_tower(tower, "timm", "rotary embeddings on prefix tokens")
    return cfg


def state_dict_from_pe_core(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map Eva weights to HookedViT names (LayerScale folded, the rotary table copied)."""
    rope = rope_table(model, cfg.n_patches, cfg.d_head, type(model).__name__) if cfg.rotary else None
    return trunk_state(model, cfg, lambda block: (block.gamma_1, block.gamma_2), rope)


def convert_pe_core(model: nn.Module, name: Optional[str] = None) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, state dict) of a timm Eva with rotary attention (PE-Core)."""
    cfg = config_from_pe_core(model, name)
    return cfg, state_dict_from_pe_core(model, cfg)
