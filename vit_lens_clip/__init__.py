"""vit_lens_clip: exact, hookable CLIP image encoders and their text-based decomposition."""

from vit_lens_clip import _moved
from vit_lens_clip.loading import EMBEDDED_NAME, LoadedCLIP, WeightsUnavailableError, load_clip
from vit_lens_clip.model.config import ViTConfig
from vit_lens_clip.model.hooked_vit import HookedViT

_moved.install()

__all__ = ["HookedViT", "ViTConfig", "load_clip", "LoadedCLIP", "EMBEDDED_NAME", "WeightsUnavailableError"]
