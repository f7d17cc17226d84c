"""loading.py: load_clip() of the embedded default returns a LoadedCLIP whose text embeddings are unit vectors,
whose hooked image tower equals the source CLIP, and whose hooked text tower equals clip.encode_text; an unknown
name fails before anything is built, naming the nearest model."""

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from PIL import Image

from vit_lens_clip.errors import UnknownModelError
from vit_lens_clip.loading import EMBEDDED_NAME, LoadedCLIP, load_clip


@pytest.fixture(scope="module")
def loaded():
    return load_clip(keep_source=True)  # open_clip's own image tower stays, as the reference below


def test_embedded_default(loaded):
    assert isinstance(loaded, LoadedCLIP) and loaded.name == EMBEDDED_NAME and loaded.device == torch.device("cpu")
    texts = loaded.encode_text(["a red circle", "two blue squares", "a green star"], batch_size=2)
    assert texts.shape == (3, loaded.model.cfg.output_dim)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(texts[0], texts[1], atol=1e-2)
    assert torch.allclose(loaded.encode_text("a red circle")[0], texts[0], atol=1e-5)


def test_hooked_towers_equal_the_source_clip(loaded):
    image = Image.new("RGB", (80, 70), (200, 30, 30))
    x = loaded.preprocess(image)[None]
    assert tuple(x.shape[-2:]) == tuple(loaded.model.cfg.image_size)
    with torch.no_grad():
        expected = loaded.clip.encode_image(x)
        assert rel_err(loaded.encode_image(x, normalize=False), expected) <= 1e-5
        assert torch.allclose(loaded.encode_image(x), F.normalize(expected, dim=-1), atol=1e-5)
        tokens = loaded.tokenizer(["a red circle"])
        assert rel_err(loaded.text_model(tokens), loaded.clip.encode_text(tokens)) <= 1e-5
    assert loaded.text_model is loaded.text_model  # built once


def test_unknown_name_names_the_nearest():
    with pytest.raises(UnknownModelError, match="did you mean 'ViT-B-16'"):
        load_clip("ViT-B/16")
