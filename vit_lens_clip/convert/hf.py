"""transformers ``CLIPVisionModelWithProjection`` → HookedViT.

HF CLIP: pre_layrnorm after the embeddings, CLS pooling, post_layernorm, then a bias-free visual_projection.
Its activation comes from ``config.hidden_act`` ("quick_gelu" for OpenAI's checkpoints).
"""

from __future__ import annotations

import einops
import torch
from torch import Tensor, nn

from vit_lens_clip.convert.common import unsupported_tower
from vit_lens_clip.errors import UnsupportedTowerError
from vit_lens_clip.model.config import ViTConfig

# transformers' ``hidden_act`` → ViTConfig ``act_fn`` (shared with the text tower, convert.hf_text)
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


def is_hf_clip_vision(model: nn.Module) -> bool:
    """A transformers CLIP image tower with its projection (``CLIPVisionModelWithProjection``, or any module
    holding ``vision_model`` and ``visual_projection`` as a ``CLIPModel`` does); transformers stays optional."""
    return hasattr(model, "vision_model") and hasattr(model, "visual_projection")


def config_from_hf(model: nn.Module) -> ViTConfig:
    """Read a ViTConfig from a transformers CLIPVisionModelWithProjection."""
    if not is_hf_clip_vision(model):
        raise UnsupportedTowerError(
            f"expected a transformers CLIPVisionModelWithProjection, got {type(model).__name__}"
        )
    c = model.config
    if c.hidden_act not in ACTIVATIONS:
        raise unsupported_tower(f"CLIPVisionModel {getattr(c, '_name_or_path', '') or ''}".strip(), "transformers",
                                f"activation {c.hidden_act!r}")
    return ViTConfig(
        n_layers=c.num_hidden_layers,
        d_model=c.hidden_size,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        output_dim=model.visual_projection.out_features,
        image_size=c.image_size,
        patch_size=c.patch_size,
        act_fn=ACTIVATIONS[c.hidden_act],
        eps=c.layer_norm_eps,
        in_channels=c.num_channels,
        model_name=getattr(c, "_name_or_path", "") or "hf-clip",
        dtype=model.visual_projection.weight.dtype,
    )


def _heads(w: Tensor, n: int) -> Tensor:
    return einops.rearrange(w, "(h e) i -> h i e", h=n)


def encoder_layer_state(block: nn.Module, layer: int, n: int) -> dict[str, Tensor]:
    """One HF ``CLIPEncoderLayer`` (image or text tower) under ``blocks.{layer}.*`` names; the caller detaches."""
    p, a = f"blocks.{layer}", block.self_attn
    return {
        f"{p}.ln1.w": block.layer_norm1.weight, f"{p}.ln1.b": block.layer_norm1.bias,
        f"{p}.ln2.w": block.layer_norm2.weight, f"{p}.ln2.b": block.layer_norm2.bias,
        f"{p}.attn.W_Q": _heads(a.q_proj.weight, n), f"{p}.attn.b_Q": a.q_proj.bias.reshape(n, -1),
        f"{p}.attn.W_K": _heads(a.k_proj.weight, n), f"{p}.attn.b_K": a.k_proj.bias.reshape(n, -1),
        f"{p}.attn.W_V": _heads(a.v_proj.weight, n), f"{p}.attn.b_V": a.v_proj.bias.reshape(n, -1),
        f"{p}.attn.W_O": einops.rearrange(a.out_proj.weight, "j (h e) -> h e j", h=n),
        f"{p}.attn.b_O": a.out_proj.bias,
        f"{p}.mlp.W_in": block.mlp.fc1.weight.T, f"{p}.mlp.b_in": block.mlp.fc1.bias,
        f"{p}.mlp.W_out": block.mlp.fc2.weight.T, f"{p}.mlp.b_out": block.mlp.fc2.bias,
    }


def state_dict_from_hf(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map HF CLIP vision weights to HookedViT names."""
    vm = model.vision_model
    emb = vm.embeddings
    sd = {
        "W_patch": emb.patch_embedding.weight,
        "class_embedding": emb.class_embedding,
        "W_pos": emb.position_embedding.weight,
        "ln_pre.w": vm.pre_layrnorm.weight,
        "ln_pre.b": vm.pre_layrnorm.bias,
        "ln_final.w": vm.post_layernorm.weight,
        "ln_final.b": vm.post_layernorm.bias,
        "W_proj": model.visual_projection.weight.T,
    }
    for layer, block in enumerate(vm.encoder.layers):
        sd.update(encoder_layer_state(block, layer, cfg.n_heads))
    return {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}


def convert_hf(model: nn.Module) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, state dict) whose HookedViT equals ``model(pixel_values).image_embeds``."""
    cfg = config_from_hf(model)
    return cfg, state_dict_from_hf(model, cfg)
