"""decompose/decomposition.py: a Decomposition's total is the embedding, its head scores are dots with the texts;
a TextDecomposition's head_tokens are its (head, token) pieces."""

import pytest
import torch
from conftest import rel_err, tiny_clip, type_checks_off

from vit_lens_clip.decompose.decomposition import Decomposition, TextDecomposition
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.decompose.text import decompose_text
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT


def test_image_decomposition_total_and_head_scores():
    model = tiny_clip(seed=6)
    hooked = HookedViT.from_open_clip(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    parts = decompose(hooked, x, layers=[1, 2])
    assert isinstance(parts, Decomposition) and parts.heads.shape == (2, 2, 4, 48)
    with torch.no_grad():
        assert rel_err(parts.total(), model.encode_image(x, normalize=False)) <= 1e-5
    texts = torch.nn.functional.normalize(torch.randn(3, 48, generator=torch.Generator().manual_seed(1)), dim=-1)
    scores = parts.head_scores(texts)
    assert scores.shape == (2, 2, 4, 3)
    assert torch.allclose(scores[1, 0, 2], parts.heads[1, 0, 2] @ texts.T, atol=1e-6)
    with type_checks_off(), pytest.raises(BadInputError, match=r"texts must be \[n, 48\], got shape \(3, 47\)"):
        parts.head_scores(torch.randn(3, 47))  # the package's own check, as in a normal install


def test_text_decomposition_head_tokens():
    model = tiny_clip(seed=7)
    hooked = HookedTextTransformer.from_open_clip(model)
    tokens = torch.randint(1, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    tokens[:, 6], tokens[:, 7:] = 49407, 0
    parts = decompose_text(hooked, tokens, per_token=True)
    assert isinstance(parts, TextDecomposition) and parts.head_tokens is parts.head_sources
    assert parts.pool_index.tolist() == [6, 6]
    with torch.no_grad():
        assert rel_err(parts.total(), model.encode_text(tokens)) <= 1e-5
    assert rel_err(parts.head_tokens.sum(3), parts.heads) <= 1e-5
