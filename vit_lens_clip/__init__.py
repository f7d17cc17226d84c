"""vit_lens_clip: exact, hookable CLIP image encoders and their text-based decomposition.

The public names below load on first use (PEP 562), so importing a light submodule (the command line's parser)
does not import torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import TYPE_CHECKING, Any

try:  # the installed distribution's version (pyproject.toml's [project] version)
    __version__: str = _distribution_version("vit_lens_clip")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_PUBLIC: dict[str, str] = {
    "HookedViT": "vit_lens_clip.model.hooked_vit",
    "ViTConfig": "vit_lens_clip.model.config",
    "HookedTextTransformer": "vit_lens_clip.model.hooked_text",
    "TextConfig": "vit_lens_clip.model.text_config",
    "load_clip": "vit_lens_clip.loading",
    "LoadedCLIP": "vit_lens_clip.loading",
    "EMBEDDED_NAME": "vit_lens_clip.loading",
    "WeightsUnavailableError": "vit_lens_clip.loading",
    "Decomposition": "vit_lens_clip.decompose.decomposition",
    "decompose_text": "vit_lens_clip.decompose.text",
    "text_span": "vit_lens_clip.methods.textspan.algorithm",
    "text_heatmap": "vit_lens_clip.methods.spatial.heatmaps",
}

__all__ = ["HookedViT", "ViTConfig", "HookedTextTransformer", "TextConfig", "load_clip", "LoadedCLIP", "EMBEDDED_NAME",
           "WeightsUnavailableError", "Decomposition", "decompose_text", "text_span", "text_heatmap"]

if TYPE_CHECKING:
    from vit_lens_clip.decompose.decomposition import Decomposition
    from vit_lens_clip.decompose.text import decompose_text
    from vit_lens_clip.loading import EMBEDDED_NAME, LoadedCLIP, WeightsUnavailableError, load_clip
    from vit_lens_clip.methods.spatial.heatmaps import text_heatmap
    from vit_lens_clip.methods.textspan.algorithm import text_span
    from vit_lens_clip.model.config import ViTConfig
    from vit_lens_clip.model.hooked_text import HookedTextTransformer
    from vit_lens_clip.model.hooked_vit import HookedViT
    from vit_lens_clip.model.text_config import TextConfig


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vit_lens_clip' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
