"""TextConfig: TransformerLens field names plus what a CLIP text tower needs (masking, pooled token, projection)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from vit_lens_clip.model.config import head_width

TextPoolType = Literal["argmax", "eos", "first", "last"]
POOL_TYPES = ("argmax", "eos", "first", "last")


@dataclass
class TextConfig:
    """Configuration of a HookedTextTransformer.

    ``pool_type`` says which token's final-normed state is projected: "argmax" (the highest token id, CLIP's
    end-of-text token), "eos" (the first ``eos_id``), "first" or "last". ``causal``: a causal attention mask.
    ``pad_mask``: keys equal to ``pad_id`` are masked (open_clip's bidirectional ``use_pad_mask``). Without a
    projection, ``has_projection`` is False and the output is the pooled normed state (``output_dim`` = d_model).
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    output_dim: int
    d_head: int = -1
    act_fn: str = "gelu"
    eps: float = 1e-5
    normalization_type: str = "LN"
    causal: bool = True
    pad_mask: bool = False
    pad_id: int = 0
    pool_type: TextPoolType = "argmax"
    eos_id: Optional[int] = None
    has_projection: bool = True
    proj_bias: bool = False
    model_name: str = "custom-text"
    dtype: torch.dtype = torch.float32
    device: Optional[torch.device] = None
    # TransformerLens fields that ActivationCache reads.
    attn_only: bool = False
    final_rms: bool = False
    positional_embedding_type: str = "standard"

    def __post_init__(self) -> None:
        self.d_head = head_width(self.d_model, self.n_heads, self.d_head)
        if self.act_fn not in ("gelu", "quick_gelu"):
            raise ValueError(f"act_fn must be 'gelu' or 'quick_gelu', got {self.act_fn!r}")
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}")
        if self.pool_type == "eos" and self.eos_id is None:
            raise ValueError("pool_type='eos' needs eos_id")
        if not self.has_projection and self.output_dim != self.d_model:
            raise ValueError("without a projection, output_dim must equal d_model")
