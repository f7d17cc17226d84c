"""model/config.py: ViTConfig validation, int → pair geometry, derived sizes (n_prefix, n_ctx, d_pool), dict round
trip, AttentionPoolConfig defaults, head_width."""

from __future__ import annotations

import json

import conftest
import jaxtyping
import pytest
import torch
from conftest import type_checks_off

from vit_lens_clip.model.config import AttentionPoolConfig, ViTConfig, head_width


def config(**overrides) -> ViTConfig:
    fields = dict(n_layers=2, d_model=32, n_heads=4, d_mlp=64, output_dim=16, image_size=32, patch_size=8)
    fields.update(overrides)
    return ViTConfig(**fields)


def refused(call, match: str) -> None:
    """Refused by the package's own check (run-time type checks off, as installed) with a message matching
    ``match``; with the checks on (the test run) an argument that breaks an annotation is already refused there."""
    if conftest.TYPE_CHECKED:
        with pytest.raises((ValueError, jaxtyping.TypeCheckError)):
            call()
    with type_checks_off(), pytest.raises(ValueError, match=match):
        call()


def test_int_sizes_become_pairs_and_rectangles_keep_their_sides():
    square = config(image_size=32, patch_size=8)
    assert square.image_size == (32, 32) and square.patch_size == (8, 8)
    assert square.grid_size == (4, 4) and square.n_patches == 16
    rect = config(image_size=(48, 32), patch_size=(16, 8))
    assert rect.grid_size == (3, 4) and rect.n_patches == 12
    with type_checks_off():  # any pair-like sequence becomes a tuple
        assert config(image_size=[32, 16], patch_size=8).image_size == (32, 16)


def test_a_size_that_is_not_a_pair_is_refused():
    refused(lambda: config(image_size=(32, 32, 32)), "expected an int or a pair")


@pytest.mark.parametrize("image, patch", [(30, 8), ((32, 30), 8), (32, (8, 5))])
def test_image_must_be_a_multiple_of_the_patch_on_both_sides(image, patch):
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        config(image_size=image, patch_size=patch)


@pytest.mark.parametrize("class_token, n_registers, pool_type", [(True, 0, "tok"), (True, 4, "tok"),
                                                                  (False, 0, "avg"), (False, 2, "avg")])
def test_prefix_and_context_count_class_token_and_registers(class_token, n_registers, pool_type):
    cfg = config(class_token=class_token, n_registers=n_registers, pool_type=pool_type)
    assert cfg.n_prefix == int(class_token) + n_registers
    assert cfg.n_ctx == cfg.n_patches + cfg.n_prefix == 16 + cfg.n_prefix


def test_d_pool_is_the_poolers_width_when_there_is_one():
    assert config().d_pool == 32
    pool = AttentionPoolConfig(n_queries=1, n_heads=2, d_model=24, d_context=32)
    assert config(pool_type="map", attention_pool=pool).d_pool == 24


def test_d_head_defaults_to_the_share_of_each_head():
    assert config().d_head == 8
    assert config(d_head=8).d_head == 8
    with pytest.raises(ValueError, match="n_heads \\* d_head must equal d_model"):
        config(d_head=16)


@pytest.mark.parametrize("overrides, message", [
    ({"act_fn": "relu"}, "act_fn must be one of"),
    ({"pool_type": "max"}, "pool_type must be one of"),
    ({"rotary": "full"}, "rotary must be"),
    ({"pool_type": "map"}, "needs an attention_pool"),
    ({"pool_type": "tok", "class_token": False}, "needs a class token"),
    ({"n_heads": 5}, "not divisible"),
])
def test_invalid_configurations_are_refused(overrides, message):
    refused(lambda: config(**overrides), message)


@pytest.mark.parametrize("act_fn", ["gelu", "quick_gelu", "gelu_tanh"])
def test_every_listed_activation_is_accepted(act_fn):
    assert config(act_fn=act_fn).act_fn == act_fn


def test_dict_round_trip_through_json_keeps_every_field():
    pool = AttentionPoolConfig(n_queries=2, n_heads=2, d_model=24, d_context=32, query_norm=False, d_mlp=48)
    cfg = config(image_size=(48, 32), pool_type="map", attention_pool=pool, n_registers=3, dtype=torch.float64,
                 ln_eps={"ln_pre": 1e-6}, rotary="half")
    d = cfg.to_dict()
    assert d["dtype"] == "float64"
    back = ViTConfig.from_dict(json.loads(json.dumps(d)))  # what a manifest stores: plain JSON
    assert back.dtype is torch.float64
    assert isinstance(back.attention_pool, AttentionPoolConfig) and back.attention_pool == pool
    assert back.image_size == (48, 32) and back.patch_size == (8, 8)
    assert back == cfg
    assert ViTConfig.from_dict(d) == cfg and d["dtype"] == "float64"  # from_dict does not modify its argument


def test_attention_pool_defaults_and_head_width():
    pool = AttentionPoolConfig(n_queries=1, n_heads=4, d_model=32, d_context=64)
    assert (pool.d_query, pool.d_attn, pool.d_head) == (32, 32, 8)
    wide = AttentionPoolConfig(n_queries=1, n_heads=4, d_model=32, d_context=64, d_query=16, d_attn=48)
    assert (wide.d_query, wide.d_attn, wide.d_head) == (16, 48, 12)
    with pytest.raises(ValueError, match="not divisible by its 5 heads"):
        AttentionPoolConfig(n_queries=1, n_heads=5, d_model=32, d_context=64)


def test_head_width():
    assert head_width(64, 4) == 16
    assert head_width(64, 4, 16) == 16
    with pytest.raises(ValueError, match="not divisible"):
        head_width(64, 5)
    with pytest.raises(ValueError, match="must equal d_model"):
        head_width(64, 4, 8)
