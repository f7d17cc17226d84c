"""The embedded default model: a small open_clip CLIP trained on the synthetic shapes world.

Load it offline with ``open_clip.create_model_and_transforms("local-dir:" + str(EMBEDDED_MODEL_DIR))``.
"""

from pathlib import Path

EMBEDDED_MODEL_DIR: Path = Path(__file__).resolve().parent / "shapes"
EMBEDDED_NAME = "vit-lens-clip/shapes"

__all__ = ["EMBEDDED_MODEL_DIR", "EMBEDDED_NAME"]
