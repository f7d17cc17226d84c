"""timm ``VisionTransformer`` → (ViTConfig, state dict) for HookedViT.

Read from the built modules: class token or not, register tokens, positional embeddings that skip the prefix
tokens (``no_embed_class``), the patch-embedding bias, ``norm_pre``, LayerScale, the activation, the pooling
(``global_pool`` token / avg / map), ``norm`` vs ``fc_norm`` and the classifier head. The forward of the port
equals ``model(images)``: logits for a classifier, the pooled features for ``num_classes=0``.

This file checks what is particular to ``VisionTransformer`` (its blocks, a fixed image size, a plain patch
embedding); the trunk's config and weights are read by ``convert.timm_trunk``, shared with PE-Core.
"""

from __future__ import annotations

from typing import Optional

from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import Tensor, nn

from vit_lens_clip.convert.common import affine_layer_norm, is_identity, unsupported_tower
from vit_lens_clip.convert.timm_trunk import check_mlp, trunk_config, trunk_state
from vit_lens_clip.model.config import ViTConfig


def is_timm_vit(model: nn.Module) -> bool:
    """Exactly timm's ``VisionTransformer`` (its subclasses, e.g. distilled DeiT with two prefix heads, are not)."""
    return type(model) is VisionTransformer


def _check_block(block: nn.Module, index: int, tower: str) -> None:
    if type(block) is not Block:
        raise unsupported_tower(tower, "timm", f"block {index} is {type(block).__name__}")
    attn = block.attn
    extras = [n for n in ("q_norm", "k_norm", "norm") if not is_identity(getattr(attn, n, None))]
    if getattr(attn, "gate", None) is not None:
        extras.append("gate")
    if type(attn) is not Attention or extras:
        raise unsupported_tower(tower, "timm", f"block {index}: attention {type(attn).__name__} with {extras or 'changes'}")
    affine_layer_norm(block.norm1, f"block {index} norm1", tower)
    affine_layer_norm(block.norm2, f"block {index} norm2", tower)


def config_from_timm(model: nn.Module, name: Optional[str] = None) -> ViTConfig:
    """Read a ViTConfig off an instantiated timm VisionTransformer."""
    tower = type(model).__name__
    if not is_timm_vit(model):
        raise unsupported_tower(tower, "timm")
    if getattr(model, "dynamic_img_size", False):
        raise unsupported_tower(tower, "timm", "dynamic_img_size=True")
    if not is_identity(getattr(model.patch_embed, "norm", None)):
        raise unsupported_tower(tower, "timm", "a normalised patch embedding")
    if model.pos_embed is None:
        raise unsupported_tower(tower, "timm", "no absolute position embedding")
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        _check_block(block, i, tower)
    act_fn = check_mlp(blocks[0].mlp, tower)
    return trunk_config(model, tower, act_fn, name or getattr(model, "default_cfg", {}).get("architecture", "timm"))


def _gamma(layer_scale: nn.Module) -> Optional[Tensor]:
    return layer_scale.gamma if hasattr(layer_scale, "gamma") else None


def state_dict_from_timm(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map timm weights to HookedViT names (LayerScale folded, prefix tokens split from the position table)."""
    return trunk_state(model, cfg, lambda block: (_gamma(block.ls1), _gamma(block.ls2)))


def convert_timm(model: nn.Module, name: Optional[str] = None) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, state dict) of a timm VisionTransformer; ``HookedViT.from_converted`` builds the model."""
    cfg = config_from_timm(model, name)
    return cfg, state_dict_from_timm(model, cfg)
