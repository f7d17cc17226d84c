"""open_clip text tower → (TextConfig, state_dict) for HookedTextTransformer; a pure function of the modules.

Accepts a ``CLIP`` (text tower stored on the model itself: ``text_pool_type``, ``attn_mask``), a
``CustomTextCLIP`` (``model.text``) or a ``TextTransformer``. Everything is read from the built modules: the
causal mask (checked to be exactly causal), ``pool_type``, ``eos_id``, the pad mask of bidirectional towers, the
projection (parameter, ``nn.Linear`` with or without bias, or none), LayerScale (folded into W_O/b_O and
W_out/b_out), the activation and the head count. Anything else raises ``UnsupportedTowerError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from open_clip.transformer import TextTransformer
from torch import Tensor, nn

from vit_lens_clip.convert.open_clip import block_state, check_block, layer_norm_state, mlp_activation
from vit_lens_clip.errors import UnsupportedTowerError
from vit_lens_clip.model.text_config import POOL_TYPES, TextConfig


@dataclass
class _TextTower:
    """The text-tower pieces, wherever open_clip keeps them."""

    token_embedding: nn.Embedding
    positional_embedding: Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Optional[nn.Module | Tensor]
    attn_mask: Optional[Tensor]
    pool_type: str
    eos_id: Optional[int]
    pad_mask: bool
    pad_id: int


def _text_tower(model: nn.Module) -> _TextTower:
    text = getattr(model, "text", None)
    if text is not None:  # CustomTextCLIP
        model = text
    if isinstance(model, TextTransformer):
        if model.cls_emb is not None:
            raise UnsupportedTowerError("open_clip TextTransformer with embed_cls (CoCa's text tower) is not supported")
        return _TextTower(
            model.token_embedding, model.positional_embedding, model.transformer, model.ln_final,
            model.text_projection, model.attn_mask, model.pool_type, getattr(model, "eos_id", None),
            bool(model.use_pad_mask), int(model.pad_id),
        )
    if hasattr(model, "token_embedding") and hasattr(model, "text_pool_type"):  # CLIP: the tower is inlined
        return _TextTower(
            model.token_embedding, model.positional_embedding, model.transformer, model.ln_final,
            model.text_projection, model.attn_mask, model.text_pool_type, getattr(model, "text_eos_id", None),
            False, 0,
        )
    raise UnsupportedTowerError(
        f"vit_lens_clip ports open_clip's own TextTransformer; this model's text tower is {type(model).__name__} "
        f"(e.g. an HF text encoder inside open_clip), which cannot be ported"
    )


def _is_causal(mask: Tensor) -> bool:
    n = mask.shape[-1]
    expected = torch.full((n, n), float("-inf")).triu(1)
    return mask.shape == (n, n) and torch.equal(mask.detach().float().cpu(), expected)


def _uniform_eps(tower: _TextTower) -> float:
    norms = [tower.ln_final] + [ln for b in tower.transformer.resblocks for ln in (b.ln_1, b.ln_2)]
    eps = {float(ln.eps) for ln in norms}
    if len(eps) != 1:
        raise UnsupportedTowerError(f"open_clip text tower: text LayerNorms with different eps {sorted(eps)} are not supported")
    return eps.pop()


def open_clip_text_to_hooked(model: nn.Module, name: str = "open_clip-text") -> tuple[TextConfig, dict[str, Tensor]]:
    """(TextConfig, state_dict) of a HookedTextTransformer equal to ``model.encode_text`` (unnormalised)."""
    t = _text_tower(model)
    blocks = t.transformer.resblocks
    for i, block in enumerate(blocks):
        check_block(block, i)
    if t.pool_type not in POOL_TYPES:
        raise UnsupportedTowerError(f"open_clip text tower: text pool_type={t.pool_type!r} is not supported "
                                    f"(supported: {POOL_TYPES})")
    if t.attn_mask is not None and not _is_causal(t.attn_mask):
        raise UnsupportedTowerError("open_clip text tower: its attn_mask is not a causal mask")
    proj = t.text_projection
    width = t.transformer.width
    if proj is None:
        output_dim, W, b = width, torch.eye(width), torch.zeros(width)
    elif isinstance(proj, nn.Linear):
        output_dim, W = proj.out_features, proj.weight.detach().T
        b = proj.bias.detach() if proj.bias is not None else torch.zeros(output_dim)
    else:
        output_dim, W, b = proj.shape[1], proj.detach(), torch.zeros(proj.shape[1])
    first = blocks[0]
    cfg = TextConfig(
        n_layers=len(blocks),
        d_model=width,
        n_heads=first.attn.num_heads,
        d_mlp=first.mlp.c_fc.out_features,
        d_vocab=t.token_embedding.num_embeddings,
        n_ctx=t.positional_embedding.shape[0],
        output_dim=output_dim,
        act_fn=mlp_activation(first.mlp),
        eps=_uniform_eps(t),
        causal=t.attn_mask is not None,
        pad_mask=t.pad_mask,
        pad_id=t.pad_id,
        pool_type=t.pool_type,
        eos_id=t.eos_id,
        has_projection=proj is not None,
        proj_bias=isinstance(proj, nn.Linear) and proj.bias is not None,
        model_name=name,
        dtype=t.token_embedding.weight.dtype,
    )
    sd: dict[str, Tensor] = {
        "W_E": t.token_embedding.weight.detach(),
        "W_pos": t.positional_embedding.detach(),
        "W_proj": W,
        "b_proj": b,
        **layer_norm_state("ln_final", t.ln_final),
    }
    for layer, block in enumerate(blocks):
        sd.update(block_state(block, layer, cfg.n_heads))
    device = t.token_embedding.weight.device
    return cfg, {k: v.to(device).contiguous() for k, v in sd.items()}
