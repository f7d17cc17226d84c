"""HookedViT: a CLIP vision tower on ``transformer_lens.HookedRootModule``.

Forward: images [B, C, H, W] → image embedding [B, output_dim], equal to open_clip's ``encode_image``
(unnormalised). ``run_with_cache`` returns a ``transformer_lens.ActivationCache``.

Hook names (TransformerLens conventions, pos = n_prefix + n_patches: the class token at position 0 when the
tower has one, then any register tokens, then the patches; see ``model.pooling``):

    hook_tokens                      [B, pos, d_model]   patch + class/register + positional embedding
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
    blocks.{l}.attn.hook_rot_q/hook_rot_k    [B, pos, head, d_head]   q, k after the rotary embedding (PE-Core, EVA02)
    blocks.{l}.attn.ln_z.hook_scale/normalized   EVA02: the LayerNorm on the concatenated heads; hook_result and
                                     hook_result_per_source are then the per-head parts with its statistics frozen
    blocks.{l}.mlp.hook_pre_linear, mlp.ln.*     EVA02's SwiGLU: gate pre-activation (hook_pre), linear branch,
                                     hook_post = silu(pre) ⊙ pre_linear, the hidden-unit LayerNorm before W_out
    attn_pool.*                      CoCa / MAP (SigLIP): the pooler's attention (queries instead of positions);
                                     MAP: attn_pool.ln_k is the trunk's final norm, attn_pool.hook_attn_out,
                                     attn_pool.mlp.*, attn_pool.hook_mlp_out the pooler's MLP with its residual
    hook_pooled                      [B, d_pool]   the pooled vector r before ln_final
    ln_final.hook_scale/normalized   [B, pos, 1] (or [B, 1] when the LN is applied after pooling; absent if none)
    hook_image_embed                 [B, output_dim]
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from vit_lens_clip.convert.registry import convert_tower
from vit_lens_clip.convert.sources import BuiltSource, build_source, precision_name
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.model.components import AttentionPool, LayerNorm, TransformerBlock
from vit_lens_clip.model.config import ViTConfig
from vit_lens_clip.model.pooling import readout_for, trunk_readout
from vit_lens_clip.model.stacked_weights import StackedWeights
from vit_lens_clip.validation import check_images, host_check, text_embeddings, text_list

TextEncoder = Callable[[Sequence[str]], Tensor]


class HookedViT(StackedWeights, HookedRootModule):
    """A CLIP ViT image encoder with TransformerLens hooks at every head and every pooled source token.

    As on HookedTransformer: ``W_Q``/``W_K``/``W_V``/``W_O`` and biases stacked [n_layers, n_heads, ...],
    ``QK``/``OV`` as FactoredMatrix, ``accumulated_bias``, ``run_with_cache`` returning an ActivationCache,
    ``cfg.device`` (see model/stacked_weights.py).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.W_patch = nn.Parameter(torch.empty(d, cfg.in_channels, *cfg.patch_size))
        nn.init.normal_(self.W_patch, std=(cfg.in_channels * cfg.patch_size[0] * cfg.patch_size[1]) ** -0.5)
        self.b_patch = nn.Parameter(torch.zeros(d)) if cfg.patch_bias else None
        self.class_embedding = nn.Parameter(torch.randn(d) * d**-0.5) if cfg.class_token else None
        self.register_tokens = nn.Parameter(torch.randn(cfg.n_registers, d) * d**-0.5) if cfg.n_registers else None
        self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, d) * d**-0.5)
        self.hook_tokens = HookPoint()
        self.ln_pre = LayerNorm(d, cfg.eps) if cfg.has_ln_pre else None
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        if cfg.rotary:  # [sin | cos] per patch, the source model's rotary table for this image size
            self.register_buffer("rope", torch.zeros(cfg.n_patches, 2 * cfg.d_head))
        else:
            self.rope = None
        self.readout = readout_for(cfg.pool_type, cfg.n_prefix)  # None: the attentional pooler reads the embedding
        self.attn_pool = AttentionPool(cfg) if cfg.attention_pool is not None else None
        self.hook_pooled = HookPoint()
        self.ln_final = LayerNorm(cfg.d_pool, cfg.eps) if cfg.has_ln_final else None
        self.W_proj = nn.Parameter(torch.randn(cfg.d_pool, cfg.output_dim) * cfg.d_pool**-0.5)
        self.b_proj = nn.Parameter(torch.zeros(cfg.output_dim)) if cfg.proj_bias else None
        self.hook_image_embed = HookPoint()
        self.text_encoder: Optional[TextEncoder] = None
        self.text_vocab: list[str] = []
        self.register_buffer("W_text", torch.zeros(0, cfg.output_dim), persistent=False)
        self.setup()
        self._sync_cfg_device()

    # ------------------------------------------------------------------ forward
    def embed(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch pos d_model"]:
        """Patchify (a strided conv), prepend the class and register tokens, add positional embeddings, ln_pre."""
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected images [batch, {self.cfg.in_channels}, H, W], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != tuple(self.cfg.image_size):
            raise ValueError(f"expected {self.cfg.image_size} images, got {tuple(images.shape[-2:])}")
        images = images.to(self.W_patch.dtype)
        patches = F.conv2d(images, self.W_patch, self.b_patch, stride=self.cfg.patch_size).flatten(2).transpose(1, 2)
        prefix = [t.to(patches.dtype).reshape(-1, t.shape[-1]).expand(patches.shape[0], -1, -1)
                  for t in (self.class_embedding, self.register_tokens) if t is not None]
        tokens = self.hook_tokens(torch.cat([*prefix, patches], dim=1) + self.W_pos.to(patches.dtype))
        return self.hook_embed(self.ln_pre(tokens) if self.ln_pre is not None else tokens)

    def pool(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_pool"]:
        """ln_final of the pooled vector r, read by the tower's readout (``model.pooling``).

        A position readout (the class token) applies ln_final at every position (so ``ln_final.hook_scale`` is
        [B, pos, 1], as TransformerLens expects) and then takes the pooled row; an edit to ``hook_pooled`` is
        written back into that row before ln_final. The patch mean before a per-position LN has no such row:
        editing it raises. CLIPA (``final_ln_after_pool``) and attentional poolers pool first, then normalise
        ([B, 1] scale).
        """
        ln = self.ln_final if self.ln_final is not None else (lambda x: x)
        if self.attn_pool is not None:
            return ln(self.hook_pooled(self.attn_pool(resid)[:, 0]))
        if self.cfg.final_ln_after_pool:
            return ln(self.hook_pooled(self.readout.pool(resid)))
        if self.hook_pooled.fwd_hooks:
            pooled = self.readout.pool(resid)
            edited = self.hook_pooled(pooled.clone())
            if self.readout.is_position:
                resid = self.readout.replace_pooled(resid, edited)
            else:
                host_check((edited != pooled).any(), self._refuse_pooled_edit)
        return self.readout.pool(ln(resid))

    def _refuse_pooled_edit(self, edited: Tensor, where: Optional[Tensor]) -> None:
        if bool(edited.any()):
            raise ValueError(
                "hook_pooled cannot be edited when patches are averaged after the final LayerNorm "
                f"(no position holds the pooled residual); edit blocks.{self.cfg.n_layers - 1}.hook_resid_post"
            )

    def pool_tokens(self, x: Float[Tensor, "*batch pos d"]) -> Float[Tensor, "*batch d"]:
        """The trunk's readout of any per-position tensor (the pooled row); raises for an attention-pooled trunk."""
        return trunk_readout(self.cfg.pool_type, self.cfg.n_prefix).pool(x)

    def forward(self, images: Float[Tensor, "batch channel height width"] | Float[Tensor, "batch pos d_model"],
                *, start_at_layer: Optional[int] = None, stop_at_layer: Optional[int] = None,
                ) -> Float[Tensor, "batch d_out"] | Float[Tensor, "batch pos d_model"]:
        """Image embedding = ln_final(r) · W_proj (+ b_proj); equals the source model's image embedding.

        As in TransformerLens: ``stop_at_layer=l`` returns the residual stream entering block l (after the
        embedding for l = 0), and ``start_at_layer=l`` takes that residual [batch, pos, d_model] in place of
        images and runs blocks l.. and the head, so that work shared by several runs is done once."""
        n_layers = len(self.blocks)
        start = 0 if start_at_layer is None else start_at_layer
        stop = n_layers if stop_at_layer is None else stop_at_layer
        if not (0 <= start <= n_layers and 0 <= stop <= n_layers and start <= stop):
            raise ValueError(f"need 0 <= start_at_layer <= stop_at_layer <= {n_layers}; got {start_at_layer}, "
                             f"{stop_at_layer}")
        if start_at_layer is not None or stop_at_layer is not None:
            self._refuse_hooks_outside(start, stop)
        if start_at_layer is None:
            check_images(images)  # uint8 raises; NaN/inf and raw-pixel images at once, or deferred (validation.py)
            resid = self.embed(images)
        else:
            if images.ndim != 3 or images.shape[-1] != self.cfg.d_model:
                raise ValueError(f"start_at_layer takes the residual stream [batch, pos, {self.cfg.d_model}], "
                                 f"got {tuple(images.shape)}")
            resid = images
        for block in self.blocks[start:stop]:
            resid = block(resid, rope=self.rope)
        if stop_at_layer is not None:
            return resid
        pooled = self.pool(resid)
        out = pooled @ self.W_proj if self.b_proj is None else torch.addmm(self.b_proj, pooled, self.W_proj)
        return self.hook_image_embed(out)

    def _refuse_hooks_outside(self, start: int, stop: int) -> None:
        """A temporary forward hook (``run_with_hooks``, ``hooks()``, a cache) on a part that a start_at_layer /
        stop_at_layer run skips would silently not fire (an edit ignored, a cache entry missing): refuse, naming the
        hooks. Permanent hooks are part of the model (a spliced SAE): the other half of a split run applies them.
        Hooks are in forward order in ``hook_dict``: the embedding's before the blocks', the head's after."""
        skipped, seen_blocks = [], False
        for name, hook in self.hook_dict.items():
            parts = name.split(".")
            if parts[0] == "blocks":
                seen_blocks = True
                runs = start <= int(parts[1]) < stop
            else:
                runs = start == 0 if not seen_blocks else stop == len(self.blocks)
            if not runs and any(not handle.is_permanent for handle in hook.fwd_hooks):
                skipped.append(name)
        if skipped:
            raise ValueError(f"hooks on parts this run skips (start_at_layer={start}, stop_at_layer={stop}) would not "
                             f"fire: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}; hook only blocks "
                             f"{start}..{stop - 1}")

    @property
    def norms_before_pooling(self) -> bool:
        """ln_final is applied at every token before the patches are averaged (timm ``avg`` without fc_norm): the
        pooled vector the decomposition works with is then the mean of the normed patches, with no norm after it."""
        return (self.attn_pool is None and self.readout is not None and not self.readout.is_position
                and self.ln_final is not None and not self.cfg.final_ln_after_pool)

    def output_from_pooled(self, pooled: Float[Tensor, "batch d_pool"]) -> Float[Tensor, "batch d_out"]:
        """The head after pooling, for a pooled vector r: ln_final (if any, and not already applied per token
        before pooling: ``norms_before_pooling``), W_proj, b_proj (if any). This is the vector ``Decomposition.raw``
        sums to."""
        normed = self.ln_final(pooled) if self.ln_final is not None and not self.norms_before_pooling else pooled
        out = normed @ self.W_proj.to(normed.dtype)
        return out + self.b_proj.to(out.dtype) if self.b_proj is not None else out

    # ------------------------------------------ what ActivationCache reads
    # (run_with_cache and accumulated_bias: model/stacked_weights.py, shared with the text tower)
    def set_text_vocab(self, texts: Sequence[str], embeddings: Optional[Float[Tensor, "n_texts d_out"]] = None):
        """Register texts as the 'vocabulary' for ``tokens_to_residual_directions`` (like TransformerLens' W_U)."""
        texts = text_list(texts)
        embeddings = text_embeddings(texts if embeddings is None else embeddings, self.cfg.output_dim, self.text_encoder)
        if embeddings.shape[0] != len(texts):
            raise ValueError(f"embeddings must be [{len(texts)}, {self.cfg.output_dim}], got {tuple(embeddings.shape)}")
        self.text_vocab = texts
        self.W_text = embeddings.to(self.W_proj)

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
        if isinstance(tokens, int) or (isinstance(tokens, Tensor) and not tokens.is_floating_point()):
            if len(self.text_vocab) == 0:
                raise ValueError("integer tokens need a text vocabulary: call model.set_text_vocab(texts)")
            index = torch.as_tensor(tokens, device=self.W_text.device)
            n = len(self.text_vocab)
            if index.numel() and not bool(((index >= -n) & (index < n)).all()):
                raise BadInputError(f"token index out of range for a text vocabulary of {n} texts")
            text_emb = self.W_text[index]
        elif isinstance(tokens, Tensor):  # embeddings [..., output_dim], each row checked as a text
            if tokens.ndim == 0 or tokens.shape[-1] != self.cfg.output_dim:
                raise BadInputError(f"text embeddings must be [..., {self.cfg.output_dim}], got {tuple(tokens.shape)}")
            flat = tokens.reshape(-1, tokens.shape[-1]) if tokens.ndim > 2 else tokens
            text_emb = text_embeddings(flat, self.cfg.output_dim).reshape(tokens.shape).to(self.W_proj)
        else:
            text_emb = text_embeddings(tokens, self.cfg.output_dim, self.text_encoder).to(self.W_proj)
            text_emb = text_emb[0] if isinstance(tokens, str) else text_emb
        direction = text_emb @ self.W_proj.T
        return direction * self.ln_final.w if self.ln_final is not None else direction

    # ------------------------------------------------------------ utilities
    @property
    def W_U(self) -> Float[Tensor, "d_pool d_out"]:
        """The unembedding analogue: the projection from the pooled width to the joint space."""
        return self.W_proj

    @classmethod
    def from_converted(
        cls,
        cfg: ViTConfig,
        state_dict: dict[str, Tensor],
        device: Optional[Union[str, torch.device]] = None,
        copy: bool = True,
    ) -> "HookedViT":
        """The one loader: build a HookedViT from a converter's (config, state dict), in ``cfg.dtype``.

        Every LayerNorm named in ``cfg.ln_eps`` keeps the eps of the module it was ported from. With ``copy`` (the
        default, and what every ``from_*`` of a user's model does) the weights are copied, in every precision:
        editing the hooked model never edits the source model, nor the reverse. ``copy=False`` is for a source
        the package built and then lets go of (``from_source``): contiguous weights are taken over, not copied,
        so each weight is held once; two entries that overlap in memory are still given separate storage.
        """
        with torch.device("meta"):
            hooked = cls(cfg)
        state = {k: _own_copy(v) for k, v in state_dict.items()} if copy else _take_over(state_dict)
        hooked.load_state_dict(state, strict=True, assign=True)
        hooked.W_text = torch.zeros(0, cfg.output_dim)
        for name, eps in cfg.ln_eps.items():
            hooked.get_submodule(name).eps = eps
        return hooked.to(device=device, dtype=cfg.dtype).eval()

    @classmethod
    def from_open_clip(cls, model_or_visual: nn.Module, name: str = "open_clip") -> "HookedViT":
        """Port an open_clip ``CLIP``/``CoCa`` model or its image tower (``VisionTransformer``, or a timm
        ViT/SigLIP/PE-Core tower in ``TimmModel``); forward equals ``encode_image`` (see convert.registry)."""
        return cls.from_converted(*convert_tower(model_or_visual, name, source="open_clip"),
                                  device=_device_of(model_or_visual))

    @classmethod
    def from_hf(cls, model: nn.Module) -> "HookedViT":
        """Port a transformers ``CLIPVisionModelWithProjection`` (see convert.hf)."""
        return cls.from_converted(*convert_tower(model, source="hf"), device=_device_of(model))

    @classmethod
    def from_timm(cls, model: nn.Module, name: Optional[str] = None) -> "HookedViT":
        """Port a timm ``VisionTransformer`` or a PE-Core ``Eva``; forward equals ``model(images)`` (logits, or
        features for ``num_classes=0``). See convert.registry for the families."""
        return cls.from_converted(*convert_tower(model, name, source="timm"), device=_device_of(model))

    @classmethod
    def from_source(cls, source: BuiltSource, keep_source: bool = False) -> "HookedViT":
        """Port a source model built from a name (``convert.sources.build_source``), on its device and dtype.

        The hooked tower takes the source's image-tower weights over and the source lets go of its image tower
        (``BuiltSource.release_image_tower``), so each weight is held once; ``keep_source`` copies them instead
        and leaves the source whole (one more image tower in memory).
        """
        cfg, state_dict = convert_tower(source.tower, source.model_name.name, source=source.family.source)
        hooked = cls.from_converted(cfg, state_dict, device=_device_of(source.tower), copy=keep_source)
        del state_dict
        if not keep_source:
            source.release_image_tower()
        return hooked.to(device=source.device, dtype=source.dtype)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        pretrained: Optional[str] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> "HookedViT":
        """The hooked image tower of a named model, as ``load_clip`` names them (TransformerLens' habit).

        ``name``: an open_clip name ("ViT-B-16"), "timm:NAME", "hf:org/repo", "local-dir:…", "hf-hub:…" or the
        embedded "vit-lens-clip/shapes"; ``pretrained``: a tag or a local weights file (random weights when None,
        no network). ``device`` None picks CUDA when available; ``dtype`` None is float32. A CLIP's text encoder
        is attached (``tokens_to_residual_directions("a dog")`` works); ``load_clip`` also returns the
        preprocess and the tokenizer.
        """
        source = build_source(name, pretrained, device=device, precision=precision_name(dtype))
        hooked = cls.from_source(source)
        hooked.text_encoder = source.encode_text
        return hooked


def _own_copy(t: Tensor) -> Tensor:
    """A contiguous copy in t's own precision that shares no storage with ``t`` (a bare ``.to`` would alias)."""
    return t.detach().clone(memory_format=torch.contiguous_format)


def _take_over(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict's tensors, contiguous (a copy only where they are not); an entry that overlaps an earlier
    one in memory (one tensor under two names, say) gets its own copy, so no two weights share storage."""
    taken, spans = {}, []
    for k, v in state_dict.items():
        v = v.detach().contiguous()
        start = v.untyped_storage().data_ptr() + v.storage_offset() * v.element_size()
        end = start + v.numel() * v.element_size()
        if any(s < end and start < e for s, e in spans):
            v = _own_copy(v)
            start = v.data_ptr()
            end = start + v.numel() * v.element_size()
        spans.append((start, end))
        taken[k] = v
    return taken


def _device_of(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")
