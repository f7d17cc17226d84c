"""The released implementation's loop (the bench's baseline) picks as the exact reference does on tie-free data."""

import numpy as np
import pytest

from vit_lens_clip.methods.textspan.bench import random_head_data
from vit_lens_clip.methods.textspan.published_loop import text_span_published_loop
from vit_lens_clip.methods.textspan.reference import text_span_reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_published_loop_matches_the_reference(seed):
    C, T = random_head_data(1, 200, 150, 48, seed=seed)
    C, T = C[0].numpy(), T.numpy()
    loop = text_span_published_loop(C, T, k=8, rank=30)
    exact = text_span_reference(C, T, k=8, rank=30)
    assert np.array_equal(loop.indices, exact.indices)
    scale = np.abs(exact.reconstruction).max()
    assert np.abs(loop.reconstruction - exact.reconstruction).max() < 1e-5 * scale  # float32 picks
    assert loop.reconstruction.dtype == np.float32
    assert not np.allclose(loop.reconstruction, C.mean(0), atol=1e-3 * scale)  # the picks removed something


def test_published_loop_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="need C"):
        text_span_published_loop(np.zeros((5, 4)), np.zeros((3, 6)))
