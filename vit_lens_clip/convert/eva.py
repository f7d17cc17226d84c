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

from torch import Tensor, nn

from vit_lens_clip.convert.support import unsupported
from vit_lens_clip.convert.timm import _activation, _identity, _layer_norm, _trunk_config, _trunk_state
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
    attn = blocks[0].attn
    cfg = _trunk_config(
        model, tower, _activation(blocks[0].mlp.act, tower),
        name or getattr(model, "default_cfg", {}).get("architecture", "eva"), include_prefix=True,
        rotary=("half" if attn.rotate_half else "interleave") if model.rope is not None else "",
    )
    if any(b.attn.num_prefix_tokens != cfg.n_prefix for b in blocks if cfg.rotary):
        raise unsupported(tower, "timm", "rotary embeddings on prefix tokens")
    return cfg


def state_dict_from_eva(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map Eva weights to HookedViT names (LayerScale folded, the rotary table copied)."""
    rope = _rope_table(model, cfg.n_patches, cfg.d_head, type(model).__name__) if cfg.rotary else None
    return _trunk_state(model, cfg, lambda block: (block.gamma_1, block.gamma_2), rope)


def convert_eva(model: nn.Module, name: Optional[str] = None) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, state dict) of a timm Eva with rotary attention (PE-Core)."""
    cfg = config_from_eva(model, name)
    return cfg, state_dict_from_eva(model, cfg)
