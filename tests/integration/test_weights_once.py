"""Each weight is held once: load_clip's hooked tower owns the image tower's weights, the source keeps only its
text side, and editing a hooked model never reaches a source model the user holds."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err, tiny_clip

from vit_lens_clip.convert.sources import ImageTowerMovedError
from vit_lens_clip.errors import NoTextTowerError
from vit_lens_clip.loading import load_clip
from vit_lens_clip.model.hooked_vit import HookedViT


def _storages(*modules: torch.nn.Module) -> dict[int, int]:
    """data pointer -> bytes of every distinct storage behind the modules' parameters and buffers."""
    seen = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return seen


def _edit_every_weight_(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2).add_(0.5)


def _images(model: HookedViT, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *model.cfg.image_size, generator=torch.Generator().manual_seed(3))


def test_load_clip_holds_each_weight_once():
    loaded, whole = load_clip(), load_clip(keep_source=True)
    once = sum(_storages(loaded.model, loaded.clip).values())
    twice = sum(_storages(whole.model, whole.clip).values())
    image_tower = sum(p.numel() * p.element_size() for p in whole.clip.visual.parameters())
    assert not list(loaded.clip.visual.parameters())  # the source's image tower is gone ...
    assert once <= twice - image_tower + 4096  # ... and nothing of it is held twice (a few small buffers differ)
    x = _images(loaded.model)
    with torch.no_grad():  # the ported tower and the text side still equal open_clip's own
        assert rel_err(loaded.model(x), whole.clip.encode_image(x)) <= 1e-5
        assert torch.equal(loaded.encode_text(["a red circle", "a blue square"]),
                           whole.encode_text(["a red circle", "a blue square"]))


def test_encode_image_of_the_released_source_names_loaded_model():
    loaded = load_clip()
    with pytest.raises(ImageTowerMovedError, match=r"lives in loaded\.model .*keep_source=True"):
        loaded.clip.encode_image(_images(loaded.model))


def test_no_two_hooked_weights_share_memory():
    """Taken over, not copied: still, editing one hooked weight never changes another."""
    model = load_clip().model
    spans = sorted((p.data_ptr(), p.data_ptr() + p.numel() * p.element_size()) for p in model.parameters() if p.numel())
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


def test_editing_the_hooked_model_leaves_a_user_held_source_bitwise_unchanged():
    source = tiny_clip(seed=5)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = source.encode_image(x)
    hooked = HookedViT.from_open_clip(source)
    _edit_every_weight_(hooked)
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())
    with torch.no_grad():
        assert torch.equal(source.encode_image(x), y)


def test_editing_the_hooked_model_leaves_a_kept_source_bitwise_unchanged():
    loaded = load_clip(keep_source=True)
    before = {k: v.clone() for k, v in loaded.clip.state_dict().items()}
    _edit_every_weight_(loaded.model)
    assert all(torch.equal(v, before[k]) for k, v in loaded.clip.state_dict().items())


def test_taking_over_gives_one_tensor_under_two_names_two_storages():
    source = tiny_clip(seed=2)
    hooked = HookedViT.from_open_clip(source)
    state = {k: v.clone() for k, v in hooked.state_dict().items()}
    state["ln_final.w"] = state["ln_pre.w"]  # one tensor under two names (and a view of another's storage)
    taken = HookedViT.from_converted(hooked.cfg, state, copy=False)
    assert taken.ln_final.w.data_ptr() != taken.ln_pre.w.data_ptr()
    assert taken.W_proj.data_ptr() == state["W_proj"].data_ptr()  # contiguous weights are not copied


def test_an_image_only_timm_model_is_held_once_and_keeps_its_refusals():
    torch.manual_seed(0)
    loaded = load_clip("timm:vit_tiny_patch16_224")
    torch.manual_seed(0)
    whole = load_clip("timm:vit_tiny_patch16_224", keep_source=True)
    assert not list(loaded.clip.parameters())  # the whole timm model was the tower: nothing of it is left
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(loaded.model(x), whole.clip(x)) <= 1e-5
    with pytest.raises(ImageTowerMovedError, match=r"loaded\.model"):
        loaded.clip(x)
    with pytest.raises(NoTextTowerError, match="image-only"):
        loaded.text_model  # noqa: B018
