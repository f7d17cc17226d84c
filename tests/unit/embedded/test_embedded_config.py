"""embedded/config.py: the constants that the trainer and the evaluation share describe the shipped model folder
(its config, file names and weight shapes) and are a valid open_clip architecture and preprocess."""

from __future__ import annotations

import dataclasses
import json

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from safetensors import safe_open

from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR
from vit_lens_clip.embedded.config import CONFIG_NAME, MODEL_CFG, PREPROCESS_CFG, WEIGHTS_NAME
from vit_lens_clip.validation import MAX_ABS_PIXEL


def test_the_shipped_folder_holds_the_named_files_with_these_settings():
    config = json.loads((EMBEDDED_MODEL_DIR / CONFIG_NAME).read_text())
    assert config["model_cfg"] == MODEL_CFG
    assert config["preprocess_cfg"] == PREPROCESS_CFG
    assert (EMBEDDED_MODEL_DIR / WEIGHTS_NAME).is_file()
    assert WEIGHTS_NAME.endswith(".safetensors")  # so that integrity.check_weights_file checks its length


def test_model_cfg_builds_the_shipped_architecture():
    vision = MODEL_CFG["vision_cfg"]
    assert vision["image_size"] % vision["patch_size"] == 0 and vision["width"] % vision["head_width"] == 0
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = open_clip.CLIP(**MODEL_CFG)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with safe_open(str(EMBEDDED_MODEL_DIR / WEIGHTS_NAME), "pt") as f:
        shipped = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    assert shipped == expected
    assert model.visual.positional_embedding.shape[0] == (vision["image_size"] // vision["patch_size"]) ** 2 + 1


def test_preprocess_cfg_is_open_clips_and_fits_the_model():
    assert set(PREPROCESS_CFG) == {f.name for f in dataclasses.fields(PreprocessCfg)}
    PreprocessCfg(**PREPROCESS_CFG)
    assert PREPROCESS_CFG["size"] == MODEL_CFG["vision_cfg"]["image_size"]
    mean, std = torch.tensor(PREPROCESS_CFG["mean"]), torch.tensor(PREPROCESS_CFG["std"])
    assert mean.shape == std.shape == (3,) and bool((std > 0).all())
    for pixel in (0.0, 1.0):  # [0, 1] pixels become normalised model inputs, well inside validation's bound
        assert bool((((pixel - mean) / std).abs() <= MAX_ABS_PIXEL).all())
