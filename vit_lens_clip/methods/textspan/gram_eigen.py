"""Top-r eigenpairs of each head's Gram matrix CᵀC: TextSpan's one-off cost per head.

Two routes compute the same numbers (to rounding):

* CPU on one torch thread (float32 / float64, D ≥ 256): per head, LAPACK through SciPy on one BLAS thread:
  ``?syrk`` forms the lower triangle of CᵀC (half a product's flops), then only the r largest eigenpairs are
  formed (``_top_by_tridiagonal``; ``?syevr``'s subset driver where that declines). 2000 x 512 float64, r = 80,
  on the 2-core AMD EPYC bench machine: 24.5 ms per head against 46 ms for the torch route.
* Otherwise: ``gram_lower`` (a lower-triangle product by column blocks) and ``torch.linalg.eigh``. On more
  threads its products scale and the LAPACK route's sequential steps do not (paper-sized TextSpan on two
  threads: 1.62 s either way); for small D it is as fast (128: 1.4 ms per head) and does not import SciPy.

A head whose LAPACK calls all fail is marked unsolved; the caller decides it by SVD.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from jaxtyping import Bool, Float
from threadpoolctl import ThreadpoolController
from torch import Tensor

_GRAM_BLOCK = 96  # column block of the lower-triangle Gram product (measured fastest on CPU for D = 512)


def gram_lower(C: Float[Tensor, "h n d"]) -> Float[Tensor, "h d d"]:
    """Each head's CᵀC where it is read: the lower triangle, by row blocks, rows a:b = C[:, a:b]ᵀ C[:, :b] (3/4
    of a full product's flops for two blocks). Entries above the diagonal are CᵀC's or zero; nothing reads them
    (``torch.linalg.eigh`` reads the lower triangle, UPLO='L', and the diagonal is exact)."""
    H, n, D = C.shape
    gram = torch.empty(H, D, D, dtype=C.dtype, device=C.device)
    for a in range(0, D, _GRAM_BLOCK):
        b = min(a + _GRAM_BLOCK, D)
        rows = gram[:, a:b]  # whole rows: contiguous, so the last block is written in place
        if b == D:
            torch.bmm(C[:, :, a:b].transpose(1, 2), C, out=rows)
        else:
            rows[:, :, :b] = torch.bmm(C[:, :, a:b].transpose(1, 2), C[:, :, :b])
            rows[:, :, b:] = 0
    return gram


def top_gram_eigen(C: Float[Tensor, "h n d"], r: int) -> tuple[
        Float[Tensor, "h r"], Float[Tensor, "h r d"], Float[Tensor, " h"], Bool[Tensor, " h"]]:
    """The r largest eigenvalues λ of each head's CᵀC (descending), their unit eigenvectors as rows, |C|_F² = tr(CᵀC),
    and whether the eigensolver succeeded (rows of an unsolved head are zero). Needs 1 ≤ r ≤ D."""
    H, n, D = C.shape
    if not 1 <= r <= D:
        raise ValueError(f"r must lie in 1..{D}; got {r}")
    if (C.device.type == "cpu" and C.dtype in (torch.float32, torch.float64) and D >= _LAPACK_MIN_DIM
            and torch.get_num_threads() == 1):
        with _blas_threads().limit(limits=1, user_api="blas"):
            return _lapack_route(C, r)
    return _torch_route(C, r)


_LAPACK_MIN_DIM = 256  # below it the torch route is as fast (measured at D = 128), without importing SciPy
# (the LAPACK route's BLAS-2 steps only slow down on more BLAS threads, and OpenBLAS threads spinning beside
# torch's slowed a two-thread TextSpan from 1.6 to 2.5 s: the route runs on one thread, chosen on one thread)


def _torch_route(C: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    H, n, D = C.shape
    gram = gram_lower(C)
    squared_norm = gram.diagonal(dim1=1, dim2=2).sum(-1)
    evals, evecs = torch.linalg.eigh(gram, UPLO="L")  # ascending; reads the lower triangle only
    del gram
    vectors = evecs[:, :, D - r:].flip(-1).transpose(1, 2).contiguous()
    solved = torch.ones(H, dtype=torch.bool, device=C.device)
    return evals.flip(-1)[:, :r].contiguous(), vectors, squared_norm, solved


def _lapack_route(C: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    H, n, D = C.shape
    lapack_of = _lapack(C.dtype)
    data = C.detach().contiguous().numpy()
    evals = torch.zeros(H, r, dtype=C.dtype)
    vectors = torch.zeros(H, r, D, dtype=C.dtype)
    squared_norm = torch.zeros(H, dtype=C.dtype)
    solved = torch.zeros(H, dtype=torch.bool)
    for h in range(H):
        gram = lapack_of["syrk"](1.0, data[h].T, trans=0, lower=1)  # [D, D] Fortran order, lower triangle = CᵀC
        squared_norm[h] = float(np.trace(gram))
        found = _top_by_tridiagonal(gram, r, lapack_of)
        if found is None:  # a near-split tridiagonal or a LAPACK failure: the standard subset driver
            gram = lapack_of["syrk"](1.0, data[h].T, trans=0, lower=1)  # formed again: the route overwrote it
            w, v, count, _, info = lapack_of["syevr"](gram, compute_v=1, range="I", lower=1, il=D - r + 1, iu=D,
                                                      overwrite_a=1)
            found = (w[:r], v[:, :r]) if info == 0 and count == r else None
        if found is None:
            continue
        w, v = found  # ascending
        evals[h] = torch.from_numpy(np.ascontiguousarray(w[::-1]))
        vectors[h] = torch.from_numpy(np.ascontiguousarray(v.T[::-1]))
        solved[h] = True
    return evals, vectors, squared_norm, solved


def _top_by_tridiagonal(gram: np.ndarray, r: int, lapack_of: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The r largest eigenpairs of a symmetric matrix (lower triangle read; the matrix is overwritten), ascending:
    Householder tridiagonalisation A = Q T Qᵀ (``?sytrd``), all eigenvalues of T by the root-free QR (``?sterf``,
    O(D²)), the eigenvectors z of T for the top r alone by inverse iteration (``?stein``), and Q z by applying
    the reflectors (``?ormqr``, whose storage the lower ``?sytrd`` shares once the first row and column are
    dropped). None when T nearly splits (``?stein`` then needs the blocks, which ``?syevr`` finds), when a
    routine fails, or when the vectors are not eigenvectors of T to 100 D eps |T| or not orthonormal to 100 eps."""
    D = gram.shape[0]
    eps = np.finfo(gram.dtype).eps
    reflectors, d, e, tau, info = lapack_of["sytrd"](gram, lower=1, lwork=D * 16, overwrite_a=1)
    if info != 0 or np.any(e * e <= eps * eps * np.abs(d[:-1] * d[1:])):
        return None
    w, info = lapack_of["sterf"](d, e)  # ascending; d and e are not overwritten (copied by the wrapper)
    if info != 0:
        return None
    top = np.ascontiguousarray(w[D - r:])
    blocks, splits = np.ones(D, dtype=np.int32), np.zeros(D, dtype=np.int32)
    splits[0] = D  # one block: T does not split
    z, info = lapack_of["stein"](d, e, top, blocks, splits)
    if info != 0:
        return None
    # each vector must be an eigenvector of T for its eigenvalue: |T z − w z| within rounding of |T|
    tz = d[:, None] * z[:, :r]
    tz[:-1] += e[:, None] * z[1:, :r]
    tz[1:] += e[:, None] * z[:-1, :r]
    scale = max(float(np.abs(d).max()) + 2 * float(np.abs(e).max()), np.finfo(gram.dtype).tiny)
    if np.abs(tz - z[:, :r] * top).max() > 100 * D * eps * scale:
        return None
    z = np.asfortranarray(z[:, :r])
    rotated, _, info = lapack_of["ormqr"]("L", "N", reflectors[1:, :-1], tau, z[1:], lwork=max(r, 1) * 64,
                                          overwrite_c=1)
    if info != 0:
        return None
    z[1:] = rotated
    if np.abs(z.T @ z - np.eye(r, dtype=z.dtype)).max() > 100 * eps:
        return None
    return top, z


@lru_cache(maxsize=2)
def _lapack(dtype: torch.dtype) -> dict:
    """SciPy's BLAS / LAPACK routines for float64 or float32 (SciPy imported on first use)."""
    from scipy.linalg import blas, lapack

    if dtype == torch.float64:
        return {"syrk": blas.dsyrk, "syevr": lapack.dsyevr, "sytrd": lapack.dsytrd, "sterf": lapack.dsterf,
                "stein": lapack.dstein, "ormqr": lapack.dormqr}
    return {"syrk": blas.ssyrk, "syevr": lapack.ssyevr, "sytrd": lapack.ssytrd, "sterf": lapack.ssterf,
            "stein": lapack.sstein, "ormqr": lapack.sormqr}


@lru_cache(maxsize=1)
def _blas_threads() -> ThreadpoolController:
    """One threadpoolctl controller over the BLAS libraries loaded once SciPy is (its limits are cheap to set)."""
    _lapack(torch.float64)
    return ThreadpoolController()
