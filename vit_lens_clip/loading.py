"""load_clip(): a named model → a HookedViT with text encoding, tokenizer and preprocess.

Accepted names (read by ``convert.registry.parse_name``):
- ``"vit-lens-clip/shapes"``: the embedded model shipped in this package (no network);
- an open_clip model name with ``pretrained`` = a tag (downloads when online), or a local ``.safetensors`` /
  ``.bin`` / ``.pt`` file (offline; ``.bin``/``.pt`` are read with ``torch.load(weights_only=True)``);
- ``"local-dir:/path"`` or ``"hf-hub:org/repo"`` (open_clip schemas);
- ``"hf:org/repo"`` or ``"hf:/local/dir"``: a transformers CLIPModel;
- ``"timm:name"``: a timm VisionTransformer or PE-Core (DINOv2, DeiT, AugReg, ...), image tower only (no text
  tower); random weights unless ``pretrained`` is given (a timm pretrained tag, or a local weights file).

An unknown name (with the nearest known ones) or an unsupported tower (``UnsupportedTowerError``) fails from the
config alone, before anything is built or downloaded; offline, a pretrained tag that is not in the local cache
fails at once (``WeightsUnavailableError``). The tokenizer is fetched only when text is first encoded, so a model
with random weights (``pretrained=None``) loads without any network access.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens_clip.convert.sources import build_source, encode_texts
from vit_lens_clip.embedded import EMBEDDED_NAME
from vit_lens_clip.errors import NoTextTowerError, WeightsUnavailableError
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT

__all__ = ["EMBEDDED_NAME", "LoadedCLIP", "NoTextTowerError", "WeightsUnavailableError", "load_clip"]


@dataclass
class LoadedCLIP:
    """A ported CLIP: the hooked image tower plus what interpretability needs from the rest of CLIP.

    ``encode_text(texts)`` returns unit text embeddings [n_texts, output_dim]; ``preprocess`` maps a PIL
    image to the model's input; ``key`` identifies model + weights (used to key on-disk caches).
    """

    model: HookedViT
    clip: nn.Module
    tokenizer: Optional[Callable]  # None for an image-only tower (timm without a text tower)
    preprocess: Callable
    name: str
    pretrained: Optional[str]
    key: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _text_model: Optional[HookedTextTransformer] = field(default=None, init=False, repr=False)

    @property
    def text_model(self) -> HookedTextTransformer:
        """The hooked text tower (built on first use): its forward equals ``clip.encode_text`` (unnormalised)."""
        if self._text_model is None:
            if self.tokenizer is None:
                raise NoTextTowerError(f"{self.name} is an image-only model (no text tower): text_model needs a CLIP")
            self._text_model = HookedTextTransformer.from_model(getattr(self.clip, "m", self.clip))
            self._text_model.tokenizer = self.tokenizer
            self._text_model.cfg.model_name = f"{self.name} (text tower)"
        return self._text_model

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> Float[Tensor, "n_texts d_out"]:
        """Unit CLIP text embeddings, batched (a progress bar for long lists); one string is one text."""
        return encode_texts(self.clip, self.tokenizer, texts, self.device, self.name, batch_size, progress)

    def encode_image(self, images: Float[Tensor, "batch channel height width"], normalize: bool = True):
        """Image embeddings from the hooked tower (unit length unless ``normalize=False``)."""
        with torch.no_grad():
            emb = self.model(images.to(self.device))
        return F.normalize(emb.float(), dim=-1) if normalize else emb


def load_clip(
    name: str = EMBEDDED_NAME,
    pretrained: Optional[str] = None,
    device: Optional[str | torch.device] = "cpu",
    precision: str = "fp32",
    cache_dir: Optional[str] = None,
    keep_source: bool = False,
    tokenizer: Union[None, str, Callable] = None,
) -> LoadedCLIP:
    """Load a named model with its own library and port its image tower to a HookedViT (see the module doc).

    ``precision`` is "fp32", "fp16" or "bf16"; ``device`` "cpu", "cuda", "auto" or a torch device.
    QuickGELU is taken from the pretrained tag when the tag says so, and always read from the built module.

    Each weight is held once: ``loaded.model`` owns the image tower's weights and ``loaded.clip`` keeps only what
    ``encode_text`` and the hooked text tower need; ``loaded.clip.encode_image`` raises ``ImageTowerMovedError``
    naming ``loaded.model``. ``keep_source=True`` keeps ``loaded.clip`` whole and untouched by edits of the
    hooked model, at the cost of a second copy of the image tower's weights (about 1.5x the memory of
    ``open_clip.create_model_and_transforms`` for a ViT-B-16).

    ``tokenizer`` (open_clip models): a local folder with a Hugging Face tokenizer (for SigLIP-style models whose
    tokenizer comes from the hub: needed offline unless the hub cache holds it), or any callable texts → tokens.
    """
    source = build_source(name, pretrained, device=device, precision=precision, cache_dir=cache_dir, tokenizer=tokenizer)
    hooked = HookedViT.from_source(source, keep_source=keep_source)
    loaded = LoadedCLIP(hooked, source.clip, source.tokenizer, source.preprocess, source.model_name.name,
                        source.pretrained, source.key, source.device)
    hooked.text_encoder = loaded.encode_text
    return loaded
