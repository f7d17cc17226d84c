"""TextSpan's numerical rank: directions at the data's rounding level are never kept (methods/textspan/rank.py).

A head writes through W_O, so its contributions have rank about d_head, below the published rank of 80. Stored in
float32 they gain rounding directions; kept, those make the picks depend on how the forward pass rounded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_lens_clip.methods.textspan import algorithm, text_span
from vit_lens_clip.methods.textspan.rank import numerical_rank, storage_eps
from vit_lens_clip.methods.textspan.reference import text_span_reference

torch.set_num_threads(1)


def head_like(n_heads: int, n: int, d_out: int, d_head: int, n_texts: int, seed: int = 0):
    """float64 contributions of rank d_head + 1 (the mean adds one) in d_out dimensions, and unit texts."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_heads, n, d_head, generator=g, dtype=torch.float64) * torch.logspace(0, -1.5, d_head, dtype=torch.float64)
    w_o = torch.randn(n_heads, d_head, d_out, generator=g, dtype=torch.float64)
    C = z @ w_o + 0.3 * torch.randn(n_heads, 1, d_out, generator=g, dtype=torch.float64)
    T = torch.randn(n_texts, d_out, generator=g, dtype=torch.float64)
    return C, T / T.norm(dim=-1, keepdim=True)


def rounded_twice(C: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The same data rounded to float32 in two ways (as two forward passes with other summation orders would)."""
    g = torch.Generator().manual_seed(seed)
    wiggled = C * (1 + 1e-7 * torch.randn(C.shape, generator=g, dtype=C.dtype))
    return C.float(), wiggled.float()


def test_storage_eps_sees_float32_values_cast_to_float64():
    x = torch.randn(50, 40, dtype=torch.float64)
    assert storage_eps(x) == torch.finfo(torch.float64).eps
    assert storage_eps(x.float()) == torch.finfo(torch.float32).eps
    assert storage_eps(x.float().double()) == torch.finfo(torch.float32).eps
    assert storage_eps(x.float().double().numpy()) == torch.finfo(torch.float32).eps
    assert storage_eps(x.half()) == torch.finfo(torch.float16).eps
    assert storage_eps(x[:, ::3].float().double()) == torch.finfo(torch.float32).eps  # not contiguous
    # float32 values only in part (the sample of 4096 spread values could miss the rest): float64
    mixed = torch.randn(300, 100, dtype=torch.float64).float().double()
    mixed[7, 4] += 1e-12  # flat index 704, not among the sampled ones
    assert storage_eps(mixed) == torch.finfo(torch.float64).eps
    with pytest.raises(TypeError):
        storage_eps(torch.ones(3, dtype=torch.long))


def test_rounding_directions_are_not_kept_so_picks_do_not_depend_on_the_rounding():
    C, T = head_like(6, 300, 96, 24, 400)
    a, b = rounded_twice(C)
    # the published rule (keep up to `rank` directions above the float64 cut) keeps ~56 rounding directions
    old_a = text_span(a, T.float(), k=8, dtype=torch.float64, data_eps=0.0)
    old_b = text_span(b, T.float(), k=8, dtype=torch.float64, data_eps=0.0)
    assert bool((old_a.ranks == 80).all())
    assert not bool((old_a.indices == old_b.indices).all()), "rounding noise no longer moves the old picks"
    new_a, new_b = text_span(a, T, k=8), text_span(b, T, k=8)
    assert bool((new_a.ranks == 25).all()) and bool((new_b.ranks == 25).all())
    torch.testing.assert_close(new_a.indices, new_b.indices, rtol=0, atol=0)
    # cast up to float64 first: the same decision (the values are float32 values)
    torch.testing.assert_close(text_span(a.double(), T, k=8).indices, new_a.indices, rtol=0, atol=0)


@pytest.mark.parametrize("n", [300, 5000])  # the eigenvalue certificate; n + D too large for it: the residual one
def test_gram_route_decides_the_rank_of_float32_data_and_matches_the_reference(n, monkeypatch):
    C, T = head_like(3, n, 64, 20, 200, seed=2)
    C32 = C.float()

    def no_svd(*args, **kwargs):
        raise AssertionError("the Gram route should have decided this rank")

    monkeypatch.setattr(algorithm.torch.linalg, "svd", no_svd)
    result = text_span(C32, T, k=6)
    monkeypatch.undo()
    assert result.ranks.tolist() == [21, 21, 21]
    for h in range(3):
        ref = text_span_reference(C32[h].numpy(), T.numpy(), k=6)
        assert ref.rank == 21
        np.testing.assert_array_equal(result.indices[h].numpy(), ref.indices)
        np.testing.assert_allclose(result.reconstruction[h].numpy(), ref.reconstruction, rtol=0,
                                   atol=1e-9 * float(np.abs(ref.reconstruction).max()))


@pytest.mark.parametrize("weak, data_eps", [(1e-9, None), (1e-6, None), (3e-6, float(np.finfo(np.float32).eps))])
def test_a_rank_the_gram_matrix_cannot_decide_goes_to_the_svd(weak, data_eps, monkeypatch):
    # float64 data with a sixth direction at `weak` of the top one, above the rank floors. At 1e-9 the Gram matrix
    # cannot resolve it. At 1e-6 and 3e-6 (with float32's floor, 1e-6 here) it can, and the residual bound
    # settles the rank, but the Gram eigenvector could be off by eps / weak² > 1e-5: all three need the SVD
    g = torch.Generator().manual_seed(3)
    U = torch.linalg.qr(torch.randn(200, 6, generator=g, dtype=torch.float64)).Q
    Vt = torch.linalg.qr(torch.randn(40, 6, generator=g, dtype=torch.float64)).Q.T
    s = torch.tensor([1.0, 0.5, 0.3, 0.2, 0.1, weak], dtype=torch.float64)
    C = ((U * s) @ Vt)[None]
    T = torch.randn(30, 40, generator=g, dtype=torch.float64)
    T = T / T.norm(dim=-1, keepdim=True)
    calls = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(algorithm.torch.linalg, "svd", lambda *a, **kw: calls.append(1) or real_svd(*a, **kw))
    result = text_span(C, T, k=4, data_eps=data_eps)
    assert calls, "the SVD was not used for an undecidable rank"
    ref = text_span_reference(C[0].numpy(), T.numpy(), k=4, data_eps=data_eps)
    assert int(result.ranks[0]) == ref.rank == 6
    np.testing.assert_array_equal(result.indices[0].numpy(), ref.indices)
    np.testing.assert_allclose(result.reconstruction[0].numpy(), ref.reconstruction, rtol=0, atol=1e-6)


def test_numerical_rank_floors():
    s = np.array([1.0, 1e-3, 1e-7, 1e-12])
    assert numerical_rank(s, 100, 50, np.finfo(np.float64).eps) == 4
    assert numerical_rank(s, 100, 50, np.finfo(np.float64).eps, np.finfo(np.float32).eps) == 2
    assert numerical_rank(s, 100, 50, np.finfo(np.float32).eps) == 2
    assert numerical_rank(np.zeros(3), 10, 3, 1e-16) == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_embedded_model_picks_do_not_depend_on_float32_rounding():
    from vit_lens_clip import load_clip
    from vit_lens_clip.datasets.shapes_world import ShapesDataset
    from vit_lens_clip.methods.textspan import load_pool
    from vit_lens_clip.methods.textspan.runs import collect_head_contributions

    clip = load_clip()
    scenes = ShapesDataset(200, seed=0, transform=clip.preprocess)
    images = torch.stack([scenes[i]["image"] for i in range(len(scenes))])
    C = collect_head_contributions(clip, images, last_n_layers=2, progress=False).stack().flatten(0, 1)
    assert C.dtype == torch.float32
    T = clip.encode_text(load_pool("descriptions")[::3]).double()
    T = T / T.norm(dim=-1, keepdim=True)
    a, b = rounded_twice(C.double())
    old = [text_span(x, T, k=10, data_eps=0.0).indices for x in (a, b)]
    assert not bool((old[0] == old[1]).all()), "rounding noise no longer moves the old picks"
    new = [text_span(x, T, k=10) for x in (a, b)]
    assert bool((new[0].ranks < 80).all())
    torch.testing.assert_close(new[0].indices, new[1].indices, rtol=0, atol=0)
