"""open_clip image towers → (ViTConfig, state dict) for HookedViT.

Everything is read from the instantiated modules, never from the model name: the activation (GELU or
QuickGELU), the head count, LayerScale, ``ln_pre``, the pooling variant and the attentional pooler.
LayerScale is folded into the output weights: (x·W + b)·γ = x·(W·γ) + b·γ.

open_clip's own ``VisionTransformer`` is read here. A ``TimmModel`` tower (SigLIP, SigLIP2, SO400M, PE-Core) is
a timm trunk, converted by its own family (the registry picks it), then ``fold_timm_head`` folds open_clip's
optional linear projection into the trunk's. The block helpers (``check_block``, ``block_state``,
``mlp_activation``, ``layer_norm_state``) are shared with the text tower (``convert.open_clip_text``).
"""

from __future__ import annotations

from typing import Optional

import einops
import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import CustomResidualAttentionBlock, QuickGELU, ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from vit_lens_clip.convert.common import unsupported_tower
from vit_lens_clip.errors import UnsupportedTowerError
from vit_lens_clip.model.config import AttentionPoolConfig, ViTConfig

__all__ = ["UnsupportedTowerError", "convert_open_clip", "config_from_open_clip", "state_dict_from_open_clip",
           "fold_timm_head", "image_tower", "is_open_clip_vit", "is_open_clip_timm_tower"]


def image_tower(model_or_visual: nn.Module) -> nn.Module:
    """The image tower of an open_clip ``CLIP``/``CoCa`` (its ``visual``), or the module itself."""
    visual = getattr(model_or_visual, "visual", model_or_visual)
    return visual if isinstance(visual, nn.Module) else model_or_visual


def is_open_clip_vit(visual: nn.Module) -> bool:
    """open_clip's own ``VisionTransformer`` image tower."""
    return isinstance(visual, VisionTransformer) and hasattr(visual, "transformer")


def is_open_clip_timm_tower(visual: nn.Module) -> bool:
    """open_clip's ``TimmModel`` adapter: a timm trunk and an optional projection head."""
    return isinstance(visual, TimmModel)


def mlp_activation(mlp: nn.Module) -> str:
    """The ViTConfig ``act_fn`` of an open_clip MLP (its ``gelu`` module): GELU or QuickGELU."""
    act = mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        if act.approximate != "none":
            raise UnsupportedTowerError(f"GELU(approximate={act.approximate!r}) is not supported")
        return "gelu"
    raise UnsupportedTowerError(f"unsupported MLP activation {type(act).__name__}")


def check_block(block: nn.Module, index: int) -> None:
    """Refuse a block HookedViT cannot represent exactly: cross-attention, NormFormer-style options."""
    if type(block) is ResidualAttentionBlock:
        if hasattr(block, "ln_1_kv"):
            raise UnsupportedTowerError(f"block {index}: cross-attention blocks are not supported")
        return
    if type(block) is CustomResidualAttentionBlock:
        attn = block.attn
        extras = {
            "qk_norm": not isinstance(attn.ln_q, nn.Identity),
            "scaled_cosine_attn": attn.logit_scale is not None,
            "scale_heads": attn.head_scale is not None,
            "scale_attn_inner": not isinstance(attn.ln_inner, nn.Identity),
            "scale_attn": not isinstance(block.ln_attn, nn.Identity),
            "scale_fc": not isinstance(block.mlp.ln, nn.Identity),
        }
        used = [k for k, v in extras.items() if v]
        if used:
            raise UnsupportedTowerError(f"block {index}: NormFormer-style options {used} are not supported")
        return
    raise UnsupportedTowerError(f"block {index}: unsupported block type {type(block).__name__}")


def _layer_scale(module: nn.Module) -> Optional[Tensor]:
    return module.gamma.detach() if hasattr(module, "gamma") else None


def _split_in_proj(attn: nn.Module, n_heads: int) -> dict[str, Tensor]:
    """Split a fused or separate q/k/v projection into TransformerLens [head, d_in, d_head] weights."""
    if getattr(attn, "in_proj_weight", None) is not None:
        w_q, w_k, w_v = attn.in_proj_weight.detach().chunk(3, dim=0)
    else:  # nn.MultiheadAttention with kdim/vdim != embed_dim
        w_q, w_k, w_v = attn.q_proj_weight.detach(), attn.k_proj_weight.detach(), attn.v_proj_weight.detach()
    d_qkv = w_q.shape[0]
    bias = attn.in_proj_bias
    b_q, b_k, b_v = bias.detach().chunk(3) if bias is not None else (torch.zeros(d_qkv),) * 3
    out = {}
    for name, w, b in (("Q", w_q, b_q), ("K", w_k, b_k), ("V", w_v, b_v)):
        out[f"W_{name}"] = einops.rearrange(w, "(h e) i -> h i e", h=n_heads)
        out[f"b_{name}"] = einops.rearrange(b, "(h e) -> h e", h=n_heads)
    out["W_O"] = einops.rearrange(attn.out_proj.weight.detach(), "j (h e) -> h e j", h=n_heads)
    b_o = attn.out_proj.bias
    out["b_O"] = b_o.detach() if b_o is not None else torch.zeros(out["W_O"].shape[-1])
    return out


def layer_norm_state(prefix: str, ln: nn.Module) -> dict[str, Tensor]:
    """A LayerNorm's γ and β under ``{prefix}.w`` / ``{prefix}.b``."""
    return {f"{prefix}.w": ln.weight.detach(), f"{prefix}.b": ln.bias.detach()}


def block_state(block: nn.Module, layer: int, n_heads: int) -> dict[str, Tensor]:
    """One open_clip ``ResidualAttentionBlock`` (image or text tower) under ``blocks.{layer}.*`` names.

    LayerScale is folded into the output weights: (x·W + b)·γ = x·(W·γ) + b·γ.
    """
    p = f"blocks.{layer}"
    attn = {f"{p}.attn.{k}": v for k, v in _split_in_proj(block.attn, n_heads).items()}
    mlp = {
        f"{p}.mlp.W_in": block.mlp.c_fc.weight.detach().T,
        f"{p}.mlp.b_in": block.mlp.c_fc.bias.detach(),
        f"{p}.mlp.W_out": block.mlp.c_proj.weight.detach().T,
        f"{p}.mlp.b_out": block.mlp.c_proj.bias.detach(),
    }
    gamma_attn, gamma_mlp = _layer_scale(block.ls_1), _layer_scale(block.ls_2)
    if gamma_attn is not None:
        attn[f"{p}.attn.W_O"] = attn[f"{p}.attn.W_O"] * gamma_attn
        attn[f"{p}.attn.b_O"] = attn[f"{p}.attn.b_O"] * gamma_attn
    if gamma_mlp is not None:
        mlp[f"{p}.mlp.W_out"] = mlp[f"{p}.mlp.W_out"] * gamma_mlp
        mlp[f"{p}.mlp.b_out"] = mlp[f"{p}.mlp.b_out"] * gamma_mlp
    return {**attn, **mlp, **layer_norm_state(f"{p}.ln1", block.ln_1), **layer_norm_state(f"{p}.ln2", block.ln_2)}


def config_from_open_clip(visual: nn.Module, name: str = "open_clip") -> ViTConfig:
    """Read a ViTConfig off an instantiated open_clip VisionTransformer; a refusal names the tower (``name``)."""
    try:
        return _read_config(visual, name)
    except UnsupportedTowerError as error:
        if " image tower " in str(error):  # already names it
            raise
        raise unsupported_tower(f"{type(visual).__name__} of {name!r}", "open_clip", str(error)) from None


def _read_config(visual: nn.Module, name: str) -> ViTConfig:
    blocks = visual.transformer.resblocks
    first = blocks[0]
    for i, block in enumerate(blocks):
        check_block(block, i)
    if getattr(visual, "attn_pool_type", "") in ("parallel", "cascade"):
        raise UnsupportedTowerError(f"attentional pooling '{visual.attn_pool_type}' is not supported")
    attn_pool = None
    if visual.attn_pool is not None:
        pool = visual.attn_pool
        if visual.pool_type != "tok":
            raise UnsupportedTowerError(f"attentional pooler with pool_type={visual.pool_type!r}")
        attn_pool = AttentionPoolConfig(
            n_queries=pool.query.shape[0],
            n_heads=pool.attn.num_heads,
            d_model=pool.query.shape[1],
            d_context=pool.ln_k.weight.shape[0],
            eps=pool.ln_k.eps,
        )
    elif visual.pool_type not in ("tok", "avg"):
        raise UnsupportedTowerError(f"pool_type={visual.pool_type!r} is not supported")
    n_heads = first.attn.num_heads
    width = visual.transformer.width
    proj = visual.proj
    d_pool = attn_pool.d_model if attn_pool else width
    return ViTConfig(
        n_layers=len(blocks),
        d_model=width,
        n_heads=n_heads,
        d_mlp=first.mlp.c_fc.out_features,
        output_dim=proj.shape[1] if proj is not None else d_pool,
        image_size=tuple(visual.image_size),
        patch_size=tuple(visual.patch_size),
        act_fn=mlp_activation(first.mlp),
        eps=visual.ln_post.eps,
        pool_type="tok" if attn_pool else visual.pool_type,
        has_ln_pre=not isinstance(visual.ln_pre, nn.Identity),
        final_ln_after_pool=bool(visual.final_ln_after_pool) and attn_pool is None,
        attention_pool=attn_pool,
        in_channels=visual.conv1.in_channels,
        model_name=name,
        dtype=visual.conv1.weight.dtype,
    )


def state_dict_from_open_clip(visual: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map open_clip weights to HookedViT names, folding LayerScale into W_O/b_O and W_out/b_out."""
    if visual.conv1.bias is not None:
        raise unsupported_tower("VisionTransformer", "open_clip", "a patch embedding with a bias")
    sd: dict[str, Tensor] = {
        "W_patch": visual.conv1.weight.detach(),
        "class_embedding": visual.class_embedding.detach(),
        "W_pos": visual.positional_embedding.detach(),
        **layer_norm_state("ln_final", visual.ln_post),
    }
    sd["W_proj"] = visual.proj.detach() if visual.proj is not None else torch.eye(cfg.d_pool)
    if cfg.has_ln_pre:
        sd.update(layer_norm_state("ln_pre", visual.ln_pre))
    for layer, block in enumerate(visual.transformer.resblocks):
        sd.update(block_state(block, layer, cfg.n_heads))
    if visual.attn_pool is not None:
        pool = visual.attn_pool
        sd["attn_pool.query"] = pool.query.detach()
        sd.update(layer_norm_state("attn_pool.ln_q", pool.ln_q))
        sd.update(layer_norm_state("attn_pool.ln_k", pool.ln_k))
        heads = cfg.attention_pool.n_heads
        sd.update({f"attn_pool.attn.{k}": v for k, v in _split_in_proj(pool.attn, heads).items()})
    return sd


def _ln_eps(visual: nn.Module, cfg: ViTConfig) -> dict[str, float]:
    """Each LayerNorm keeps the eps of the module it was ported from."""
    pairs = {"ln_final": visual.ln_post}
    if cfg.has_ln_pre:
        pairs["ln_pre"] = visual.ln_pre
    for i, src in enumerate(visual.transformer.resblocks):
        pairs[f"blocks.{i}.ln1"], pairs[f"blocks.{i}.ln2"] = src.ln_1, src.ln_2
    if visual.attn_pool is not None:
        pairs["attn_pool.ln_q"], pairs["attn_pool.ln_k"] = visual.attn_pool.ln_q, visual.attn_pool.ln_k
    return {k: m.eps for k, m in pairs.items() if m.eps != cfg.eps}


def fold_timm_head(
    visual: nn.Module, cfg: ViTConfig, sd: dict[str, Tensor]
) -> tuple[ViTConfig, dict[str, Tensor]]:
    """open_clip ``TimmModel``: its trunk's (config, state dict), then the head (empty, or a linear projection)
    folded into the trunk's projection: (x·W + b)·Pᵀ + c = x·(W·Pᵀ) + (b·Pᵀ + c)."""
    layers = [m for m in visual.head.children() if not isinstance(m, nn.Dropout)]
    if not layers:
        return cfg, sd
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        raise unsupported_tower(f"TimmModel head {[type(m).__name__ for m in layers]}", "open_clip",
                                "only a linear projection is ported")
    proj = layers[0]
    W = sd["W_proj"].float() @ proj.weight.detach().T.float()
    b = sd["b_proj"].float() @ proj.weight.detach().T.float() if "b_proj" in sd else torch.zeros(proj.out_features)
    if proj.bias is not None:
        b = b + proj.bias.detach().float()
    sd["W_proj"] = W
    cfg.output_dim = proj.out_features
    if cfg.proj_bias or proj.bias is not None:
        sd["b_proj"], cfg.proj_bias = b, True
    return cfg, sd


def convert_open_clip(visual: nn.Module, name: str = "open_clip") -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, state dict) of an open_clip ``VisionTransformer`` (or a CLIP/CoCa holding one as ``visual``);
    ``HookedViT.from_converted`` builds the model. Its forward equals ``model.encode_image`` (unnormalised).

    A ``TimmModel`` tower goes through the registry (``convert.registry.convert_tower``), which converts its trunk.
    """
    visual = image_tower(visual)
    if not is_open_clip_vit(visual):
        raise unsupported_tower(type(visual).__name__, "open_clip")
    cfg = config_from_open_clip(visual, name=name)
    cfg.ln_eps = _ln_eps(visual, cfg)
    return cfg, state_dict_from_open_clip(visual, cfg)
