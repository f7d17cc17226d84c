"""Batched OMP picks the same atoms as scikit-learn's OrthogonalMatchingPursuit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_refused

from vit_lens_clip.methods.neurons.omp import omp, prepare_pool

sklearn_omp = pytest.importorskip("sklearn.linear_model").OrthogonalMatchingPursuit


@pytest.mark.parametrize("normalization", ["text", "dimension"])
def test_batched_omp_matches_sklearn(normalization):
    g = torch.Generator().manual_seed(0)
    pool = prepare_pool(torch.randn(300, 48, generator=g), normalization)
    # targets: sparse mixtures of atoms plus noise (like neuron directions), and pure noise
    mix = torch.zeros(60, 300)
    for i in range(40):
        mix[i, torch.randperm(300, generator=g)[:6]] = torch.randn(6, generator=g)
    targets = mix @ pool + 0.05 * torch.randn(60, 48, generator=g)
    targets[40:] = torch.randn(20, 48, generator=g)
    k = 8
    code = omp(pool, targets, k, batch_size=16)
    assert code.atoms.shape == (60, k)
    X = pool.double().numpy().T  # sklearn: samples = embedding dims, features = atoms
    same = 0
    for n in range(60):
        ref = sklearn_omp(n_nonzero_coefs=k, fit_intercept=False).fit(X, targets[n].double().numpy())
        ref_atoms = set(np.flatnonzero(ref.coef_).tolist())
        assert set(code.atoms[n].tolist()) == ref_atoms, n
        np.testing.assert_allclose(code.coefs[n].double().numpy(), ref.coef_[code.atoms[n].numpy()], rtol=1e-4, atol=1e-6)
        same += 1
    assert same == 60
    # the reconstruction is the least-squares fit on those atoms
    assert (code.reconstruct(pool) - targets).norm(dim=-1).max() < targets.norm(dim=-1).max()


def test_pool_normalisations():
    emb = torch.randn(50, 16, generator=torch.Generator().manual_seed(1))
    rows = prepare_pool(emb, "text")
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(50))
    cols = prepare_pool(emb, "dimension")
    torch.testing.assert_close(cols.norm(dim=0), torch.full((16,), 100.0))
    torch.testing.assert_close(cols.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    assert_refused(lambda: prepare_pool(emb, "rows"), "normalization must be 'text' or 'dimension', got 'rows'")
    with pytest.raises(ValueError, match="k must be"):
        omp(rows, emb[:2], 0)


def test_more_picks_than_dimensions_fit_exactly_and_stay_distinct():
    """Past D picks the residual is zero and every further atom is dependent on the picked ones: the basis grows
    by nothing, atoms stay distinct, the coefficients are finite and the fit is exact."""
    g = torch.Generator().manual_seed(3)
    pool = prepare_pool(torch.randn(40, 6, generator=g))
    targets = torch.randn(5, 6, generator=g)
    code = omp(pool, targets, 9)
    assert all(len(set(row)) == 9 for row in code.atoms.tolist())
    assert bool(torch.isfinite(code.coefs).all())
    torch.testing.assert_close(code.reconstruct(pool), targets, rtol=0, atol=1e-4)
