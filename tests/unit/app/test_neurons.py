"""app/neurons.py: default layers leave out the last one (its neurons have no later layer), and pool embeddings
keep each text's first occurrence with its own unit embedding."""

import pytest
import torch

from vit_lens_clip.app.neurons import NeuronOptions, default_layers, pool_embeddings
from vit_lens_clip.loading import load_clip


def test_default_layers_and_options():
    assert default_layers(6) == [0, 1, 2, 3, 4] and default_layers(1) == []
    options = NeuronOptions()
    assert options.layers is None and options.n_reference > 0 and 0 < options.top_fraction < 1


@pytest.fixture(scope="module")
def loaded():
    return load_clip()


def test_pool_embeddings_deduplicate_in_order(loaded, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a red circle\na blue square\n")
    b.write_text("a blue square\na green star\n")
    texts, embeddings = pool_embeddings(loaded, [str(a), str(b)])
    assert texts == ["a red circle", "a blue square", "a green star"]
    assert torch.allclose(embeddings, loaded.encode_text(texts), atol=1e-5)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
