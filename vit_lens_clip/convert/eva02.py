"""EVA02 (timm ``Eva`` towers ``eva02_*``, open_clip ``EVA02-*``) → (ViTConfig, state dict).

EVA02 is PE-Core's trunk (rotary q/k on the patches, ``convert.pe_core``) plus two things:

- a sub-LayerNorm on the concatenated head outputs before the output projection (``scale_attn_inner``):
  ``attn.ln_z``. With its per-token statistics frozen, as the final LayerNorm's are, it is affine in each head's
  slice, so the per-head hooks stay exact (``model.components.Attention._z_norm_out``, docs/decomposition.md);
- a SwiGLU MLP, packed (``GluMlp``) or split (``SwiGLU``), optionally with a LayerNorm on its hidden units
  (``scale_mlp``): ``model.components.GatedMLP``, one part of the decomposition like any MLP.

The rest of the trunk (prefix tokens, norms, pooling, head, LayerScale) is read by ``convert.timm_trunk``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from timm.layers import GluMlp, Mlp, SwiGLU
from timm.models.eva import Eva, EvaAttention, EvaBlock, EvaBlockPostNorm
from torch import Tensor, nn

from vit_lens_clip.convert.common import affine_layer_norm, is_identity, unsupported_tower
from vit_lens_clip.convert.pe_core import rope_table
from vit_lens_clip.convert.timm_trunk import trunk_config, trunk_state
from vit_lens_clip.model.config import ViTConfig

EVA02_PREFIX = "eva02_"


def _has_eva02_parts(block: nn.Module) -> bool:
    mlp = getattr(block, "mlp", None)
    post_norm = type(block) is EvaBlockPostNorm  # EVA02-E: claimed here so that it is refused by name
    return (post_norm or not is_identity(getattr(block.attn, "norm", None)) or type(mlp) in (SwiGLU, GluMlp)
            or not is_identity(getattr(mlp, "norm", None)))


def is_eva02(model: nn.Module) -> bool:
    """A timm ``Eva`` whose blocks have EVA02's parts (a sub-LayerNorm in the attention, SwiGLU or a normed MLP)."""
    return type(model) is Eva and any(_has_eva02_parts(b) for b in model.blocks)


POST_NORM = "post-norm blocks (a LayerNorm on each branch's output, EVA02-E) are not ported"
POST_NORM_NAMES = ("eva02_enormous",)  # timm builds these with EvaBlockPostNorm


def is_eva02_name(timm_name: str) -> bool:
    """Whether a timm model name is an EVA02 tower (``eva02_*``), before anything is built; EVA02-E (post-norm
    blocks) is refused here, from its name."""
    if timm_name.startswith(POST_NORM_NAMES):
        raise unsupported_tower(timm_name, "timm (EVA02)", POST_NORM)
    return timm_name.startswith(EVA02_PREFIX)


def _mlp_kind(mlp: nn.Module, tower: str, index: int) -> tuple[str, bool]:
    """("swiglu" | "mlp", whether the hidden units are normed) of a block's MLP; others are refused."""
    if type(mlp) is SwiGLU:
        if not isinstance(mlp.act, nn.SiLU):
            raise unsupported_tower(tower, "timm (EVA02)", f"block {index}: SwiGLU with {type(mlp.act).__name__}")
    elif type(mlp) is GluMlp:
        if not isinstance(mlp.act, nn.SiLU) or mlp.gate_last or mlp.chunk_dim != -1:
            raise unsupported_tower(tower, "timm (EVA02)", f"block {index}: a GluMlp other than packed SwiGLU")
    elif type(mlp) is Mlp and is_identity(mlp.norm):
        raise unsupported_tower(tower, "timm (EVA02)", f"block {index}: a plain MLP among SwiGLU blocks")
    else:
        raise unsupported_tower(tower, "timm (EVA02)", f"block {index}: MLP {type(mlp).__name__} (normed plain MLPs "
                                                       "are not ported)")
    return "swiglu", affine_layer_norm(mlp.norm, f"block {index} mlp.norm", tower) is not None


def _check_block(block: nn.Module, index: int, tower: str) -> tuple[bool, str, bool]:
    attn = block.attn
    if type(block) is EvaBlockPostNorm:
        raise unsupported_tower(tower, "timm (EVA02)", POST_NORM)
    if type(block) is not EvaBlock or type(attn) is not EvaAttention:
        raise unsupported_tower(tower, "timm (EVA02)", f"block {index} is {type(block).__name__} / {type(attn).__name__}")
    if not (is_identity(attn.q_norm) and is_identity(attn.k_norm)) or attn.gate is not None:
        raise unsupported_tower(tower, "timm (EVA02)", f"block {index}: q/k norms or a gated attention")
    affine_layer_norm(block.norm1, f"block {index} norm1", tower)
    affine_layer_norm(block.norm2, f"block {index} norm2", tower)
    z_norm = affine_layer_norm(attn.norm, f"block {index} attn.norm", tower) is not None
    return (z_norm, *_mlp_kind(block.mlp, tower, index))


def _mlp_width(mlp: nn.Module) -> int:
    return mlp.fc1_x.out_features if type(mlp) is SwiGLU else mlp.fc1.out_features // 2


def config_from_eva02(model: nn.Module, name: Optional[str] = None) -> ViTConfig:
    """Read a ViTConfig off an instantiated timm Eva with EVA02 blocks."""
    tower = type(model).__name__
    if not is_eva02(model):
        raise unsupported_tower(tower, "timm (EVA02)")
    if getattr(model, "dynamic_img_size", False):
        raise unsupported_tower(tower, "timm (EVA02)", "dynamic_img_size=True")
    blocks = list(model.blocks)
    kinds = {_check_block(block, i, tower) for i, block in enumerate(blocks)}
    if len(kinds) != 1:
        raise unsupported_tower(tower, "timm (EVA02)", "blocks of different kinds")
    (z_norm, mlp_type, mlp_norm), = kinds
    cfg = trunk_config(
        model, tower, "silu", name or getattr(model, "default_cfg", {}).get("architecture", "eva02"),
        include_prefix=True, d_mlp=_mlp_width(blocks[0].mlp),
        rotary=("half" if blocks[0].attn.rotate_half else "interleave") if model.rope is not None else "",
        attn_z_norm=z_norm, mlp_type=mlp_type, mlp_norm=mlp_norm,
    )
    if any(b.attn.num_prefix_tokens != cfg.n_prefix for b in blocks if cfg.rotary):
        raise unsupported_tower(tower, "timm (EVA02)", "rotary embeddings on prefix tokens")
    eps = dict(cfg.ln_eps)
    for i, block in enumerate(blocks):
        for hooked, source in ((f"blocks.{i}.attn.ln_z", block.attn.norm), (f"blocks.{i}.mlp.ln", block.mlp.norm)):
            if not is_identity(source) and source.eps != cfg.eps:
                eps[hooked] = source.eps
    return dataclasses.replace(cfg, ln_eps=eps)


def _swiglu_state(mlp: nn.Module, prefix: str, gamma: Optional[Tensor]) -> dict[str, Tensor]:
    """W_gate/b_gate, W_in/b_in (the linear branch), the hidden norm, W_out/b_out (LayerScale folded)."""
    if type(mlp) is SwiGLU:
        (w_g, b_g), (w_x, b_x) = (mlp.fc1_g.weight, mlp.fc1_g.bias), (mlp.fc1_x.weight, mlp.fc1_x.bias)
    else:  # GluMlp, gate first: fc1 = [gate | linear]
        (w_g, w_x), (b_g, b_x) = mlp.fc1.weight.chunk(2), mlp.fc1.bias.chunk(2)
    W_out, b_out = mlp.fc2.weight.T, mlp.fc2.bias
    if gamma is not None:
        W_out, b_out = W_out * gamma, b_out * gamma
    sd = {f"{prefix}.W_gate": w_g.T, f"{prefix}.b_gate": b_g, f"{prefix}.W_in": w_x.T, f"{prefix}.b_in": b_x,
          f"{prefix}.W_out": W_out, f"{prefix}.b_out": b_out}
    if not is_identity(mlp.norm):
        sd[f"{prefix}.ln.w"], sd[f"{prefix}.ln.b"] = mlp.norm.weight, mlp.norm.bias
    return sd


def state_dict_from_eva02(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map EVA02 weights to HookedViT names (LayerScale folded, the rotary table and the sub-LayerNorms copied)."""
    rope = rope_table(model, cfg.n_patches, cfg.d_head, type(model).__name__) if cfg.rotary else None
    sd = trunk_state(model, cfg, lambda block: (block.gamma_1, block.gamma_2), rope, mlp_state=_swiglu_state)
    for i, block in enumerate(model.blocks):
        if cfg.attn_z_norm:
            sd[f"blocks.{i}.attn.ln_z.w"] = block.attn.norm.weight.detach()
            sd[f"blocks.{i}.attn.ln_z.b"] = block.attn.norm.bias.detach()
    return {k: v.detach() for k, v in sd.items()}


def convert_eva02(model: nn.Module, name: Optional[str] = None) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, state dict) of a timm Eva with EVA02 blocks; forward equals ``model(images)``."""
    cfg = config_from_eva02(model, name)
    return cfg, state_dict_from_eva02(model, cfg)

