"""load_clip: open_clip's factory, local files, QuickGELU from the tag, clear offline errors."""

from __future__ import annotations

import time
import warnings

import open_clip
import pytest
import timm
import torch
from conftest import perturb_, rel_err
from safetensors.torch import save_file

from vit_lens_clip import WeightsUnavailableError, load_clip


@pytest.fixture(scope="module")
def b32_weights(tmp_path_factory):
    """Random ViT-B-32-quickgelu weights saved as a local safetensors file (the shape of OpenAI's B-32)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = perturb_(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval())
    path = tmp_path_factory.mktemp("w") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def test_local_safetensors_file(b32_weights):
    path, reference = b32_weights
    loaded = load_clip("ViT-B-32-quickgelu", pretrained=str(path))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(loaded.model(x), reference.encode_image(x)) <= 1e-5
    emb = loaded.encode_text(["a dog", "a cat", "a red square"])
    assert emb.shape == (3, 512) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert loaded.key.startswith("ViT-B-32-quickgelu|")


def test_quickgelu_tag_under_gelu_named_config(b32_weights, monkeypatch):
    """'openai' weights were trained with QuickGELU; the 'ViT-B-32' config builds GELU. load_clip must port
    QuickGELU (open_clip alone only warns)."""
    path, reference = b32_weights
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: str(path))
    loaded = load_clip("ViT-B-32", pretrained="openai", keep_source=True)  # the source's own tower, read below
    assert loaded.model.cfg.act_fn == "quick_gelu"
    assert type(loaded.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(loaded.model(x), reference.encode_image(x)) <= 1e-5


def test_offline_tag_gives_actionable_error(monkeypatch):
    def offline(cfg, cache_dir=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(WeightsUnavailableError, match="local"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")


def test_bad_names_and_precision():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("ViT-Q-99")
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        load_clip("ViT-B-32", pretrained="not-a-tag")
    with pytest.raises(ValueError, match="precision"):
        load_clip("ViT-B-32", precision="fp8")
    with pytest.raises(FileNotFoundError):
        load_clip("ViT-B-32", pretrained="/no/such/file.safetensors")


# ---------------------------------------------------------------- HookedViT.from_pretrained
def test_from_pretrained_is_load_clips_tower():
    from vit_lens_clip import EMBEDDED_NAME, HookedViT

    tower = HookedViT.from_pretrained(EMBEDDED_NAME, device="cpu")
    loaded = load_clip(EMBEDDED_NAME, keep_source=True)  # open_clip's own encode_image as the reference
    x = torch.randn(2, 3, *tower.cfg.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(tower(x), loaded.clip.encode_image(x)) <= 1e-5
    assert tower.cfg.model_name == EMBEDDED_NAME
    # the text encoder is attached: a string is a direction, the same as through load_clip
    assert rel_err(tower.tokens_to_residual_directions("a red circle"),
                   loaded.model.tokens_to_residual_directions("a red circle")) <= 1e-6
    half = HookedViT.from_pretrained(EMBEDDED_NAME, device="cpu", dtype=torch.bfloat16)
    assert half.cfg.dtype == torch.bfloat16 and half.W_Q.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        HookedViT.from_pretrained(EMBEDDED_NAME, device="cpu", dtype=torch.int8)


def test_from_pretrained_open_clip_name_with_a_local_file(b32_weights):
    from vit_lens_clip import HookedViT

    path, reference = b32_weights
    tower = HookedViT.from_pretrained("ViT-B-32-quickgelu", pretrained=str(path), device="cpu")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(tower(x), reference.encode_image(x)) <= 1e-5
    assert tower.cfg.act_fn == "quick_gelu" and tower.cfg.model_name == "ViT-B-32-quickgelu"


def test_from_pretrained_timm_is_random_and_offline():
    from vit_lens_clip import HookedViT
    from vit_lens_clip.loading import NoTextTowerError

    deit = HookedViT.from_pretrained("timm:deit_tiny_patch16_224", device="cpu")
    assert deit.cfg.model_name == "timm:deit_tiny_patch16_224" and deit.cfg.output_dim == 1000
    with pytest.raises(NoTextTowerError, match="no text tower"):
        deit.tokens_to_residual_directions("a dog")


# ---------------------------------------------------------------- "did you mean", from the real lists
@pytest.mark.parametrize("name, pretrained, suggestion", [
    ("ViT-B/16", None, "'ViT-B-16'"),
    ("vit-b-32", None, "'ViT-B-32'"),
    ("deit_tiny_patch16_224", None, "'timm:deit_tiny_patch16_224'"),
    ("timm:deit_tiny_patch16", None, "'deit_tiny_patch16_224'"),
    ("openai/clip-vit-base-patch32", None, "'hf:openai/clip-vit-base-patch32'"),
    ("ViT-B-32", "laion2b_s34b_b79", "'laion2b_s34b_b79k'"),
    ("timm:vit_tiny_patch16_224", "augreg_in21", "'augreg_in21k'"),
])
def test_unknown_names_suggest_the_nearest_real_ones(name, pretrained, suggestion, monkeypatch):
    from vit_lens_clip.errors import UnknownModelError, user_error_message

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_build)
    monkeypatch.setattr(timm, "create_model", no_build)
    with pytest.raises(UnknownModelError, match="did you mean") as info:
        load_clip(name, pretrained=pretrained)
    message = user_error_message(info.value)
    assert suggestion in message and "\n" not in message
    assert isinstance(info.value, ValueError)  # as before: a bad name is a ValueError


def test_suggestions_come_from_the_lists():
    from vit_lens_clip.convert.suggestions import did_you_mean, nearest

    assert nearest("ViT-B/16", open_clip.list_models())[0] == "ViT-B-16"
    assert nearest("zzzz-not-a-model", open_clip.list_models()) == []
    assert did_you_mean([]) == "" and did_you_mean(["a", "b"]) == " (did you mean 'a' or 'b'?)"


# ---------------------------------------------------------------- offline: one line, at once
@pytest.fixture
def offline_hub(monkeypatch):
    """No route to the hub: the probe fails (as a firewall would), the environment says nothing."""
    from vit_lens_clip.convert import offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(offline, "_probe", lambda host, port, timeout: False)
    offline._hub_unreachable.cache_clear()
    yield offline
    offline._hub_unreachable.cache_clear()


@pytest.mark.parametrize("name, tag", [("ViT-B-32", "laion2b_s34b_b79k"), ("timm:vit_tiny_patch16_224", "augreg_in21k")])
def test_offline_tag_fails_fast_in_one_line(name, tag, offline_hub, tmp_path):
    from huggingface_hub import constants

    from vit_lens_clip.errors import user_error_message

    before = constants.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip(name, pretrained=tag, cache_dir=str(tmp_path))  # an empty cache: nothing to fall back on
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"{elapsed:.1f} s"
    message = user_error_message(info.value)
    assert "\n" not in message and "cannot be reached" in message and "load it from disk" in message
    assert f"load_clip({name!r}, pretrained='/path/to/" in message
    assert constants.HF_HUB_OFFLINE == before  # the switch is put back


def test_offline_from_the_environment_without_a_probe(monkeypatch, tmp_path):
    from vit_lens_clip.convert import offline

    def probe(*args):
        raise AssertionError("the environment already says offline")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(offline, "_probe", probe)
    assert offline.hub_offline()
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path))


def test_offline_cached_checkpoint_still_loads(b32_weights, offline_hub, monkeypatch):
    """Offline, a tag whose checkpoint is in the cache loads (open_clip's download step finds it)."""
    path, reference = b32_weights
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: str(path))
    loaded = load_clip("ViT-B-32-quickgelu", pretrained="openai")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(loaded.model(x), reference.encode_image(x)) <= 1e-5


def test_hub_probe_is_bounded(monkeypatch):
    """A name lookup that hangs cannot hold the caller longer than the probe's timeout."""
    from vit_lens_clip.convert import offline

    monkeypatch.setattr(offline.socket, "create_connection", lambda *a, **k: time.sleep(30))
    start = time.perf_counter()
    assert offline._probe("huggingface.co", 443, 0.2) is False
    assert time.perf_counter() - start < 2


def test_hf_name_goes_through_the_registry(monkeypatch):
    """'hf:NAME': transformers builds the CLIPModel (stubbed here: no hub), the hf family ports its image side."""
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=99, max_position_embeddings=16),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=48,
    )
    torch.manual_seed(0)
    model = perturb_(transformers.CLIPModel(config).eval())
    asked = []

    def from_pretrained(cls, identifier, **kwargs):
        asked.append(identifier)
        return model if cls is transformers.CLIPModel else object()

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(transformers.CLIPProcessor, "from_pretrained", classmethod(from_pretrained))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # before load_clip, which takes this (stubbed, so shared) model's image tower over
        expected = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
    loaded = load_clip("hf:/models/tiny-clip")
    assert asked == ["/models/tiny-clip", "/models/tiny-clip"] and loaded.name == "hf:/models/tiny-clip"
    with torch.no_grad():
        assert rel_err(loaded.model(x), expected) <= 1e-5
