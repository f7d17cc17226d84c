"""TextSpan for ONE head in plain NumPy, written line by line from the published algorithm.

This is the slow, obvious version that tests and the benchmark compare the batched code against. Steps
(docs/textspan.md):

1. SVD of the raw (uncentred) contributions C [n, D]; keep the top-r right singular vectors V_r, with
   r = min(n, D, rank, numerical rank of C). Project the texts: T <- T V_r^T V_r (no renormalising).
2. Centre C <- C - mean(C); the reconstruction R starts at mean(C).
3. k times: score each text j by std over images of C T_j^T; pick the best j* (ties: lowest index, see
   ``ties.py``); with t = T_j*, remove the projection from the data, add it to R, and deflate every text:
   R += (C t / |t|^2) t^T,  C -= (C t / |t|^2) t^T,  T <- T - (T t / |t|^2) t^T.

Variance explained by pick i is the squared Frobenius norm of the part it removes divided by the head's total
centred variance:  ve_i = |C^(i-1) t_i|^2 / |t_i|^2 / |C - mean(C)|_F^2,  where C^(i-1) is the centred data
after the first i-1 deflations. Each pick removes a part orthogonal (in the Frobenius sense) to what remains, so
sum_i ve_i = 1 - |C^(k)|_F^2 / |C - mean(C)|_F^2.

Two guards the published code lacks, applied identically in the batched version:
* once the best score is tied with zero (see ``ties.py``) the texts see nothing left of the head; such a pick
  still records the lowest index but removes nothing (dividing by a text's rounding-noise norm would otherwise
  remove a random direction);
* singular values at or below sigma_max * max(n, D) * eps, or at or below 8 * eps_data * |C|_F (the rounding
  of data stored in a lower precision, e.g. float32; ``rank.py``), carry no data and the directions behind
  them are arbitrary, so they are never kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vit_lens_clip.methods.textspan.rank import numerical_rank, storage_eps
from vit_lens_clip.methods.textspan.ties import default_tie_rtol


@dataclass
class ReferenceTextSpan:
    """Output of :func:`text_span_reference` for one head."""

    indices: np.ndarray  # [k] int64, the picked text indices in order
    variance_explained: np.ndarray  # [k], fraction of the head's centred variance removed by each pick
    reconstruction: np.ndarray  # [n, D], mean(C) plus everything the picks removed
    mean: np.ndarray  # [D]
    rank: int  # number of singular vectors kept


def text_span_reference(
    contributions: np.ndarray,
    text_embeddings: np.ndarray,
    k: int = 10,
    rank: int = 80,
    dtype: type = np.float64,
    tie_rtol: float | None = None,
    data_eps: float | None = None,
) -> ReferenceTextSpan:
    """Run TextSpan on one head: contributions [n_images, D], text_embeddings [n_texts, D] (unit rows)."""
    if data_eps is None:
        data_eps = storage_eps(np.asarray(contributions))  # the precision the data were stored in (rank.py)
    C = np.array(contributions, dtype=dtype)  # a copy, so the caller's array is never changed
    T = np.array(text_embeddings, dtype=dtype)
    if C.ndim != 2 or T.ndim != 2 or C.shape[1] != T.shape[1]:
        raise ValueError(f"need C [n, D] and T [M, D]; got {C.shape} and {T.shape}")
    if not 1 <= k <= T.shape[0]:
        raise ValueError(f"k must be between 1 and the number of texts ({T.shape[0]}); got {k}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1; got {rank}")
    if tie_rtol is None:
        tie_rtol = default_tie_rtol(np.dtype(dtype).name)
    n, D = C.shape

    # Step 1: SVD of the raw C, keep the top-r right singular vectors, project the texts onto their span.
    _, singular_values, Vt = np.linalg.svd(C, full_matrices=False)
    r = min(n, D, rank, numerical_rank(singular_values, n, D, np.finfo(dtype).eps, data_eps))
    V = Vt[:r]  # [r, D]
    T = (T @ V.T) @ V

    # Step 2: centre the data; the reconstruction starts at the mean.
    mean = C.mean(axis=0)
    C = C - mean
    R = np.tile(mean, (n, 1))
    total_variance = np.sum(C**2)
    tie_tolerance = tie_rtol * np.sqrt(total_variance / n)

    # Step 3: k greedy picks.
    indices = np.zeros(k, dtype=np.int64)
    variance_explained = np.zeros(k, dtype=dtype)
    for i in range(k):
        scores = np.std(C @ T.T, axis=0)  # [M]
        best = scores.max()
        j = int(np.flatnonzero(scores >= best - tie_tolerance)[0])
        t = T[j].copy()
        tt = t @ t
        indices[i] = j
        if best <= tie_tolerance or tt <= 0:  # every score is tied with zero: nothing left to remove
            continue
        removed = np.outer(C @ t / tt, t)  # [n, D]
        R = R + removed
        C = C - removed
        T = T - np.outer(T @ t / tt, t)
        if total_variance > 0:
            variance_explained[i] = np.sum(removed**2) / total_variance

    return ReferenceTextSpan(indices, variance_explained, R, mean, r)
