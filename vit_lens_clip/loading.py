"""load_clip(): open_clip's real factory → a HookedViT with text encoding, tokenizer and preprocess.

Accepted names:
- ``"vit-lens-clip/shapes"``: the embedded model shipped in this package (no network);
- an open_clip model name with ``pretrained`` = a tag (downloads when online), or a local ``.safetensors`` /
  ``.bin`` / ``.pt`` file (offline; ``.bin``/``.pt`` are read with ``torch.load(weights_only=True)``);
- ``"local-dir:/path"`` or ``"hf-hub:org/repo"`` (open_clip schemas);
- ``"hf:org/repo"`` or ``"hf:/local/dir"``: a transformers CLIPModel;
- ``"timm:name"``: a timm VisionTransformer (DINOv2, DeiT, AugReg, ...), image tower only (no text tower);
  random weights unless ``pretrained`` is given (a timm pretrained tag, or a local weights file).

An unsupported tower raises ``UnsupportedTowerError`` from the config alone, before anything is built or
downloaded; the tokenizer is fetched only when text is first encoded, so a model with random weights
(``pretrained=None``) loads without any network access.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import open_clip
import timm
import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from vit_lens_clip.convert.support import check_open_clip_name, check_timm_name
from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR as EMBEDDED_DIR
from vit_lens_clip.embedded import EMBEDDED_NAME
from vit_lens_clip.errors import UserInputError
from vit_lens_clip.integrity import check_finite_weights, check_weights_file, sha256_file, state_dict_sha256, verify_local_dir
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.validation import text_list

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NoTextTowerError(UserInputError):
    """A text-based tool was asked of an image-only model (a timm ViT)."""


class WeightsUnavailableError(RuntimeError, UserInputError):
    """Pretrained weights could not be fetched (usually: offline); the message says how to load locally."""


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
            self._text_model = HookedTextTransformer.from_model(getattr(self.clip, "m", self.clip))
            self._text_model.tokenizer = self.tokenizer
            self._text_model.cfg.model_name = f"{self.name} (text tower)"
        return self._text_model

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> Float[Tensor, "n_texts d_out"]:
        """Unit CLIP text embeddings, batched (a progress bar for long lists); one string is one text."""
        texts = text_list(texts)
        if self.tokenizer is None:
            raise NoTextTowerError(f"{self.name} is an image-only model (no text tower): text-based tools need a CLIP; "
                                   f"decompose onto your own directions (e.g. classifier weights) instead")
        chunks = range(0, len(texts), batch_size)
        out = []
        with torch.no_grad():
            for i in tqdm(chunks, desc="encoding texts", disable=not progress or len(texts) <= batch_size):
                tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
                out.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)

    def encode_image(self, images: Float[Tensor, "batch channel height width"], normalize: bool = True):
        """Image embeddings from the hooked tower (unit length unless ``normalize=False``)."""
        with torch.no_grad():
            emb = self.model(images.to(self.device))
        return F.normalize(emb.float(), dim=-1) if normalize else emb


def _file_digest(path: Path) -> str:
    """Digest of the whole file: two fine-tunes sharing their first megabytes must not share caches."""
    return sha256_file(path)[:16]


def _params_digest(model: nn.Module) -> str:
    """Digest of all of a model's weights (a partial one let fine-tunes share text-embedding caches)."""
    return state_dict_sha256(model)[:16]


def _quick_gelu_for_tag(name: str, pretrained: Optional[str]) -> bool:
    """Whether a pretrained tag was trained with QuickGELU, whatever the config's name says."""
    if not pretrained or os.path.isfile(pretrained):
        return False
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    return bool(cfg and cfg.get("quick_gelu", False))


def _offline_help(name: str, pretrained: str, err: Exception) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"could not fetch weights for {name!r} / {pretrained!r} ({type(err).__name__}: {err}). "
        f"If you are offline, download the checkpoint elsewhere and load it from disk: "
        f"load_clip({name!r}, pretrained='/path/to/open_clip_model.safetensors') "
        f"or load_clip('local-dir:/path/to/folder') (a folder with open_clip_config.json and weights). "
        f"The embedded model needs no network: load_clip({EMBEDDED_NAME!r})."
    )


def _resolve_device(device: Optional[str | torch.device]) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available")
    return device


def _load_hf(identifier: str, device: torch.device, dtype: torch.dtype) -> LoadedCLIP:
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as e:  # pragma: no cover
        raise ImportError("hf: models need transformers: pip install 'vit_lens_clip[hf]'") from e
    try:
        clip = CLIPModel.from_pretrained(identifier).eval()
        processor = CLIPProcessor.from_pretrained(identifier)
    except Exception as e:  # offline or missing
        raise _offline_help(f"hf:{identifier}", "(transformers)", e) from e

    class _VisionWithProjection(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.vision_model, self.visual_projection, self.config = m.vision_model, m.visual_projection, m.config.vision_config

    check_finite_weights(clip, f"hf:{identifier}")
    hooked = HookedViT.from_hf(_VisionWithProjection(clip)).to(device=device, dtype=dtype)

    class _HFText(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def encode_text(self, tokens):
            return self.m.get_text_features(**tokens)

    def tokenizer(texts):
        return _BatchOnDevice(processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt"))

    def preprocess(image):
        return processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    loaded = LoadedCLIP(hooked, _HFText(clip.to(device)), tokenizer, preprocess, f"hf:{identifier}", None,
                        key=f"hf:{identifier}|{_params_digest(clip)}", device=device)
    return _attach_text(loaded)


class _BatchOnDevice(dict):
    def to(self, device):
        return _BatchOnDevice({k: v.to(device) for k, v in self.items()})


class _LazyTokenizer:
    """open_clip's tokenizer for ``name``, built on first use (SigLIP's comes from the hub)."""

    def __init__(self, name: str):
        self.name, self._tokenizer = name, None

    def __call__(self, texts):
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.name)
        return self._tokenizer(texts)


def _load_timm(name: str, pretrained: Optional[str], device: torch.device, precision: str) -> LoadedCLIP:
    """A timm VisionTransformer as an image-only LoadedCLIP (random weights unless ``pretrained``)."""
    check_timm_name(name)
    from_file = pretrained is not None and os.path.isfile(pretrained)
    try:
        tagged = f"{name}.{pretrained}" if pretrained and not from_file else name
        model = timm.create_model(tagged, pretrained=bool(pretrained) and not from_file)
    except Exception as e:  # offline or missing weights
        raise _offline_help(f"timm:{name}", pretrained or "", e) from e
    if from_file:
        check_weights_file(pretrained)  # truncation, recorded sha256
        if pretrained.endswith(".safetensors"):
            state = load_file(pretrained)
        else:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    check_finite_weights(model, pretrained or f"timm:{name}")
    model = model.eval().to(device=device, dtype=_PRECISIONS[precision])
    hooked = HookedViT.from_timm(model, name=f"timm:{name}")
    data_cfg = timm.data.resolve_data_config({}, model=model)
    preprocess = timm.data.create_transform(**data_cfg)
    weights_key = _file_digest(Path(pretrained)) if from_file else (pretrained or _params_digest(model))
    return LoadedCLIP(hooked, model, None, preprocess, f"timm:{name}", pretrained,
                      key=f"timm:{name}|{weights_key}|{precision}", device=device)


def _attach_text(loaded: LoadedCLIP) -> LoadedCLIP:
    loaded.model.text_encoder = lambda texts: loaded.encode_text(texts)
    return loaded


def load_clip(
    name: str = EMBEDDED_NAME,
    pretrained: Optional[str] = None,
    device: Optional[str | torch.device] = "cpu",
    precision: str = "fp32",
    cache_dir: Optional[str] = None,
) -> LoadedCLIP:
    """Load a CLIP through open_clip's factory and port its image tower to a HookedViT.

    ``precision`` is "fp32", "fp16" or "bf16"; ``device`` "cpu", "cuda", "auto" or a torch device.
    QuickGELU is taken from the pretrained tag when the tag says so, and always read from the built module.
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    dev = _resolve_device(device)
    if name.startswith("hf:"):
        return _load_hf(name[3:], dev, _PRECISIONS[precision])
    if name.startswith("timm:"):
        return _load_timm(name[5:], pretrained, dev, precision)
    if name == EMBEDDED_NAME:
        if not (EMBEDDED_DIR / "open_clip_config.json").exists():
            raise FileNotFoundError(f"the embedded model is missing from {EMBEDDED_DIR}; reinstall vit_lens_clip")
        name = f"local-dir:{EMBEDDED_DIR}"
        key_name = EMBEDDED_NAME
    else:
        key_name = name
    schema_local = name.startswith("local-dir:")
    verify_local_dir(name.split(":", 1)[1]) if schema_local else check_weights_file(pretrained)  # sha256, truncation
    if pretrained is not None and os.path.sep in pretrained and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"pretrained file not found: {pretrained}")
    if not schema_local and not name.startswith("hf-hub:") and name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    if not schema_local and not name.startswith("hf-hub:"):
        check_open_clip_name(name)
    if pretrained and not os.path.isfile(pretrained) and not name.startswith(("local-dir:", "hf-hub:")):
        tags = [t for m, t in open_clip.list_pretrained() if m == name]
        if pretrained not in tags:
            raise ValueError(f"{pretrained!r} is neither a file nor a pretrained tag of {name}; tags: {tags}")
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained,
            precision=precision,
            device=dev,
            force_quick_gelu=_quick_gelu_for_tag(name, pretrained),
            cache_dir=cache_dir,
        )
    except RuntimeError as e:
        if pretrained and not os.path.isfile(pretrained) and ("download" in str(e).lower() or "Failed" in str(e)):
            raise _offline_help(name, pretrained, e) from e
        raise
    except OSError as e:
        if name.startswith("hf-hub:"):
            raise _offline_help(name, pretrained or "", e) from e
        raise
    tokenizer = _LazyTokenizer(name)
    clip.eval()
    check_finite_weights(clip, pretrained or name)
    hooked = HookedViT.from_open_clip(clip, name=key_name)
    if pretrained and os.path.isfile(pretrained):
        weights_key = _file_digest(Path(pretrained))
    elif schema_local:
        folder = Path(name.split(":", 1)[1])
        files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        weights_key = _file_digest(files[0]) if files else "none"
    else:
        weights_key = pretrained or _params_digest(clip)
    loaded = LoadedCLIP(hooked, clip, tokenizer, preprocess, key_name, pretrained, f"{key_name}|{weights_key}|{precision}", dev)
    return _attach_text(loaded)
