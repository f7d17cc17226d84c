"""load_clip: open_clip's factory, local files, QuickGELU from the tag, clear offline errors."""

from __future__ import annotations

import warnings

import open_clip
import pytest
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
    loaded = load_clip("ViT-B-32", pretrained="openai")
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
