"""HookedTextTransformer: a CLIP text tower on ``transformer_lens.HookedRootModule``.

Forward: token ids [B, n] (and optionally a 0/1 ``attention_mask`` [B, n], as transformers passes it) →
text embedding [B, output_dim], equal to open_clip's ``encode_text`` / transformers'
``CLIPTextModelWithProjection(...).text_embeds`` (unnormalised). ``run_with_cache`` returns a
``transformer_lens.ActivationCache``.

Hook names (TransformerLens conventions; the pooled token is the EOT token for CLIP's "argmax" pooling):

    hook_embed                       [B, n, d_model]   token embeddings W_E[tokens]
    hook_pos_embed                   [B, n, d_model]   positional embeddings; resid_pre of block 0 = embed + pos_embed
    blocks.{l}.hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out    [B, n, d_model]
    blocks.{l}.ln1/ln2.hook_scale/hook_normalized
    blocks.{l}.attn.hook_q/k/v/z     [B, n, head, d_head]
    blocks.{l}.attn.hook_attn_scores/hook_pattern   [B, head, query, source] (scores after the causal mask)
    blocks.{l}.attn.hook_result      [B, n, head, d_model]
    blocks.{l}.attn.hook_pooled_pattern      [B, head, source]   the pooled token's attention row (writable)
    blocks.{l}.attn.hook_result_per_source   [B, source, head, d_model]   (writable)
    blocks.{l}.mlp.hook_pre/hook_post        [B, n, d_mlp]
    ln_final.hook_scale/hook_normalized      [B, n, 1] / [B, n, d_model]   (LN at every token, then pooling)
    hook_pooled                      [B, d_model]   the pooled residual r before ln_final (writable)
    hook_text_embed                  [B, output_dim]   ln_final(r) · W_proj + b_proj
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from vit_lens_clip.convert.hf_text import hf_text_to_hooked
from vit_lens_clip.convert.open_clip_text import open_clip_text_to_hooked
from vit_lens_clip.model.components import Attention, LayerNorm, PreLNBlock
from vit_lens_clip.model.pooling import TokenReadout
from vit_lens_clip.model.stacked_weights import StackedWeights
from vit_lens_clip.model.text_config import TextConfig

TokenInput = Union[Int[Tensor, "batch n"], Mapping]
EOT_READOUT = TokenReadout()  # the pooled row of each sequence is given per forward (``pool_index``)


class TextBlock(PreLNBlock):
    """Pre-LN block as in the image tower; the attention gets the text's mask and pooled-token index."""

    def __init__(self, cfg: TextConfig, layer: int):
        attn = Attention(cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_model, readout=EOT_READOUT)
        super().__init__(layer, attn, cfg.d_model, cfg.d_mlp, cfg.act_fn, cfg.eps)

    def forward(
        self,
        resid_pre: Float[Tensor, "batch n d_model"],
        attn_mask: Optional[Tensor],
        pool_index: Int[Tensor, " batch"],
    ) -> Float[Tensor, "batch n d_model"]:
        return self.residual(resid_pre, attn_mask=attn_mask, pool_index=pool_index)


class HookedTextTransformer(StackedWeights, HookedRootModule):
    """A CLIP text encoder with TransformerLens hooks at every head and token.

    Stacked weights, ``accumulated_bias``, ``run_with_cache`` and ``cfg.device``: as on HookedViT
    (model/stacked_weights.py).
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, d) * 0.02)
        self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, d) * 0.01)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([TextBlock(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(d, cfg.eps)
        self.hook_pooled = HookPoint()
        self.W_proj = nn.Parameter(torch.randn(d, cfg.output_dim) * d**-0.5 if cfg.has_projection else torch.eye(d))
        self.b_proj = nn.Parameter(torch.zeros(cfg.output_dim))
        self.hook_text_embed = HookPoint()
        self.tokenizer: Optional[Any] = None
        self.setup()
        self._sync_cfg_device()

    # ------------------------------------------------------------------ inputs
    def _split_input(self, tokens: TokenInput, attention_mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Accept ids, or a tokenizer's dict with ``input_ids`` (and ``attention_mask``)."""
        if isinstance(tokens, Mapping):
            attention_mask = tokens.get("attention_mask", attention_mask)
            tokens = tokens["input_ids"]
        if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.ndim != 2:
            raise ValueError(f"expected integer token ids [batch, n], got {getattr(tokens, 'shape', type(tokens))}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context length {self.cfg.n_ctx}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.d_vocab):
            raise ValueError(f"token ids must lie in [0, {self.cfg.d_vocab}), got [{tokens.min()}, {tokens.max()}]")
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match tokens {tuple(tokens.shape)}")
        return tokens.to(self.W_E.device), None if attention_mask is None else attention_mask.to(self.W_E.device)

    def pool_index(self, tokens: Int[Tensor, "batch n"]) -> Int[Tensor, " batch"]:
        """Position of the pooled token in each sequence (argmax id = EOT for CLIP, first eos_id, first, last)."""
        cfg = self.cfg
        if cfg.pool_type == "argmax":
            return tokens.argmax(-1)
        if cfg.pool_type == "eos":
            is_eos = tokens == cfg.eos_id
            if not bool(is_eos.any(-1).all()):
                raise ValueError(f"pool_type 'eos': a sequence has no end token (id {cfg.eos_id})")
            return is_eos.int().argmax(-1)
        n = tokens.shape[1]
        return torch.full((tokens.shape[0],), 0 if cfg.pool_type == "first" else n - 1, device=tokens.device)

    def additive_mask(
        self, tokens: Int[Tensor, "batch n"], attention_mask: Optional[Tensor] = None
    ) -> Optional[Float[Tensor, "batch_or_1 1 n n"]]:
        """0 where a query may attend to a key, −inf elsewhere: causal, padded keys (pad_mask), masked keys."""
        n = tokens.shape[1]
        blocked = torch.zeros(1, 1, n, n, dtype=torch.bool, device=tokens.device)
        if self.cfg.causal:
            blocked = blocked | torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)
        if self.cfg.pad_mask:
            blocked = blocked | (tokens == self.cfg.pad_id)[:, None, None, :]
        if attention_mask is not None:
            blocked = blocked | (attention_mask == 0)[:, None, None, :]
        if not bool(blocked.any()):
            return None
        mask = torch.zeros(blocked.shape, dtype=torch.float32, device=tokens.device)
        return mask.masked_fill(blocked, float("-inf"))

    # ------------------------------------------------------------------ forward
    def forward(
        self, tokens: TokenInput, attention_mask: Optional[Int[Tensor, "batch n"]] = None
    ) -> Float[Tensor, "batch d_out"]:
        """Text embedding = ln_final(resid[pooled token]) · W_proj + b_proj."""
        tokens, attention_mask = self._split_input(tokens, attention_mask)
        batch, n = tokens.shape
        embed = self.hook_embed(self.W_E[tokens])
        pos_embed = self.hook_pos_embed(self.W_pos[:n].expand(batch, n, -1))
        resid = embed + pos_embed
        attn_mask = self.additive_mask(tokens, attention_mask)
        index = self.pool_index(tokens)
        for block in self.blocks:
            resid = block(resid, attn_mask, index)
        if self.hook_pooled.fwd_hooks:  # an edit is written back into the pooled position before ln_final
            resid = EOT_READOUT.replace_pooled(resid, self.hook_pooled(EOT_READOUT.pool(resid, index)), index)
        pooled = EOT_READOUT.pool(self.ln_final(resid), index)
        return self.hook_text_embed(pooled @ self.W_proj + self.b_proj)

    def to_tokens(self, texts: list[str]) -> Union[Tensor, Mapping]:
        """Tokenize with the attached tokenizer (set by ``load_clip``)."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer attached: load with vit_lens_clip.load_clip, or tokenize yourself")
        return self.tokenizer(list(texts))

    @property
    def W_U(self) -> Float[Tensor, "d_model d_out"]:
        """The unembedding analogue: the projection into the joint space."""
        return self.W_proj

    # ------------------------------------------------------------ building
    @classmethod
    def from_config_and_state(cls, cfg: TextConfig, state: dict[str, Tensor]) -> "HookedTextTransformer":
        """Build from a converter's (config, state_dict), on the state's device and ``cfg.dtype``."""
        with torch.device("meta"):
            model = cls(cfg)
        first = next(iter(state.values()))
        own = {k: v.detach().clone() for k, v in state.items()}  # never the source's storage, in its precision
        model.load_state_dict(own, strict=True, assign=True)
        return model.to(device=first.device, dtype=cfg.dtype).eval()

    @classmethod
    def from_open_clip(cls, model: nn.Module) -> "HookedTextTransformer":
        """Port an open_clip ``CLIP``, ``CustomTextCLIP`` or ``TextTransformer`` (equal to ``encode_text``)."""
        return cls.from_config_and_state(*open_clip_text_to_hooked(model))

    @classmethod
    def from_hf(cls, model: nn.Module) -> "HookedTextTransformer":
        """Port a transformers ``CLIPTextModelWithProjection`` or ``CLIPModel`` (equal to ``text_embeds``)."""
        return cls.from_config_and_state(*hf_text_to_hooked(model))

    @classmethod
    def from_model(cls, model: nn.Module) -> "HookedTextTransformer":
        """Port whichever the model is: transformers (has ``text_model``) or open_clip."""
        if hasattr(model, "text_model") and hasattr(model, "text_projection"):
            return cls.from_hf(model)
        return cls.from_open_clip(model)
