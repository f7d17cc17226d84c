"""vit_lens_clip: exact, hookable CLIP image encoders and their text-based decomposition."""

from vit_lens_clip.loading import EMBEDDED_NAME, LoadedCLIP, WeightsUnavailableError, load_clip
from vit_lens_clip.model.config import ViTConfig
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.text_config import TextConfig

__all__ = ["HookedViT", "ViTConfig", "HookedTextTransformer", "TextConfig", "load_clip", "LoadedCLIP", "EMBEDDED_NAME", "WeightsUnavailableError"]
