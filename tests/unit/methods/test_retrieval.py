"""Per-head retrieval finds planted neighbours and respects the head selection."""

import pytest
import torch
import torch.nn.functional as F

from vit_lens_clip.methods.retrieval import head_representation, nearest_images


def _data():
    g = torch.Generator().manual_seed(0)
    heads = torch.randn(30, 2, 3, 16, generator=g) * 0.1
    direction = F.normalize(torch.randn(16, generator=g), dim=0)
    heads[[4, 9, 17], 1, 2] += 3 * direction  # images that head (11, 2) writes along one direction
    heads[[5, 6], 0, 0] += 3 * direction  # the same direction, but in another head
    return heads, direction


def test_image_and_text_queries_follow_the_selected_head():
    heads, direction = _data()
    idx, _ = nearest_images(heads, [10, 11], [(11, 2)], query=4, n_layers=12, top=2)
    assert set(idx.tolist()) == {9, 17}
    idx, _ = nearest_images(heads, [10, 11], [(11, 2)], query=direction, n_layers=12, top=3)
    assert set(idx.tolist()) == {4, 9, 17}
    idx, _ = nearest_images(heads, [10, 11], [(10, 0)], query=direction, n_layers=12, top=2)
    assert set(idx.tolist()) == {5, 6}
    both = head_representation(heads, [10, 11], [(10, 0), (-1, 2)], n_layers=12)
    assert torch.allclose(both, heads[:, 0, 0] + heads[:, 1, 2])


def test_bad_selection():
    heads, _ = _data()
    with pytest.raises(ValueError, match="not among"):
        nearest_images(heads, [10, 11], [(3, 0)], query=0, n_layers=12)
    with pytest.raises(ValueError, match="out of range"):
        nearest_images(heads, [10, 11], [(11, 7)], query=0, n_layers=12)
