"""transformers CLIP text tower → (TextConfig, state_dict) for HookedTextTransformer; a pure function.

Accepts ``CLIPTextModelWithProjection`` or ``CLIPModel`` (both hold ``text_model`` and ``text_projection``).
HF CLIP text: token + position embeddings, causal pre-LN blocks (padding masked through the caller's
``attention_mask``), ``final_layer_norm`` at every token, then the pooled token: the highest id when
``eos_token_id == 2`` (the legacy configs), else the first ``eos_token_id``; then a bias-free projection.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vit_lens_clip.convert.hf import ACTIVATIONS, encoder_layer_state
from vit_lens_clip.errors import UnsupportedTowerError
from vit_lens_clip.model.text_config import TextConfig


def hf_text_to_hooked(model: nn.Module) -> tuple[TextConfig, dict[str, Tensor]]:
    """(TextConfig, state_dict) of a HookedTextTransformer equal to the model's ``text_embeds``."""
    if not hasattr(model, "text_model") or not hasattr(model, "text_projection"):
        raise UnsupportedTowerError(
            f"expected a transformers CLIPTextModelWithProjection or CLIPModel, got {type(model).__name__}"
        )
    tm, proj = model.text_model, model.text_projection
    c = tm.config
    if c.hidden_act not in ACTIVATIONS:
        raise UnsupportedTowerError(f"transformers CLIP text tower {getattr(c, '_name_or_path', '') or ''}: "
                                    f"unsupported text activation {c.hidden_act!r}")
    legacy = tm.eos_token_id == 2
    cfg = TextConfig(
        n_layers=c.num_hidden_layers,
        d_model=c.hidden_size,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        d_vocab=c.vocab_size,
        n_ctx=c.max_position_embeddings,
        output_dim=proj.out_features,
        act_fn=ACTIVATIONS[c.hidden_act],
        eps=c.layer_norm_eps,
        causal=True,
        pool_type="argmax" if legacy else "eos",
        eos_id=None if legacy else int(tm.eos_token_id),
        proj_bias=proj.bias is not None,
        model_name=getattr(c, "_name_or_path", "") or "hf-clip-text",
        dtype=proj.weight.dtype,
    )
    emb = tm.embeddings
    sd = {
        "W_E": emb.token_embedding.weight,
        "W_pos": emb.position_embedding.weight,
        "ln_final.w": tm.final_layer_norm.weight,
        "ln_final.b": tm.final_layer_norm.bias,
        "W_proj": proj.weight.T,
        "b_proj": proj.bias if proj.bias is not None else torch.zeros(proj.out_features, device=proj.weight.device),
    }
    for layer, block in enumerate(tm.encoder.layers):
        sd.update(encoder_layer_state(block, layer, cfg.n_heads))
    return cfg, {k: v.detach().contiguous() for k, v in sd.items()}
