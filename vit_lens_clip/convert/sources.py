"""Source models built from a ``load_clip`` name: the one place in ``convert/`` that builds or downloads.

``build_source(name, pretrained, ...)`` reads the name through the registry, checks the family from the config
before anything is built, builds the model with its own library (open_clip's factory, timm, transformers),
checks the weights, and returns a ``BuiltSource``: the image tower the family's converter reads, the text side
(for a CLIP), the preprocess and a key for caches. ``load_clip`` and ``HookedViT.from_pretrained`` both start here.

Weights: random unless ``pretrained`` is given; a pretrained tag downloads, unless the hub cannot be reached
(``convert.offline``), in which case only the local cache is read and a missing checkpoint fails at once with
``WeightsUnavailableError`` and how to load one from disk; a local ``.safetensors`` file is read with
safetensors, a ``.bin``/``.pt`` file with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import open_clip
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from vit_lens_clip.convert.offline import hub_offline, hub_offline_mode
from vit_lens_clip.convert.registry import (
    ModelName,
    TowerFamily,
    check_name,
    check_pretrained_tag,
    check_timm_tag,
    family_of,
    parse_name,
)
from vit_lens_clip.embedded import EMBEDDED_NAME
from vit_lens_clip.errors import BadInputError, NoTextTowerError, WeightsUnavailableError
from vit_lens_clip.integrity import check_finite_weights, check_weights_file, sha256_file, state_dict_sha256, verify_local_dir
from vit_lens_clip.validation import text_list

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BuiltSource:
    """A source model built from a name: ``tower`` is what ``family``'s converter reads; ``clip`` the whole model
    (``encode_text`` for a CLIP), ``tokenizer`` None for an image-only model; ``key`` names model + weights +
    precision (on-disk caches are keyed by it)."""

    model_name: ModelName
    family: TowerFamily
    tower: nn.Module
    clip: nn.Module
    tokenizer: Optional[Callable]
    preprocess: Callable
    pretrained: Optional[str]
    key: str
    device: torch.device
    dtype: torch.dtype

    def encode_text(
        self, texts: Sequence[str], batch_size: int = 256, progress: bool = False
    ) -> Float[Tensor, "n_texts d_out"]:
        """Unit text embeddings of this model (see ``encode_texts``)."""
        return encode_texts(self.clip, self.tokenizer, texts, self.device, self.model_name.name, batch_size, progress)

    def release_image_tower(self) -> None:
        """Let go of the image tower once a HookedViT holds its weights (``HookedViT.from_source``): ``tower`` and
        the image side of ``clip`` become ``ImageTowerMoved`` (calling it raises, saying where the tower went);
        what ``encode_text`` and the hooked text tower read stays."""
        moved = ImageTowerMoved(self.model_name.name)
        if isinstance(getattr(self.clip, "visual", None), nn.Module):  # open_clip CLIP / CoCa (the tower read)
            self.clip.visual = moved
        elif isinstance(self.clip, _HFText):  # a transformers CLIPModel: its text side stays
            self.clip.m.vision_model, self.clip.m.visual_projection = moved, ImageTowerMoved(self.model_name.name)
        elif self.clip is self.tower:  # an image-only model (timm): the whole model was the tower
            self.clip = moved
        self.tower = moved


class ImageTowerMovedError(RuntimeError):
    """The source model's image tower was handed to the HookedViT (``load_clip``'s default)."""


class ImageTowerMoved(nn.Module):
    """What is left of a source model's image tower after ``load_clip`` ported it: no weights; calling it (as
    ``loaded.clip.encode_image`` does) raises ``ImageTowerMovedError`` naming ``loaded.model``."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs):
        raise ImageTowerMovedError(
            f"the image tower of {self.name} lives in loaded.model (a HookedViT that holds its weights, once): "
            f"use loaded.encode_image(images) or loaded.model(images); load_clip({self.name!r}, keep_source=True) "
            "keeps the source model's own image tower too, at the cost of a second copy of its weights")


def encode_texts(
    clip: nn.Module, tokenizer: Optional[Callable], texts: Sequence[str], device: torch.device, name: str = "model",
    batch_size: int = 256, progress: bool = False,
) -> Float[Tensor, "n_texts d_out"]:
    """Unit text embeddings ``clip.encode_text(tokenizer(texts))``, batched (a progress bar for long lists); one
    string is one text. NoTextTowerError for an image-only model (``tokenizer`` None)."""
    texts = text_list(texts)
    if tokenizer is None:
        raise NoTextTowerError(f"{name} is an image-only model (no text tower): text-based tools need a CLIP; "
                               f"decompose onto your own directions (e.g. classifier weights) instead")
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(texts), batch_size), desc="encoding texts",
                      disable=not progress or len(texts) <= batch_size):
            tokens = tokenizer(texts[i : i + batch_size]).to(device)
            out.append(F.normalize(clip.encode_text(tokens).float(), dim=-1))
    return torch.cat(out)


def resolve_device(device: Optional[str | torch.device]) -> torch.device:
    """"auto" or None: CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available")
    return device


def precision_name(dtype: Optional[torch.dtype | str]) -> str:
    """The ``load_clip`` precision of a torch dtype ("fp32" for None)."""
    if dtype is None:
        return "fp32"
    if isinstance(dtype, str) and dtype in PRECISIONS:
        return dtype
    for name, known in PRECISIONS.items():
        if dtype == known:
            return name
    raise ValueError(f"dtype must be one of {sorted(PRECISIONS)} or {list(PRECISIONS.values())}, got {dtype!r}")


def build_source(
    name: str = EMBEDDED_NAME,
    pretrained: Optional[str] = None,
    device: Optional[str | torch.device] = "cpu",
    precision: str = "fp32",
    cache_dir: Optional[str] = None,
    tokenizer: Union[None, str, Callable] = None,
) -> BuiltSource:
    """Build the source model ``name`` names (see ``vit_lens_clip.loading``), its family checked first.
    ``tokenizer``: for an open_clip model, a local tokenizer folder or a callable instead of open_clip's own."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    model_name = parse_name(name)
    check_name(model_name)  # unknown or unsupported: from the config, before anything is built or fetched
    if tokenizer is not None:
        if model_name.source != "open_clip":
            raise ValueError(f"tokenizer= is for open_clip models; {name!r} is a {model_name.source} model")
        return _build_open_clip(model_name, pretrained, resolve_device(device), precision, cache_dir, tokenizer)
    return _BUILDERS[model_name.source](model_name, pretrained, resolve_device(device), precision, cache_dir)


# ------------------------------------------------------------------------------------------- helpers
def file_digest(path: Path) -> str:
    """Digest of the whole file: two fine-tunes sharing their first megabytes must not share caches."""
    return sha256_file(path)[:16]


def _params_digest(model: nn.Module) -> str:
    """Digest of all of a model's weights (a partial one let fine-tunes share text-embedding caches)."""
    return state_dict_sha256(model)[:16]


def _is_file(pretrained: Optional[str]) -> bool:
    return pretrained is not None and os.path.isfile(pretrained)


def _unavailable(name: str, pretrained: str, err: Optional[Exception]) -> WeightsUnavailableError:
    """One line: why the weights could not be had, and how to load them from disk instead (per library)."""
    why = "the model hub cannot be reached and they are not in the local cache" if err is None or hub_offline() \
        else " ".join(f"{type(err).__name__}: {err}".split())[:300]
    source = parse_name(name).source
    if source == "timm":
        local = f"load_clip({name!r}, pretrained='/path/to/model.safetensors') (timm's state dict)"
    elif source == "hf":
        local = "load_clip('hf:/path/to/folder') (a folder written by CLIPModel.save_pretrained)"
    else:
        local = (f"load_clip({name!r}, pretrained='/path/to/open_clip_model.safetensors') or "
                 f"load_clip('local-dir:/path/to/folder') (a folder with open_clip_config.json and weights)")
    return WeightsUnavailableError(
        f"could not fetch weights for {name!r} / {pretrained!r} ({why}). Download the checkpoint elsewhere and "
        f"load it from disk: {local}. The embedded model needs no network: load_clip({EMBEDDED_NAME!r})."
    )


def _download_guard(downloads: bool) -> contextlib.AbstractContextManager:
    """Offline: read the local cache only (a missing file fails at once instead of after minutes of retries)."""
    return hub_offline_mode() if downloads and hub_offline() else contextlib.nullcontext()


def _read_weights(path: str) -> dict[str, Tensor]:
    check_weights_file(path)  # truncation, recorded sha256
    if path.endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------- open_clip
class _LazyTokenizer:
    """open_clip's tokenizer for ``name``, built on first use (SigLIP's comes from the hub).

    ``local``: a folder holding a Hugging Face tokenizer (tokenizer.json / tokenizer_config.json, as
    ``AutoTokenizer.save_pretrained`` writes them), used with the model's own text settings (context length,
    tokenizer options) instead of the hub. Offline, a hub tokenizer is read from the local cache only, and a missing
    one fails at once, in one line, saying how to give a local folder."""

    def __init__(self, name: str, local: Optional[str] = None, cache_dir: Optional[str] = None):
        self.name, self.local, self.cache_dir, self._tokenizer = name, local, cache_dir, None

    def __call__(self, texts):
        if self._tokenizer is None:
            self._tokenizer = self._build()
        return self._tokenizer(texts)

    def _build(self) -> Callable:
        if self.local is not None:
            return tokenizer_from_folder(self.name, self.local)
        if not hub_offline():
            return open_clip.get_tokenizer(self.name, cache_dir=self.cache_dir)
        try:
            with hub_offline_mode():
                return open_clip.get_tokenizer(self.name, cache_dir=self.cache_dir)
        except (OSError, ValueError, RuntimeError) as e:
            raise WeightsUnavailableError(
                f"the tokenizer of {self.name!r} comes from the model hub, which cannot be reached, and it is not in "
                f"the local cache; give it as a folder: load_clip({self.name!r}, ..., tokenizer='/path/to/tokenizer') "
                "(a folder written by transformers' AutoTokenizer.save_pretrained; on the command line: --tokenizer "
                "FOLDER)") from e


def check_text_tokenizer(name: str, tokenizer: Union[None, str, Callable] = None) -> None:
    """Before a model that must encode text is built: offline, fail at once (``WeightsUnavailableError``, one line)
    when its tokenizer would come from the hub and is not in the local cache (SigLIP); a ``tokenizer`` given (a
    local folder or a callable) is used instead, and needs no hub. A local-dir folder whose config names a hub
    tokenizer is checked the same way."""
    model_name = parse_name(name)
    if tokenizer is None and model_name.source == "open_clip" and hub_offline():
        if model_name.local_dir is None or _text_config(model_name.identifier).get("hf_tokenizer_name"):
            _LazyTokenizer(model_name.identifier)._build()


def tokenizer_key(tokenizer: Union[None, str, Callable]) -> str:
    """The part of a model's cache key that names a tokenizer given to ``load_clip`` (text embeddings of another
    tokenizer must never be read back): '' for the model's own, a digest of a folder's files, or the identity of a
    callable (which then never matches another process's cache)."""
    if tokenizer is None:
        return ""
    if callable(tokenizer):
        return f"|tokenizer:{type(tokenizer).__qualname__}:{id(tokenizer):x}"
    path = Path(tokenizer).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path)}\0".encode() + file.read_bytes())
    return f"|tokenizer:{digest.hexdigest()[:16]}"


def _text_config(name: str) -> dict:
    """The text settings (``text_cfg``) of an open_clip name: its packaged config, or for ``local-dir:PATH`` the
    folder's open_clip_config.json ({} when there is none)."""
    model_name = parse_name(name)
    if model_name.local_dir is not None:
        config = model_name.local_dir / "open_clip_config.json"
        if not config.is_file():
            return {}
        return json.loads(config.read_text()).get("model_cfg", {}).get("text_cfg", {})
    return (open_clip.get_model_config(name) or {}).get("text_cfg", {})


def tokenizer_from_folder(name: str, folder: str) -> Callable:
    """open_clip's ``HFTokenizer`` on a local folder, with the model ``name``'s text settings from its config."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    text_cfg = _text_config(name)
    return open_clip.tokenizer.HFTokenizer(
        str(path), context_length=text_cfg.get("context_length", 77),
        tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}))


def _quick_gelu_for_tag(name: str, pretrained: Optional[str]) -> bool:
    """Whether a pretrained tag was trained with QuickGELU, whatever the config's name says."""
    if not pretrained or _is_file(pretrained):
        return False
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    return bool(cfg and cfg.get("quick_gelu", False))


def initialise_left_empty(clip: torch.nn.Module) -> None:
    """Give random values to the parameters open_clip creates with ``torch.empty`` and never initialises (CoCa's
    ``text_decoder.text_projection``: its init is commented out upstream), so that a random-weight model holds no
    memory garbage, NaN now and then, that the finite-weights check would blame on a checkpoint. N(0, 1/width)."""
    with torch.no_grad():
        for name, parameter in clip.named_parameters():
            if name.endswith("text_decoder.text_projection"):
                torch.nn.init.normal_(parameter, std=parameter.shape[0] ** -0.5)


def _build_open_clip(model_name: ModelName, pretrained: Optional[str], device: torch.device, precision: str,
                     cache_dir: Optional[str], tokenizer: Union[None, str, Callable] = None) -> BuiltSource:
    name, local_dir = model_name.identifier, model_name.local_dir
    if local_dir is not None and pretrained:  # open_clip would ignore it, and the key would record its digest
        raise BadInputError(f"--pretrained {pretrained} cannot apply to {model_name.name}: a local-dir model (the "
                            "embedded one included) loads the weights of its own folder; drop --pretrained, or give "
                            "the architecture's name with --pretrained FILE")
    verify_local_dir(str(local_dir)) if local_dir is not None else check_weights_file(pretrained)  # sha256, truncation
    if pretrained is not None and os.path.sep in pretrained and not _is_file(pretrained):
        raise FileNotFoundError(f"pretrained file not found: {pretrained}")
    if pretrained and not _is_file(pretrained) and not model_name.schema:
        check_pretrained_tag(name, pretrained)
    downloads = (bool(pretrained) and not _is_file(pretrained)) or model_name.schema == "hf-hub"
    if downloads and pretrained and hub_offline():  # before the model is built: fail in a second, not a minute
        _cached_or_fail(name, pretrained, cache_dir)
    try:
        with _download_guard(downloads):
            clip, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, precision=precision, device=device,
                force_quick_gelu=_quick_gelu_for_tag(name, pretrained), cache_dir=cache_dir,
            )
    except (RuntimeError, OSError) as e:
        if downloads and (isinstance(e, OSError) or _is_download_error(e)):
            raise _unavailable(name, pretrained or "", e) from e
        raise
    clip.eval()
    if not pretrained and local_dir is None:  # random weights: no checkpoint filled what open_clip leaves empty
        initialise_left_empty(clip)
    check_finite_weights(clip, pretrained or name)
    if _is_file(pretrained):
        weights_key = file_digest(Path(pretrained))
    elif local_dir is not None:
        files = sorted(local_dir.glob("*.safetensors")) + sorted(local_dir.glob("*.bin"))
        weights_key = file_digest(files[0]) if files else "none"
    else:
        weights_key = pretrained or _params_digest(clip)
    return BuiltSource(model_name, family_of(clip, "open_clip"), clip, clip,
                       _LazyTokenizer(name, tokenizer, cache_dir) if not callable(tokenizer) else tokenizer, preprocess,
                       pretrained, f"{model_name.name}|{weights_key}|{precision}{tokenizer_key(tokenizer)}", device,
                       PRECISIONS[precision])


def _cached_or_fail(name: str, tag: str, cache_dir: Optional[str]) -> None:
    """Offline: WeightsUnavailableError unless the tag's checkpoint is in the local cache (read only)."""
    try:
        with hub_offline_mode():
            open_clip.factory.download_pretrained(open_clip.get_pretrained_cfg(name, tag), cache_dir=cache_dir)
    except Exception as e:  # huggingface_hub's LocalEntryNotFoundError, open_clip's FileNotFoundError, ...
        raise _unavailable(name, tag, None) from e


def _is_download_error(e: Exception) -> bool:
    """open_clip's factory says a download failed (it raises RuntimeError or FileNotFoundError for that)."""
    text = str(e).lower()
    return "download" in text or "failed" in text


# ------------------------------------------------------------------------------------------- timm
def _build_timm(model_name: ModelName, pretrained: Optional[str], device: torch.device, precision: str,
                cache_dir: Optional[str]) -> BuiltSource:
    """A timm model as an image-only source (random weights unless ``pretrained``: a timm tag or a local file)."""
    name, from_file = model_name.identifier, _is_file(pretrained)
    tagged = f"{name}.{pretrained}" if pretrained and not from_file else name
    downloads = bool(pretrained) and not from_file
    if downloads:
        check_timm_tag(name, pretrained)
        if hub_offline() and not _timm_checkpoint_cached(tagged, cache_dir):
            raise _unavailable(model_name.name, pretrained, None)
    try:
        with _download_guard(downloads):
            model = timm.create_model(tagged, pretrained=downloads, cache_dir=cache_dir)
    except Exception as e:  # a download that failed (offline, missing weights)
        if downloads:
            raise _unavailable(model_name.name, pretrained, e) from e
        raise
    if from_file:
        model.load_state_dict(_read_weights(pretrained))
    check_finite_weights(model, pretrained or model_name.name)
    model = model.eval().to(device=device, dtype=PRECISIONS[precision])
    preprocess = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    weights_key = file_digest(Path(pretrained)) if from_file else (pretrained or _params_digest(model))
    return BuiltSource(model_name, family_of(model, "timm"), model, model, None, preprocess, pretrained,
                       f"{model_name.name}|{weights_key}|{precision}", device, PRECISIONS[precision])


def _timm_checkpoint_cached(tagged: str, cache_dir: Optional[str]) -> bool:
    """Whether timm's hub checkpoint of ``name.tag`` is in the local cache (True for a URL one: timm decides)."""
    repo = getattr(timm.models.get_pretrained_cfg(tagged), "hf_hub_id", None)
    if not repo:
        return True  # a URL checkpoint: left to timm
    files = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo, f, cache_dir=cache_dir), str) for f in files)


# ------------------------------------------------------------------------------------------- transformers
class _VisionWithProjection(nn.Module):
    """A transformers ``CLIPModel``'s image side as the converter reads it (``CLIPVisionModelWithProjection``)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.vision_model, self.visual_projection = clip.vision_model, clip.visual_projection
        self.config = clip.config.vision_config


class _HFText(nn.Module):
    """``encode_text`` of a transformers ``CLIPModel`` (``m`` is the model: the hooked text tower reads it)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.m = clip

    def encode_text(self, tokens):
        return self.m.get_text_features(**tokens)


class _BatchOnDevice(dict):
    def to(self, device):
        return _BatchOnDevice({k: v.to(device) for k, v in self.items()})


def _build_hf(model_name: ModelName, pretrained: Optional[str], device: torch.device, precision: str,
              cache_dir: Optional[str]) -> BuiltSource:
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as e:  # pragma: no cover
        raise ImportError("hf: models need transformers: pip install 'vit_lens_clip[hf]'") from e
    identifier = model_name.identifier
    try:
        with _download_guard(not os.path.isdir(identifier)):
            clip = CLIPModel.from_pretrained(identifier, cache_dir=cache_dir).eval()
            processor = CLIPProcessor.from_pretrained(identifier, cache_dir=cache_dir)
    except Exception as e:  # offline or missing
        raise _unavailable(model_name.name, "(transformers)", e) from e
    check_finite_weights(clip, model_name.name)
    tower = _VisionWithProjection(clip)

    def tokenizer(texts):
        return _BatchOnDevice(processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt"))

    def preprocess(image):
        return processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    return BuiltSource(model_name, family_of(tower, "hf"), tower, _HFText(clip.to(device)), tokenizer, preprocess,
                       None, f"{model_name.name}|{_params_digest(clip)}", device, PRECISIONS[precision])


_BUILDERS = {"open_clip": _build_open_clip, "timm": _build_timm, "hf": _build_hf}
