"""model/text_config.py: TextConfig's head width, activation and pooling validation, projection-less outputs."""

from __future__ import annotations

import conftest
import jaxtyping
import pytest
from conftest import type_checks_off

from vit_lens_clip.model.text_config import POOL_TYPES, TextConfig


def config(**overrides) -> TextConfig:
    fields = dict(n_layers=1, d_model=32, n_heads=2, d_mlp=64, d_vocab=100, n_ctx=8, output_dim=16)
    fields.update(overrides)
    return TextConfig(**fields)


def test_defaults_are_clips_text_tower():
    cfg = config()
    assert cfg.d_head == 16
    assert cfg.causal and not cfg.pad_mask and cfg.pool_type == "argmax" and cfg.has_projection


@pytest.mark.parametrize("pool_type", [p for p in POOL_TYPES if p != "eos"])
def test_pool_types_without_an_id(pool_type):
    assert config(pool_type=pool_type).pool_type == pool_type


def test_eos_pooling_needs_the_eos_id():
    with pytest.raises(ValueError, match="needs eos_id"):
        config(pool_type="eos")
    assert config(pool_type="eos", eos_id=0).eos_id == 0  # 0 is an id, not a missing one


@pytest.mark.parametrize("overrides, message", [
    ({"pool_type": "mean"}, "pool_type must be one of"),
    ({"act_fn": "gelu_tanh"}, "act_fn must be 'gelu' or 'quick_gelu'"),
    ({"n_heads": 3}, "not divisible"),
    ({"d_head": 8}, "must equal d_model"),
    ({"has_projection": False}, "output_dim must equal d_model"),
])
def test_invalid_configurations_are_refused(overrides, message):
    if conftest.TYPE_CHECKED:  # a value outside a Literal is refused by the run-time type check first
        with pytest.raises((ValueError, jaxtyping.TypeCheckError)):
            config(**overrides)
    with type_checks_off(), pytest.raises(ValueError, match=message):
        config(**overrides)


def test_without_projection_the_output_is_the_model_width():
    cfg = config(has_projection=False, output_dim=32)
    assert cfg.output_dim == cfg.d_model


def test_explicit_head_width_that_tiles_the_residual():
    assert config(n_heads=4, d_head=8).d_head == 8
