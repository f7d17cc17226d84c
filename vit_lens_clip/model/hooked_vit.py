"""HookedViT: a CLIP vision tower on ``transformer_lens.HookedRootModule``.

Forward: images [B, C, H, W] → image embedding [B, output_dim], equal to open_clip's ``encode_image``
(unnormalised). ``run_with_cache`` returns a ``transformer_lens.ActivationCache``.

Hook names (TransformerLens conventions, pos = 1 + n_patches, CLS at position 0):

    hook_tokens                      [B, pos, d_model]   patch + class + positional embedding
    ln_pre.hook_scale/normalized     (absent when the tower has no ln_pre)
    hook_embed                       [B, pos, d_model]   what enters block 0 (after ln_pre)
    blocks.{l}.hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out
    blocks.{l}.ln1/ln2.hook_scale/hook_normalized
    blocks.{l}.attn.hook_q/k/v/z     [B, pos, head, d_head]
    blocks.{l}.attn.hook_attn_scores/hook_pattern   [B, head, query, source]
    blocks.{l}.attn.hook_result      [B, pos, head, d_model]
    blocks.{l}.attn.hook_pooled_pattern      [B, head, source]
    blocks.{l}.attn.hook_result_per_source   [B, source, head, d_model]
    blocks.{l}.mlp.hook_pre/hook_post        [B, pos, d_mlp]
    attn_pool.*                      CoCa only: the pooler's attention (queries instead of positions)
    hook_pooled                      [B, d_pool]   the pooled vector r before ln_final
    ln_final.hook_scale/normalized   [B, pos, 1] (or [B, 1] when the LN is applied after pooling)
    hook_image_embed                 [B, output_dim]
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from vit_lens_clip.model.components import AttentionPool, LayerNorm, TransformerBlock
from vit_lens_clip.model.config import ViTConfig
from vit_lens_clip.model.stacked_weights import StackedWeights
from vit_lens_clip.validation import check_images

TextEncoder = Callable[[Sequence[str]], Tensor]


class HookedViT(StackedWeights, HookedRootModule):
    """A CLIP ViT image encoder with TransformerLens hooks at every head and every pooled source token.

    As on HookedTransformer: ``W_Q``/``W_K``/``W_V``/``W_O`` and biases stacked [n_layers, n_heads, ...],
    ``QK``/``OV`` as FactoredMatrix, ``cfg.device`` (see model/stacked_weights.py).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.W_patch = nn.Parameter(torch.empty(d, cfg.in_channels, *cfg.patch_size))
        nn.init.normal_(self.W_patch, std=(cfg.in_channels * cfg.patch_size[0] * cfg.patch_size[1]) ** -0.5)
        self.class_embedding = nn.Parameter(torch.randn(d) * d**-0.5)
        self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, d) * d**-0.5)
        self.hook_tokens = HookPoint()
        self.ln_pre = LayerNorm(d, cfg.eps) if cfg.has_ln_pre else None
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        self.attn_pool = AttentionPool(cfg) if cfg.attention_pool is not None else None
        self.hook_pooled = HookPoint()
        self.ln_final = LayerNorm(cfg.d_pool, cfg.eps)
        self.W_proj = nn.Parameter(torch.randn(cfg.d_pool, cfg.output_dim) * cfg.d_pool**-0.5)
        self.hook_image_embed = HookPoint()
        self.text_encoder: Optional[TextEncoder] = None
        self.text_vocab: list[str] = []
        self.register_buffer("W_text", torch.zeros(0, cfg.output_dim), persistent=False)
        self.setup()
        self._sync_cfg_device()

    # ------------------------------------------------------------------ forward
    def embed(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch pos d_model"]:
        """Patchify (a strided conv), prepend the class token, add positional embeddings, apply ln_pre."""
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected images [batch, {self.cfg.in_channels}, H, W], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != tuple(self.cfg.image_size):
            raise ValueError(f"expected {self.cfg.image_size} images, got {tuple(images.shape[-2:])}")
        images = images.to(self.W_patch.dtype)
        patches = F.conv2d(images, self.W_patch, stride=self.cfg.patch_size).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = self.hook_tokens(torch.cat([cls, patches], dim=1) + self.W_pos.to(patches.dtype))
        return self.hook_embed(self.ln_pre(tokens) if self.ln_pre is not None else tokens)

    def pool(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_pool"]:
        """ln_final of the pooled vector r, following the tower's pooling variant.

        Token pooling applies ln_final at every position (so ``ln_final.hook_scale`` is [B, pos, 1], as
        TransformerLens expects) and then takes the pooled position; an edit to ``hook_pooled`` is written back
        into the CLS position before ln_final (average pooling before the LN has no such position: editing
        it raises). CLIPA (``final_ln_after_pool``) and CoCa pool first, then normalise ([B, 1] scale).
        """
        if self.attn_pool is not None:
            return self.ln_final(self.hook_pooled(self.attn_pool(resid)[:, 0]))
        if self.cfg.final_ln_after_pool:
            return self.ln_final(self.hook_pooled(self.pool_tokens(resid)))
        if self.hook_pooled.fwd_hooks:
            pooled = self.pool_tokens(resid)
            edited = self.hook_pooled(pooled.clone())
            if self.cfg.pool_type == "tok":
                resid = resid.clone()
                resid[:, 0] = edited
            elif not torch.equal(edited, pooled):
                raise ValueError(
                    "hook_pooled cannot be edited when patches are averaged after the final LayerNorm "
                    f"(no position holds the pooled residual); edit blocks.{self.cfg.n_layers - 1}.hook_resid_post"
                )
        return self.pool_tokens(self.ln_final(resid))

    def pool_tokens(self, x: Float[Tensor, "... pos d"]) -> Float[Tensor, "... d"]:
        """Token pooling of any per-position tensor: CLS (position 0) or the mean over patch positions."""
        return x[..., 1:, :].mean(-2) if self.cfg.pool_type == "avg" else x[..., 0, :]

    def forward(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch d_out"]:
        """Image embedding = ln_final(r) · W_proj; equals open_clip's ``encode_image(images)``."""
        check_images(images)  # uint8 raises; NaN/inf images are named in a warning
        resid = self.embed(images)
        for block in self.blocks:
            resid = block(resid)
        return self.hook_image_embed(self.pool(resid) @ self.W_proj)

    # --------------------------------------------------------------- caching
    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any):
        """Run and cache activations; returns (embedding, ``transformer_lens.ActivationCache``)."""
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache_dict

    # ------------------------------------------ what ActivationCache reads
    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Σ b_O (and Σ b_out) of the blocks before ``layer``: the bias part of the residual stream."""
        bias = torch.zeros(self.cfg.d_model, device=self.W_pos.device, dtype=self.W_pos.dtype)
        for i in range(layer):
            bias = bias + self.blocks[i].attn.b_O
            if include_mlp_biases:
                bias = bias + self.blocks[i].mlp.b_out
        if mlp_input and layer < self.cfg.n_layers:
            bias = bias + self.blocks[layer].attn.b_O
        return bias

    def set_text_vocab(self, texts: Sequence[str], embeddings: Optional[Float[Tensor, "n_texts d_out"]] = None):
        """Register texts as the 'vocabulary' for ``tokens_to_residual_directions`` (like TransformerLens' W_U)."""
        texts = list(texts)
        if embeddings is None:
            embeddings = self._encode(texts)
        if embeddings.shape != (len(texts), self.cfg.output_dim):
            raise ValueError(f"embeddings must be [{len(texts)}, {self.cfg.output_dim}], got {tuple(embeddings.shape)}")
        self.text_vocab = texts
        self.W_text = embeddings.to(self.W_proj)

    def _encode(self, texts: Sequence[str]) -> Tensor:
        if self.text_encoder is None:
            raise ValueError("no text encoder attached: load with vit_lens_clip.load_clip or pass embeddings")
        return self.text_encoder(list(texts)).to(self.W_proj)

    def to_single_token(self, text: str) -> int:
        """Index of ``text`` in the registered text vocabulary (0 for any text the encoder can embed)."""
        if text in self.text_vocab:
            return self.text_vocab.index(text)
        if self.text_encoder is not None:
            return 0
        raise ValueError(f"{text!r} is not in the text vocabulary and no text encoder is attached")

    def tokens_to_residual_directions(
        self, tokens: Union[str, int, Sequence[str], Tensor]
    ) -> Float[Tensor, "... d_pool"]:
        """Direction in the pooled residual stream whose dot with ln_final's normalised input is a text score.

        For a text embedding t, the score of the image embedding is (γ ⊙ x̂ + β) · (W_proj t); the part that
        depends on the residual stream is x̂ · (γ ⊙ W_proj t). Accepts a string or list of strings (encoded
        with the attached text encoder), integer indices into the registered vocabulary, or float text
        embeddings [..., output_dim].
        """
        if isinstance(tokens, str):
            text_emb = self._encode([tokens])[0]
        elif isinstance(tokens, (list, tuple)):
            text_emb = self._encode(tokens)
        elif isinstance(tokens, int) or (isinstance(tokens, Tensor) and not tokens.is_floating_point()):
            if len(self.text_vocab) == 0:
                raise ValueError("integer tokens need a text vocabulary: call model.set_text_vocab(texts)")
            text_emb = self.W_text[torch.as_tensor(tokens, device=self.W_text.device)]
        else:
            text_emb = tokens.to(self.W_proj)
        return (text_emb @ self.W_proj.T) * self.ln_final.w

    # ------------------------------------------------------------ utilities
    @property
    def W_U(self) -> Float[Tensor, "d_pool d_out"]:
        """The unembedding analogue: the projection from the pooled width to the joint space."""
        return self.W_proj

    @classmethod
    def from_open_clip(cls, model_or_visual: nn.Module, **kwargs: Any) -> "HookedViT":
        """Port an open_clip ``CLIP``/``CoCa`` model or its ``VisionTransformer`` (see convert.open_clip)."""
        from vit_lens_clip.convert.open_clip import hooked_vit_from_open_clip

        return hooked_vit_from_open_clip(model_or_visual, **kwargs)

    @classmethod
    def from_hf(cls, model: nn.Module, **kwargs: Any) -> "HookedViT":
        """Port a transformers ``CLIPVisionModelWithProjection`` (see convert.hf)."""
        from vit_lens_clip.convert.hf import hooked_vit_from_hf

        return hooked_vit_from_hf(model, **kwargs)
