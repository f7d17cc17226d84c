"""Top-r eigenpairs of each head's Gram matrix CᵀC: TextSpan's one-off cost per head.

Two routes compute the same numbers (to rounding):

* CPU (float32 / float64): per head, LAPACK through SciPy: ``?syrk`` forms the lower triangle of CᵀC (half a
  product's flops, in place of the blocked product below) and ``?syevr`` finds only the r largest eigenpairs
  (MRRR, so no eigenvectors beyond r are formed). Measured on the 2-core AMD EPYC bench machine, one thread,
  48 heads of 2000 x 512 float64, r = 80: 1.09 s against 1.92 s for the torch route (docs/performance.md).
* Other devices: ``gram_lower`` (a lower-triangle product by column blocks) and ``torch.linalg.eigh``.

A head whose LAPACK call reports a failure is marked unsolved; the caller decides it by SVD.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Float
from scipy.linalg import blas, lapack
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
        Float[Tensor, "h r"], Float[Tensor, "h r d"], Float[Tensor, "h"], Bool[Tensor, "h"]]:
    """The r largest eigenvalues λ of each head's CᵀC (descending), their unit eigenvectors as rows, |C|_F² = tr(CᵀC),
    and whether the eigensolver succeeded (rows of an unsolved head are zero). Needs 1 ≤ r ≤ D."""
    H, n, D = C.shape
    if not 1 <= r <= D:
        raise ValueError(f"r must lie in 1..{D}; got {r}")
    if C.device.type == "cpu" and C.dtype in (torch.float32, torch.float64):
        return _lapack_route(C, r)
    return _torch_route(C, r)


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
    double = C.dtype == torch.float64
    syrk, syevr = (blas.dsyrk, lapack.dsyevr) if double else (blas.ssyrk, lapack.ssyevr)
    data = C.detach().contiguous().numpy()
    evals = torch.zeros(H, r, dtype=C.dtype)
    vectors = torch.zeros(H, r, D, dtype=C.dtype)
    squared_norm = torch.zeros(H, dtype=C.dtype)
    solved = torch.zeros(H, dtype=torch.bool)
    for h in range(H):
        gram = syrk(1.0, data[h].T, trans=0, lower=1)  # [D, D] Fortran order, lower triangle = CᵀC
        squared_norm[h] = float(np.trace(gram))
        w, v, found, _, info = syevr(gram, compute_v=1, range="I", lower=1, il=D - r + 1, iu=D, overwrite_a=1)
        if info != 0 or found != r:
            continue
        evals[h] = torch.from_numpy(np.ascontiguousarray(w[:r][::-1]))
        vectors[h] = torch.from_numpy(np.ascontiguousarray(v[:, :r].T[::-1]))
        solved[h] = True
    return evals, vectors, squared_norm, solved
