"""TextSpan: batched algorithm against the NumPy reference, pools, embedding cache, reports, head ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_refused

from vit_lens_clip.methods.textspan import TextSpanResult, embed_texts_cached, load_pool, rank_heads_by_text, text_span
from vit_lens_clip.methods.textspan.bench import bench_textspan, random_head_data
from vit_lens_clip.methods.textspan.make_pools import build_descriptions
from vit_lens_clip.methods.textspan.pools import BUILTIN_POOLS
from vit_lens_clip.methods.textspan.reference import text_span_reference
from vit_lens_clip.methods.textspan.report import to_html, to_markdown, write_reports

torch.set_num_threads(1)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def structured_heads(n_heads, n_images, d_out, n_texts, seed):
    """Heads with a decaying spectrum, a non-zero mean and unit random texts."""
    return random_head_data(n_heads, n_images, n_texts, d_out, seed)


# ------------------------------------------------------------------ batched == reference


@pytest.mark.parametrize(
    "n_heads, n_images, d_out, n_texts, k, rank, seed",
    [
        (4, 60, 24, 50, 6, 10, 0),  # rank below n and D
        (3, 12, 24, 40, 8, 80, 1),  # rank capped by n_images
        (3, 80, 16, 30, 10, 80, 2),  # rank capped by d_out
        (2, 40, 20, 35, 20, 6, 3),  # more picks than rank: later picks have nothing left
        (2, 320, 300, 60, 5, 40, 5),  # D over one Gram block: the block-wise lower-triangle Gram route
    ],
)
def test_batched_matches_reference_float64(n_heads, n_images, d_out, n_texts, k, rank, seed):
    C, T = structured_heads(n_heads, n_images, d_out, n_texts, seed)
    result = text_span(C, T, k=k, rank=rank)
    assert result.indices.shape == (n_heads, k)
    assert result.reconstruction.shape == (n_heads, n_images, d_out)
    for h in range(n_heads):
        ref = text_span_reference(C[h].numpy(), T.numpy(), k=k, rank=rank)
        assert int(result.ranks[h]) == ref.rank == min(n_images, d_out, rank)
        np.testing.assert_array_equal(result.indices[h].numpy(), ref.indices)
        np.testing.assert_allclose(result.variance_explained[h].numpy(), ref.variance_explained, atol=1e-12)
        np.testing.assert_allclose(result.reconstruction[h].numpy(), ref.reconstruction, atol=1e-10)
        np.testing.assert_allclose(result.mean[h].numpy(), ref.mean, atol=1e-12)


@pytest.mark.parametrize("d_out", [7, 256, 300, 600])
def test_lower_triangle_gram_equals_the_full_product_where_eigh_reads_it(d_out):
    from vit_lens_clip.methods.textspan.gram_eigen import gram_lower

    C = torch.randn(3, 50, d_out, dtype=torch.float64, generator=torch.Generator().manual_seed(d_out))
    gram = gram_lower(C)
    full = C.transpose(1, 2) @ C
    torch.testing.assert_close(gram.tril(), full.tril(), rtol=1e-12, atol=1e-12)
    upper = gram.triu(1)
    assert bool(((upper == 0) | torch.isclose(upper, full.triu(1), rtol=1e-12, atol=1e-12)).all())
    for a, b in zip(torch.linalg.eigvalsh(gram, UPLO="L"), torch.linalg.eigvalsh(full), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_lapack_and_torch_routes_give_the_same_top_eigenpairs(dtype, tol):
    """The CPU route (SciPy ?syrk + ?syevr, top r only) and the device route (blocked Gram + torch eigh) agree:
    eigenvalues, |C|_F² and the spanned subspace (eigenvectors up to sign)."""
    from vit_lens_clip.methods.textspan import gram_eigen

    C, _ = structured_heads(3, 400, 200, 2, seed=9)
    C = C.to(dtype)
    a = gram_eigen._lapack_route(C, 30)
    b = gram_eigen._torch_route(C, 30)
    assert bool(a[3].all()) and bool(b[3].all())
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol * float(b[0].max()))
    torch.testing.assert_close(a[2], b[2], rtol=tol, atol=0.0)
    overlap = (a[1] * b[1]).sum(-1).abs()  # [h, r]: |cos| between matching eigenvectors
    torch.testing.assert_close(overlap, torch.ones_like(overlap), rtol=0, atol=50 * tol)
    with pytest.raises(ValueError, match="r must lie"):
        gram_eigen.top_gram_eigen(C, 0)


@pytest.mark.parametrize("failing", [("sytrd",), ("stein",), ("sytrd", "syevr")])
def test_failed_lapack_calls_fall_back_to_the_subset_driver_then_the_svd(monkeypatch, failing):
    """The first head's tridiagonal route fails (its ?sytrd or ?stein reports an error): ?syevr takes the head;
    when that fails too, the SVD does. Either way: the reference's picks and reconstruction."""
    from vit_lens_clip.methods.textspan import gram_eigen

    calls = {name: 0 for name in ("sytrd", "stein", "syevr")}
    routines = gram_eigen._lapack(torch.float64)
    monkeypatch.setattr(gram_eigen, "_LAPACK_MIN_DIM", 1)  # the LAPACK route at this small D too
    monkeypatch.setattr(gram_eigen.torch, "get_num_threads", lambda: 1)  # ... which runs on one thread

    def failing_first(name):
        real = routines[name]

        def call(*args, **kwargs):
            out = real(*args, **kwargs)
            calls[name] += 1
            return (*out[:-1], 1) if name in failing and calls[name] == 1 else out
        return call

    for name in calls:
        monkeypatch.setitem(routines, name, failing_first(name))
    C, T = structured_heads(2, 120, 40, 30, seed=6)
    result = text_span(C, T, k=5, rank=12)
    assert calls["sytrd"] == 2 and calls["syevr"] == 1
    for h in range(2):
        ref = text_span_reference(C[h].numpy(), T.numpy(), k=5, rank=12)
        np.testing.assert_array_equal(result.indices[h].numpy(), ref.indices)
        np.testing.assert_allclose(result.reconstruction[h].numpy(), ref.reconstruction, atol=1e-10)


@pytest.mark.parametrize("threads, dim, device_route", [(1, 256, False), (2, 256, True), (1, 255, True)])
def test_the_route_follows_threads_and_width(monkeypatch, threads, dim, device_route):
    """LAPACK pieces on one thread from D = 256 on; torch's route on more threads or below it."""
    from vit_lens_clip.methods.textspan import gram_eigen

    taken = []
    for name in ("_lapack_route", "_torch_route"):
        real = getattr(gram_eigen, name)
        monkeypatch.setattr(gram_eigen, name, lambda C, r, real=real, name=name: taken.append(name) or real(C, r))
    monkeypatch.setattr(gram_eigen.torch, "get_num_threads", lambda: threads)
    C = torch.randn(1, dim + 4, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(dim))
    gram_eigen.top_gram_eigen(C, 4)
    assert taken == ["_torch_route" if device_route else "_lapack_route"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_picks_past_a_heads_numerical_rank_are_the_references(dtype):
    """Head-like data (numerical rank d_head + 1 = 9) with k = 25: once as many directions as the rank are
    picked the head is used up; the later picks (index 0, removing nothing) and the reconstruction are the
    reference's."""
    from vit_lens_clip.methods.textspan.bench import head_like_data

    C, T = head_like_data(3, 90, 50, 40, seed=12, d_head=8)
    result = text_span(C.to(dtype), T.to(dtype), k=25, rank=80, dtype=dtype)
    for h in range(3):
        ref = text_span_reference(C[h].double().numpy(), T.numpy(), k=25, rank=80, data_eps=torch.finfo(torch.float32).eps)
        assert int(result.ranks[h]) == ref.rank == 9
        np.testing.assert_array_equal(result.indices[h].numpy(), ref.indices)
        assert (result.indices[h, 9:] == 0).all()
        np.testing.assert_allclose(result.reconstruction[h].double().numpy(), ref.reconstruction,
                                   atol=1e-10 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lapack_route_on_degenerate_heads_matches_the_reference(monkeypatch, dtype):
    """D = 260 on one thread (the LAPACK route): an all-zero head, a head with half its columns zero, a rank-one
    head and a full one give the reference's ranks, picks and reconstructions."""
    from vit_lens_clip.methods.textspan import gram_eigen

    monkeypatch.setattr(gram_eigen.torch, "get_num_threads", lambda: 1)
    taken = []
    real = gram_eigen._lapack_route
    monkeypatch.setattr(gram_eigen, "_lapack_route", lambda C, r: taken.append(1) or real(C, r))
    C, T = structured_heads(4, 300, 260, 80, seed=1)
    C[0] = 0
    C[1, :, 100:] = 0
    C[2] = C[2, :, :1] * torch.linspace(0.5, 1.5, 260, dtype=torch.float64)
    result = text_span(C.to(dtype), T.to(dtype), k=6, rank=40, dtype=dtype, redecide=False)
    assert taken
    for h, rank in enumerate([0, 40, 1, 40]):
        ref = text_span_reference(C[h].to(dtype).numpy(), T.to(dtype).numpy(), k=6, rank=40,
                                  dtype=np.float64 if dtype == torch.float64 else np.float32)
        assert int(result.ranks[h]) == ref.rank == rank
        np.testing.assert_array_equal(result.indices[h].numpy(), ref.indices)
        np.testing.assert_allclose(result.reconstruction[h].numpy(), ref.reconstruction,
                                   atol=1e-12 if dtype == torch.float64 else 1e-5)


def test_eigenvectors_for_the_wrong_eigenvalues_are_caught(monkeypatch):
    """?stein vectors that are orthonormal but belong to other eigenvalues (two columns swapped) fail the residual
    check: ?syevr takes the head, and the result is the reference's."""
    from vit_lens_clip.methods.textspan import gram_eigen

    routines = gram_eigen._lapack(torch.float64)
    real = routines["stein"]

    def swapped(*args, **kwargs):
        z, info = real(*args, **kwargs)
        z = z.copy()
        z[:, [0, -1]] = z[:, [-1, 0]]
        return z, info

    syevr_calls = []
    real_syevr = routines["syevr"]
    monkeypatch.setitem(routines, "stein", swapped)
    monkeypatch.setitem(routines, "syevr", lambda *a, **k: syevr_calls.append(1) or real_syevr(*a, **k))
    C, T = structured_heads(1, 300, 260, 40, seed=8)
    vals, vecs, _, solved = gram_eigen._lapack_route(C, 12)
    assert bool(solved.all()) and syevr_calls == [1]
    exact = torch.linalg.eigvalsh(C[0].T @ C[0]).flip(0)[:12]
    torch.testing.assert_close(vals[0], exact, rtol=1e-10, atol=0.0)
    residual = vecs[0] @ (C[0].T @ C[0]) - vals[0][:, None] * vecs[0]
    assert float(residual.abs().max()) <= 1e-9 * float(exact[0])


def test_batched_matches_reference_float32():
    C, T = structured_heads(5, 70, 32, 60, seed=4)
    result = text_span(C.float(), T.float(), k=8, rank=16, dtype=torch.float32, redecide=False)
    assert result.reconstruction.dtype == torch.float32
    for h in range(5):
        ref = text_span_reference(C[h].float().numpy(), T.float().numpy(), k=8, rank=16, dtype=np.float32)
        np.testing.assert_array_equal(result.indices[h].numpy(), ref.indices)
        np.testing.assert_allclose(result.variance_explained[h].numpy(), ref.variance_explained, atol=1e-5)
        np.testing.assert_allclose(result.reconstruction[h].numpy(), ref.reconstruction, atol=1e-4)


def near_tie_heads(seed: int):
    """Heads and a pool where each head's best texts have twins 1e-12 (a tie) and 1e-8 (not a tie) away."""
    C, T = structured_heads(4, 80, 24, 40, seed)
    g = torch.Generator().manual_seed(seed + 100)
    first = text_span(C, T, k=6, rank=12).indices.flatten().unique()
    twins = []
    for scale in (1e-12, 1e-8):
        nudged = T[first] + scale * torch.randn(len(first), T.shape[1], generator=g, dtype=torch.float64)
        twins.append(unit_rows(nudged))
    return C, torch.cat([twins[1], T, twins[0]])  # the 1e-8 twins come first, so lowest index alone cannot decide


def test_batched_matches_reference_on_near_ties():
    C, T = near_tie_heads(seed=12)
    result = text_span(C, T, k=6, rank=12)
    for h in range(C.shape[0]):
        ref = text_span_reference(C[h].numpy(), T.numpy(), k=6, rank=12)
        np.testing.assert_array_equal(result.indices[h].numpy(), ref.indices)
        np.testing.assert_allclose(result.reconstruction[h].numpy(), ref.reconstruction, atol=1e-10)


def test_float32_with_float64_redecision_gives_float64_picks():
    C, T = near_tie_heads(seed=13)
    C32, T32 = C.float(), T.float()
    result = text_span(C32, T32, k=6, rank=12, dtype=torch.float32)
    assert result.reconstruction.dtype == torch.float32 and result.redecided.any()
    for h in range(C.shape[0]):
        ref = text_span_reference(C32[h].double().numpy(), T32.double().numpy(), k=6, rank=12)
        np.testing.assert_array_equal(result.indices[h].numpy(), ref.indices)
        np.testing.assert_allclose(result.reconstruction[h].numpy(), ref.reconstruction, atol=1e-4)


@pytest.mark.parametrize("max_memory", [1, 60_000, None])
def test_head_chunks_from_a_memory_budget_give_the_same_result(max_memory):
    C, T = structured_heads(5, 50, 20, 40, seed=14)
    whole = text_span(C, T, k=5, rank=10, prefix_ks=(2,), max_memory=None)
    chunked = text_span(C, T, k=5, rank=10, prefix_ks=(2,), max_memory=max_memory)
    assert torch.equal(chunked.indices, whole.indices)
    torch.testing.assert_close(chunked.reconstruction, whole.reconstruction, rtol=0, atol=1e-12)
    torch.testing.assert_close(chunked.prefix_reconstructions[2], whole.prefix_reconstructions[2], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="max_memory"):
        text_span(C, T, k=5, max_memory=0)


def test_head_batch_shape_and_texts_are_kept():
    C, T = structured_heads(6, 30, 16, 25, seed=5)
    names = [f"text {j}" for j in range(25)]
    flat = text_span(C, T, k=4, rank=8, texts=names)
    grid = text_span(C.reshape(2, 3, 30, 16), T, k=4, rank=8, texts=names)
    assert grid.indices.shape == (2, 3, 4) and grid.mean.shape == (2, 3, 16) and grid.ranks.shape == (2, 3)
    torch.testing.assert_close(grid.indices.reshape(6, 4), flat.indices, rtol=0, atol=0)
    assert grid.texts[1][2] == [names[j] for j in flat.indices[5].tolist()]
    row = grid[1, 2]
    assert row.indices.tolist() == flat.indices[5].tolist() and row.texts == grid.texts[1][2]
    assert set(grid.rows()) == {(a, b) for a in range(2) for b in range(3)}
    single = text_span(C[0], T, k=4, rank=8, texts=names)
    assert single.indices.tolist() == flat.indices[0].tolist() and single.texts == flat.texts[0]


def test_variance_explained_adds_up_to_what_the_reconstruction_captures():
    C, T = structured_heads(3, 50, 20, 40, seed=6)
    result = text_span(C, T, k=12, rank=20)
    centred = C - C.mean(dim=1, keepdim=True)
    residual = C - result.reconstruction
    expected = 1 - residual.pow(2).sum((1, 2)) / centred.pow(2).sum((1, 2))
    torch.testing.assert_close(result.variance_explained.sum(-1), expected, atol=1e-10, rtol=0)
    assert (result.variance_explained >= 0).all()


def test_data_along_one_text_is_found_first_and_fully_explained():
    g = torch.Generator().manual_seed(7)
    T = unit_rows(torch.randn(30, 16, generator=g, dtype=torch.float64))
    C = torch.randn(2, 40, 1, generator=g, dtype=torch.float64) * T[[11, 23]][:, None, :] + 3 * T[0]
    result = text_span(C, T, k=2, rank=16)
    assert result.indices[:, 0].tolist() == [11, 23]
    torch.testing.assert_close(result.variance_explained[:, 0], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(result.reconstruction, C)


def test_ties_are_broken_by_lowest_index():
    C, T = structured_heads(3, 40, 12, 10, seed=8)
    duplicated = torch.cat([T, T, T])  # each text appears at j, j + 10, j + 20
    plain = text_span(C, T, k=5, rank=12)
    tripled = text_span(C, duplicated, k=5, rank=12)
    torch.testing.assert_close(tripled.indices, plain.indices, rtol=0, atol=0)
    assert (tripled.indices < 10).all()
    for h in range(3):
        ref = text_span_reference(C[h].numpy(), duplicated.numpy(), k=5, rank=12)
        np.testing.assert_array_equal(ref.indices, tripled.indices[h].numpy())


def test_exhausted_head_picks_lowest_remaining_index_in_both_implementations():
    C, T = structured_heads(1, 30, 6, 12, seed=9)
    result = text_span(C, T, k=12, rank=6)  # 6 dimensions: after 6 picks nothing is left
    ref = text_span_reference(C[0].numpy(), T.numpy(), k=12, rank=6)
    np.testing.assert_array_equal(result.indices[0].numpy(), ref.indices)
    assert result.variance_explained[0, 6:].abs().max() < 1e-12
    torch.testing.assert_close(result.variance_explained[0].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_rank_is_capped_by_numerical_rank():
    g = torch.Generator().manual_seed(10)
    basis = torch.randn(3, 20, generator=g, dtype=torch.float64)
    C = (torch.randn(50, 3, generator=g, dtype=torch.float64) @ basis)[None]  # rank 3 in D = 20
    T = unit_rows(torch.randn(25, 20, generator=g, dtype=torch.float64))
    result = text_span(C, T, k=5, rank=80)
    ref = text_span_reference(C[0].numpy(), T.numpy(), k=5, rank=80)
    assert int(result.ranks[0]) == ref.rank == 3
    np.testing.assert_array_equal(result.indices[0].numpy(), ref.indices)
    assert text_span(C, T, k=2, rank=2).ranks.item() == 2


def test_inputs_are_not_modified_and_bad_inputs_are_rejected():
    C, T = structured_heads(2, 20, 8, 10, seed=11)
    C_copy, T_copy = C.clone(), T.clone()
    text_span(C, T, k=3, rank=4)
    assert torch.equal(C, C_copy) and torch.equal(T, T_copy)
    # mismatched d_out breaks the shared axis name
    assert_refused(lambda: text_span(C, T[:, :7], k=3), "text dimension 7 does not match contributions' 8")
    with pytest.raises(ValueError):
        text_span(C, T, k=11)
    with pytest.raises(ValueError):
        text_span(C, T, k=3, texts=["only one"])
    with pytest.raises(ValueError):
        text_span(C, T, k=3, dtype=torch.float16)


def test_bench_quick_run_agrees():
    out = bench_textspan(n_heads=3, n_images=60, n_texts=80, d_out=24, k=5, rank=10)
    assert out["picks_identical"] and out["max_reconstruction_abs_diff"] < 1e-10


# ------------------------------------------------------------------ pools


def test_builtin_pools_load_and_cover_the_shapes_world():
    descriptions = load_pool("descriptions")
    words = load_pool("words")
    assert 3000 <= len(descriptions) <= 4000 and len(set(descriptions)) == len(descriptions)
    assert len(words) == 3500 and all(w.isalpha() for w in words)
    lowered = {d.lower() for d in descriptions}
    for text in [
        "a red circle",
        "a blue square",
        "a bird",
        "a waterbird",
        "a landbird",
        "three objects",
        "an object in the top left corner",
        "a star in the bottom right corner",
        "water",
        "snow",
    ]:
        assert text in lowered, text
    assert descriptions == build_descriptions()  # the shipped file is what make_pools generates


def test_user_pool_file_dedupes_and_errors(tmp_path):
    path = tmp_path / "pool.txt"
    path.write_text("a cat\n\n  a dog  \na cat\n\na fish\n", encoding="utf-8")
    assert load_pool(str(path)) == ["a cat", "a dog", "a fish"]
    with pytest.raises(ValueError, match="neither a built-in pool"):
        load_pool(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no texts"):
        load_pool(str(empty))
    assert BUILTIN_POOLS["words"].is_file()


# ------------------------------------------------------------------ embedding cache


class CountingEncoder:
    def __init__(self, d_out: int = 6):
        self.calls = 0
        self.d_out = d_out

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        return torch.stack([torch.full((self.d_out,), float(len(t))) + torch.arange(self.d_out) for t in texts])


def test_embedding_cache_hit_and_miss(tmp_path, monkeypatch):
    texts = [f"text number {i}" for i in range(10)]
    encoder = CountingEncoder()
    first = embed_texts_cached(texts, encoder, "fake-model", cache_dir=tmp_path, batch_size=4)
    assert encoder.calls == 3 and first.shape == (10, 6)
    torch.testing.assert_close(first, encoder(texts))
    encoder.calls = 0
    again = embed_texts_cached(texts, encoder, "fake-model", cache_dir=tmp_path, batch_size=4)
    assert encoder.calls == 0 and torch.equal(again, first)
    embed_texts_cached(texts, encoder, "another-model", cache_dir=tmp_path, batch_size=4)
    assert encoder.calls == 3
    embed_texts_cached(texts[::-1], encoder, "fake-model", cache_dir=tmp_path, batch_size=4)
    assert encoder.calls == 6
    assert len(list(tmp_path.glob("*.safetensors"))) == 3 and not list(tmp_path.glob(".tmp-*"))
    monkeypatch.setenv("VIT_LENS_CLIP_CACHE", str(tmp_path / "env_root"))
    embed_texts_cached(texts, encoder, "fake-model", batch_size=100)
    assert len(list((tmp_path / "env_root" / "text_embeddings").glob("*.safetensors"))) == 1
    with pytest.raises(ValueError):
        embed_texts_cached([], encoder, "fake-model", cache_dir=tmp_path)


# ------------------------------------------------------------------ ranking heads and reports


def test_rank_heads_by_text_finds_the_head_along_the_direction():
    g = torch.Generator().manual_seed(12)
    direction = unit_rows(torch.randn(1, 10, generator=g, dtype=torch.float64))[0]
    along = torch.randn(30, 1, generator=g, dtype=torch.float64) * direction + 2.0  # plus a constant offset
    noise = torch.randn(2, 30, 10, generator=g, dtype=torch.float64)
    heads = torch.stack([noise[0], along, noise[1]])
    ranked = rank_heads_by_text(heads, 5 * direction, ["L0.H0", "L0.H1", "L0.H2"])
    assert ranked[0][0] == "L0.H1" and ranked[0][1] == pytest.approx(1.0, abs=1e-12)
    for label, fraction in ranked[1:]:
        h = int(label[-1])
        centred = heads[h] - heads[h].mean(0)
        assert fraction == pytest.approx(float((centred @ direction).pow(2).sum() / centred.pow(2).sum()))
    assert [f for _, f in ranked] == sorted((f for _, f in ranked), reverse=True)


def test_reports_contain_the_picked_texts(tmp_path):
    C, T = structured_heads(2, 30, 12, 15, seed=13)
    pool = [f"pool text <{j}> | special" for j in range(15)]
    result = text_span(C.reshape(1, 2, 30, 12), T, k=3, rank=8, texts=pool)
    rows = {(22, h): result[0, h] for h in range(2)}
    paths = write_reports(rows, tmp_path, stem="heads")
    data = json.loads(paths["json"].read_text())
    assert [h["head"] for h in data["heads"]] == ["L22.H0", "L22.H1"]
    assert [p["text"] for p in data["heads"][1]["picks"]] == result.texts[0][1]
    markdown, page = paths["md"].read_text(), paths["html"].read_text()
    for text in result.texts[0][0] + result.texts[0][1]:
        assert text.replace("|", "\\|") in markdown
        assert text.replace("<", "&lt;").replace(">", "&gt;") in page
    assert "http" not in page and "<script" not in page
    no_texts = TextSpanResult(
        result.indices[0, 0],
        result.variance_explained[0, 0],
        result.reconstruction[0, 0],
        result.mean[0, 0],
        result.ranks[0, 0],
    )
    assert pool[int(result.indices[0, 0, 0])].replace("|", "\\|") in to_markdown({(1, 1): no_texts}, pool=pool)
    assert "L1.H1" in to_html({(1, 1): no_texts}, pool=pool)


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    texts = ["a", "b", "c"]
    encoder = CountingEncoder()
    embed_texts_cached(texts, encoder, "m", cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.safetensors")
    cache_file.write_bytes(b"not a safetensors file")
    rebuilt = embed_texts_cached(texts, encoder, "m", cache_dir=tmp_path)
    assert encoder.calls == 2 and rebuilt.shape == (3, 6)
    torch.testing.assert_close(embed_texts_cached(texts, encoder, "m", cache_dir=tmp_path), rebuilt)
    assert encoder.calls == 2


def test_prefix_reconstructions_equal_separate_runs():
    """Greedy picks are prefix-consistent: one run with k=6 gives the k=2 and k=4 reconstructions exactly."""
    g = torch.Generator().manual_seed(11)
    contributions = torch.randn(3, 40, 16, generator=g, dtype=torch.float64)
    texts = torch.nn.functional.normalize(torch.randn(50, 16, generator=g, dtype=torch.float64), dim=-1)
    full = text_span(contributions, texts, k=6, rank=10, prefix_ks=(2, 4, 6))
    for k in (2, 4, 6):
        single = text_span(contributions, texts, k=k, rank=10)
        assert torch.equal(single.indices, full.indices[..., :k])
        assert torch.allclose(full.prefix_reconstructions[k], single.reconstruction, atol=1e-12)
