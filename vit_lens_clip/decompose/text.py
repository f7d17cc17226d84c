"""Parts of the text embedding: embedding term, MLPs, attention layers, heads, (head, token) pieces.

The text tower is read at its pooled row p (CLIP's EOT token, ``model.pooling.TokenReadout`` with a per-sequence
index), so its pieces are the row readout's (``decompose.pieces``) with e_p = W_E[token_p] + W_pos[p] as the
embedding term; the causal mask makes A[p, m] = 0 for m > p. They are folded by the same assembler as the image
tower: through ln_final, the projection and its bias b_P, which is split by the shares like β (not a separate
part), so the parts sum exactly to the text embedding.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Optional

import torch
from torch import Tensor

from vit_lens_clip.decompose.decomposition import TextDecomposition
from vit_lens_clip.decompose.fold import Convention
from vit_lens_clip.decompose.parts import DecompositionCapture
from vit_lens_clip.decompose.pieces import RowPieces
from vit_lens_clip.model.hooked_text import EOT_READOUT, HookedTextTransformer, TokenInput

__all__ = ["TextDecomposition", "decompose_text"]


def decompose_text(
    model: HookedTextTransformer,
    tokens: TokenInput,
    attention_mask: Optional[Tensor] = None,
    per_token: bool = False,
    convention: Convention = "equal_share",
) -> TextDecomposition:
    """Split each text embedding exactly into embedding, layer, head and (with ``per_token``) (head, token) parts."""
    tokens, attention_mask = model._split_input(tokens, attention_mask)
    index = model.pool_index(tokens)
    layers = list(range(model.cfg.n_layers))
    pieces = RowPieces(model, EOT_READOUT, layers, per_token, pool_index=index,
                       embed_hooks=("hook_embed", "hook_pos_embed"))
    capture = DecompositionCapture(model, layers, per_token, convention=convention, pieces=pieces,
                                   embedding_hook="hook_text_embed")
    with torch.no_grad():
        model.run_with_hooks(tokens, attention_mask=attention_mask, fwd_hooks=capture.hooks())
        parts = capture.finish()
    return TextDecomposition(**{f.name: getattr(parts, f.name) for f in fields(parts)}, pool_index=index)
