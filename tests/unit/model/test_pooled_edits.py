"""Edits to ``hook_pooled_pattern`` / ``hook_result_per_source`` reach the output exactly as brute force says.

Brute force edits the full attention pattern (``hook_pattern``) so that the pooled row becomes the edited one:
for token and attention pooling, row 0; for average pooling, every patch query row shifted by the same amount
(which moves their mean, the pooled row, by exactly the edit). Both runs then go through the whole model.
"""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_, rel_err, tiny_clip

from vit_lens_clip import HookedViT, ViTConfig

TOL = 1e-5
HEAD, SOURCE = 1, 5


def _avg_model() -> HookedViT:
    torch.manual_seed(0)
    cfg = ViTConfig(n_layers=3, d_model=64, n_heads=4, d_mlp=128, output_dim=32, image_size=32, patch_size=8,
                    pool_type="avg", final_ln_after_pool=True, has_ln_pre=False)
    return perturb_(HookedViT(cfg).eval())


def _models() -> dict[str, tuple[HookedViT, str]]:
    """Pooling type → (model, attention whose pooled row is the pooled token)."""
    return {
        "cls": (HookedViT.from_open_clip(tiny_clip()), "blocks.1.attn"),
        "avg": (_avg_model(), "blocks.1.attn"),
        "attention_pool": (
            HookedViT.from_open_clip(tiny_clip(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2)),
            "attn_pool.attn",
        ),
    }


def _zero_pooled(t, hook):
    t[:, HEAD, SOURCE] = 0
    return t


def _zero_piece(t, hook):
    t[:, SOURCE, HEAD] = 0
    return t


def _brute_force(pooling: str):
    def edit(pattern, hook):
        pattern = pattern.clone()
        if pooling == "avg":  # shift each patch query row by minus the mean: the mean becomes 0
            pattern[:, HEAD, 1:, SOURCE] -= pattern[:, HEAD, 1:, SOURCE].mean(-1, keepdim=True)
        else:
            pattern[:, HEAD, 0, SOURCE] = 0
        return pattern

    return edit


@pytest.mark.parametrize("pooling", ["cls", "avg", "attention_pool"])
def test_zeroing_pooled_pattern_matches_brute_force(pooling, images):
    model, attn = _models()[pooling]
    x = images((32, 32), batch=2)
    with torch.no_grad():
        original = model(x)
        brute = model.run_with_hooks(x, fwd_hooks=[(f"{attn}.hook_pattern", _brute_force(pooling))])
        via_pooled = model.run_with_hooks(x, fwd_hooks=[(f"{attn}.hook_pooled_pattern", _zero_pooled)])
        via_pieces = model.run_with_hooks(x, fwd_hooks=[(f"{attn}.hook_result_per_source", _zero_piece)])
    assert rel_err(brute, original) > 1e-4  # the edit matters
    assert rel_err(via_pooled, brute) <= TOL
    assert rel_err(via_pieces, brute) <= TOL


@pytest.mark.parametrize("pooling", ["cls", "avg", "attention_pool"])
def test_reading_pooled_hooks_changes_nothing(pooling, images):
    """An unedited pooled hook adds an exact zero: the output is bitwise the plain forward's."""
    model, attn = _models()[pooling]
    x = images((32, 32), batch=2)
    seen = {}

    def read(t, hook):
        seen[hook.name] = t.detach().clone()

    with torch.no_grad():
        plain = model(x)
        if pooling == "avg":  # avg builds the full pattern anyway; compare against the same computation
            plain = model.run_with_hooks(x, fwd_hooks=[(f"{attn}.hook_pattern", lambda t, hook: None)])
        read_out = model.run_with_hooks(
            x, fwd_hooks=[(f"{attn}.hook_pooled_pattern", read), (f"{attn}.hook_result_per_source", read)]
        )
    assert len(seen) == 2
    assert torch.equal(read_out, plain)


def test_edit_survives_alongside_other_edits(images):
    """A hook_result edit at the pooled row is kept when the pooled hooks are also attached (run_with_cache)."""
    model, attn = _models()["cls"]
    x = images((32, 32), batch=1)

    def zero_head(t, hook):
        t[:, 0, HEAD] = 0
        return t

    with torch.no_grad():
        alone = model.run_with_hooks(x, fwd_hooks=[(f"{attn}.hook_result", zero_head)])
        with model.hooks(fwd_hooks=[(f"{attn}.hook_result", zero_head)]):
            cached, _ = model.run_with_cache(x)
    assert rel_err(cached, alone) <= TOL


def test_hook_pooled_edit_is_written_back(images):
    """Token pooling: editing hook_pooled equals editing the CLS row of the last residual."""
    model, _ = _models()["cls"]
    x = images((32, 32), batch=2)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    shift = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))

    def add_pooled(t, hook):
        return t + shift

    def add_cls(t, hook):
        t = t.clone()
        t[:, 0] += shift
        return t

    with torch.no_grad():
        original = model(x)
        brute = model.run_with_hooks(x, fwd_hooks=[(last, add_cls)])
        edited = model.run_with_hooks(x, fwd_hooks=[("hook_pooled", add_pooled)])
        read = model.run_with_hooks(x, fwd_hooks=[("hook_pooled", lambda t, hook: None)])
    assert rel_err(brute, original) > 1e-3
    assert rel_err(edited, brute) <= TOL
    assert torch.equal(read, original)


def test_hook_pooled_edit_raises_where_no_position_holds_it(images):
    """Average pooling after a per-position LayerNorm: an edit to hook_pooled cannot be honoured."""
    torch.manual_seed(0)
    cfg = ViTConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=128, output_dim=32, image_size=32, patch_size=8,
                    pool_type="avg", final_ln_after_pool=False)
    model = perturb_(HookedViT(cfg).eval())
    x = images((32, 32), batch=1)
    with torch.no_grad():
        model.run_with_hooks(x, fwd_hooks=[("hook_pooled", lambda t, hook: None)])  # reading is fine
        with pytest.raises(ValueError, match="hook_pooled cannot be edited"):
            model.run_with_hooks(x, fwd_hooks=[("hook_pooled", lambda t, hook: t * 0)])
