"""Constants of the embedded model that both the trainer and the evaluation need: the open_clip architecture,
the preprocessing, and the file names of an exported run."""

from __future__ import annotations

MODEL_CFG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 6, "width": 128, "head_width": 32, "patch_size": 8, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
PREPROCESS_CFG: dict = {
    "size": 64,
    "mode": "RGB",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
CHECKPOINT_NAME = "checkpoint.pt"
