"""TextSpan for ONE head with the numerics of the paper's released implementation: the benchmark's baseline.

The released code runs each head separately: a NumPy SVD of the head's contributions C [n, D] (in C's dtype),
the texts projected onto the span of the top-r right singular vectors V_r with the projector
V_rᵀ (V_r V_rᵀ)⁻¹ V_r in NumPy, then the greedy loop in torch float32 on the chosen device, where every pick
scores all M texts against all n images (std over images of C Tᵀ, an [n, M] product) and deflates the data and
every text. This module does the same steps with the same libraries and precisions, so that ``text_span``'s
speed is stated against what users of the released code run, not against ``reference.py`` (the float64
NumPy loop kept as the exact oracle for tests, which is slower per head).

It has none of the guards ``reference.py`` and ``text_span`` add (numerical rank, ties, nothing left to
remove); on data without ties or rank deficiency its picks are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PublishedLoopTextSpan:
    """Output of :func:`text_span_published_loop` for one head."""

    indices: np.ndarray  # [k] int64, the picked text indices in order
    reconstruction: np.ndarray  # [n, D] float32, mean(C) plus everything the picks removed


@torch.no_grad()
def text_span_published_loop(contributions: np.ndarray, text_embeddings: np.ndarray, k: int = 10, rank: int = 80,
                             device: str | torch.device = "cpu") -> PublishedLoopTextSpan:
    """TextSpan of one head: contributions [n, D], text_embeddings [M, D]; k picks through the top-``rank`` span.

    T ← T V_rᵀ (V_r V_rᵀ)⁻¹ V_r;  C ← C − mean(C);  k times: j = argmax_j std_images(C t_j),
    R += (C t / |t|²) tᵀ,  C −= (C t / |t|²) tᵀ,  T −= (T t / |t|²) tᵀ with t = T_j.
    """
    if contributions.ndim != 2 or text_embeddings.ndim != 2 or contributions.shape[1] != text_embeddings.shape[1]:
        raise ValueError(f"need C [n, D] and T [M, D]; got {contributions.shape} and {text_embeddings.shape}")
    _, _, vh = np.linalg.svd(contributions, full_matrices=False)
    v = vh[:rank]  # [r, D]
    projector = v.T @ np.linalg.inv(v @ v.T) @ v  # [D, D], onto the span of the top-r right singular vectors
    texts = torch.from_numpy(np.ascontiguousarray((projector @ text_embeddings.T).T)).float().to(device)
    data = torch.from_numpy(contributions).float().to(device)
    mean = data.mean(dim=0, keepdim=True)
    data = data - mean
    reconstruction = mean.expand(data.shape[0], -1).cpu().numpy().copy()
    indices = np.zeros(k, dtype=np.int64)
    for i in range(k):
        scores = (data @ texts.T).std(dim=0).cpu().numpy()  # [M], read back per pick as the released loop does
        j = int(np.argmax(scores))
        indices[i] = j
        t = texts[j]
        tt = t @ t
        removed = (data @ t / tt)[:, None] * t[None, :]  # [n, D]
        reconstruction += removed.cpu().numpy()
        data = data - removed
        texts = texts - (texts @ t / tt)[:, None] * t[None, :]
    return PublishedLoopTextSpan(indices, reconstruction)
