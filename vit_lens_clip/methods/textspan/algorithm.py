"""TextSpan, batched over heads and worked in each head's rank-r coordinates.

The algorithm is the one of ``reference.py`` (method.md §4). What makes this version fast:

* After step 1 every text lies in span(V_r), so t = V_r^T t_r with t_r = V_r t (r numbers), and for any data
  C: C t = (C V_r^T) t_r. Deflating by such a t never touches the part of C outside span(V_r). So the picks
  only need C_r = (C - mean) V_r^T [n, r] and T_r = T V_r^T [M, r].
* The score of text j is std over images of C t_j = sqrt(t_j^T S t_j), with S = C_r^T C_r / n the r x r
  covariance of the centred projected data (the data stay centred under deflation).
* Deflation by t is a projection P = I - t t^T / |t|^2: S <- P S P, C_r <- C_r P, T_r <- T_r P.

A pick therefore costs O(M r^2) (the scores) instead of O(n M D), and all heads run at once. Everything is
done in ``dtype`` on the inputs' device. Ties are broken by lowest index (``ties.py``); once the best score is
tied with zero a pick removes nothing, as in the reference.

Variance explained by pick i: |C^(i-1) t_i|^2 / |t_i|^2 / |C - mean(C)|_F^2, i.e. the fraction of the head's
total centred variance (over all D dimensions, not only span(V_r)) that the pick removes. The fractions of one
head add up to 1 - |C^(k)|_F^2 / |C - mean(C)|_F^2.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.methods.textspan.ties import default_tie_rtol


@dataclass
class TextSpanResult:
    """TextSpan output for a batch of heads with shape ``heads`` (may be empty for a single head).

    indices: [*heads, k] picked text indices, in pick order.
    variance_explained: [*heads, k] fraction of each head's centred variance that each pick removes.
    reconstruction: [*heads, n_images, d_out] mean plus the parts the k picks removed.
    mean: [*heads, d_out] mean contribution over images.
    ranks: [*heads] number of singular vectors kept (min(n, D, rank, numerical rank)).
    texts: nested lists with the shape of ``indices`` holding the picked strings, if texts were given.
    prefix_reconstructions: {k': [*heads, n_images, d_out]} reconstructions after the first k' picks.
    """

    indices: Int[Tensor, "*heads k"]
    variance_explained: Float[Tensor, "*heads k"]
    reconstruction: Float[Tensor, "*heads n_images d_out"]
    mean: Float[Tensor, "*heads d_out"]
    ranks: Int[Tensor, "*heads"]
    texts: list[Any] | None = field(default=None)
    prefix_reconstructions: dict[int, Tensor] = field(default_factory=dict)

    @property
    def heads_shape(self) -> torch.Size:
        return self.indices.shape[:-1]

    def __getitem__(self, index: int | tuple[int, ...]) -> TextSpanResult:
        """Select heads by integer index over the leading head dimensions, e.g. ``result[layer, head]``."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > len(self.heads_shape) or not all(isinstance(i, int) for i in index):
            raise ValueError(f"index {index} must be at most {len(self.heads_shape)} integers")
        texts = self.texts
        if texts is not None:
            for i in index:
                texts = texts[i]
        return TextSpanResult(
            indices=self.indices[index],
            variance_explained=self.variance_explained[index],
            reconstruction=self.reconstruction[index],
            mean=self.mean[index],
            ranks=self.ranks[index],
            texts=texts,
            prefix_reconstructions={k: v[index] for k, v in self.prefix_reconstructions.items()},
        )

    def rows(self) -> dict[tuple[int, ...], TextSpanResult]:
        """One single-head result per head, keyed by its index tuple (e.g. (layer, head) for [L, H] input)."""
        return {index: self[index] for index in itertools.product(*map(range, self.heads_shape))}


def _top_right_singular(C: Tensor, r: int, eps: float) -> tuple[Tensor, Tensor]:
    """Singular values and right singular vectors (rows) of each head's C [H, n, D], at least the top r.

    When n ≥ D and every head's r-th singular value is far above the rounding level of the Gram matrix
    (σ_r² > 1e3·eps·σ_1²·D), the top r come from eigh(CᵀC), which is several times cheaper than an SVD and
    spans the same subspace; otherwise (possible rank deficiency within the top r) a full SVD is used, so
    the numerical rank is still judged from true singular values.
    """
    H, n, D = C.shape
    if n >= D:
        evals, evecs = torch.linalg.eigh(torch.bmm(C.transpose(1, 2), C))  # ascending
        evals, evecs = evals.flip(-1), evecs.flip(-1)
        top = evals[:, :1].clamp_min(torch.finfo(C.dtype).tiny)
        if bool((evals[:, r - 1] > top[:, 0] * 1e3 * eps * D).all()):
            return evals[:, :r].clamp_min(0).sqrt(), evecs[:, :, :r].transpose(1, 2)
    _, singular_values, Vh = torch.linalg.svd(C, full_matrices=False)
    return singular_values, Vh


def text_span(
    contributions: Float[Tensor, "*heads n_images d_out"],
    text_embeddings: Float[Tensor, "n_texts d_out"],
    k: int = 10,
    rank: int = 80,
    dtype: torch.dtype = torch.float64,
    texts: Sequence[str] | None = None,
    tie_rtol: float | None = None,
    prefix_ks: Sequence[int] = (),
) -> TextSpanResult:
    """Pick k texts per head that greedily explain the most variance of that head's contributions.

    ``contributions`` holds each head's direct contribution to the image embeddings (after the LayerNorm fold
    and the projection); ``text_embeddings`` are unit text embeddings of a pool (used as given, not
    renormalised). All heads are processed at once; see the module docstring for the math.

    * rank: the number of top right singular vectors of each head's raw data kept, capped at
      min(n_images, d_out, rank) and at the head's numerical rank (``ranks`` in the result).
    * variance_explained[..., i] = |C^(i-1) t_i|^2 / |t_i|^2 / |C - mean(C)|_F^2: the fraction of the head's
      total centred variance (all d_out dimensions) removed by pick i, C^(i-1) being the centred data after
      the earlier deflations. Summed over picks it equals 1 - |C - reconstruction|_F^2 / |C - mean(C)|_F^2.
    * ties (scores within tie_rtol * head spread, see ``ties.py``) go to the lowest text index.
    * computed and returned in ``dtype`` (float64 or float32) on the device of ``contributions``.
    * prefix_ks: also return the reconstruction after the first k' picks for each k' listed (greedy picks are
      prefix-consistent, so one run with the largest k serves every smaller k), in ``prefix_reconstructions``.
    """
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be torch.float64 or torch.float32, not {dtype}")
    if contributions.ndim < 2 or text_embeddings.ndim != 2:
        raise ValueError(
            f"need contributions [*heads, n, D] and text_embeddings [M, D]; got "
            f"{tuple(contributions.shape)} and {tuple(text_embeddings.shape)}"
        )
    heads_shape = contributions.shape[:-2]
    n, D = contributions.shape[-2:]
    M = text_embeddings.shape[0]
    if text_embeddings.shape[1] != D:
        raise ValueError(f"text dimension {text_embeddings.shape[1]} does not match contributions' {D}")
    if not 1 <= k <= M:
        raise ValueError(f"k must be between 1 and the number of texts ({M}); got {k}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1; got {rank}")
    if n < 1:
        raise ValueError("need at least one image")
    if texts is not None and len(texts) != M:
        raise ValueError(f"got {len(texts)} texts for {M} text embeddings")
    if tie_rtol is None:
        tie_rtol = default_tie_rtol(str(dtype))

    device = contributions.device
    C = rearrange(contributions.to(dtype), "... n d -> (...) n d")  # [H, n, D]
    T = text_embeddings.to(device=device, dtype=dtype)  # [M, D]
    H = C.shape[0]

    # Step 1: top-r right singular vectors of the raw data, masked beyond each head's numerical rank.
    r = min(n, D, rank)
    eps = torch.finfo(dtype).eps
    singular_values, Vh = _top_right_singular(C, r, eps)
    above_cut = singular_values > singular_values[:, :1] * max(n, D) * eps
    ranks = above_cut.sum(-1).clamp(max=r)  # [H]
    keep = torch.arange(r, device=device) < ranks[:, None]  # [H, r]
    V = Vh[:, :r] * keep[..., None]  # [H, r, D], rows beyond the rank are zero
    T_r = torch.einsum("md,hrd->hmr", T, V)  # [H, M, r], coordinates of T V_r^T V_r in the V_r basis

    # Step 2: centre, move the data into the same coordinates.
    mean = C.mean(dim=1)  # [H, D]
    C_centred = C - mean[:, None, :]
    total_variance = torch.linalg.vector_norm(C_centred, dim=(1, 2)) ** 2  # [H]
    tie_tolerance = tie_rtol * (total_variance / n).sqrt()[:, None]  # [H, 1]
    C_r = torch.bmm(C_centred, V.transpose(1, 2))  # [H, n, r]
    del C, C_centred
    C_r_start = C_r.clone()
    covariance = torch.bmm(C_r.transpose(1, 2), C_r) / n  # [H, r, r]

    # Step 3: k greedy picks, all heads at once; deflations are in-place rank-one updates.
    head_ids = torch.arange(H, device=device)
    text_ids = torch.arange(M, device=device)
    indices = torch.zeros(H, k, dtype=torch.long, device=device)
    variance_explained = torch.zeros(H, k, dtype=dtype, device=device)
    safe_total = torch.where(total_variance > 0, total_variance, torch.ones_like(total_variance))
    if any(not 1 <= kk <= k for kk in prefix_ks):
        raise ValueError(f"prefix_ks must lie in 1..k={k}; got {list(prefix_ks)}")
    prefix_reconstructions: dict[int, Tensor] = {}
    for i in range(k):
        variances = torch.bmm(T_r, covariance).mul_(T_r).sum(-1)  # [H, M], t^T S t
        scores = variances.clamp_min_(0).sqrt_()  # std over images of C t
        best = scores.max(dim=-1, keepdim=True).values
        tied = scores >= best - tie_tolerance
        j = torch.where(tied, text_ids, M).min(dim=-1).values  # [H], lowest index among the best
        t = T_r[head_ids, j]  # [H, r] (a copy)
        tt = (t * t).sum(-1)  # [H]
        active = (best.squeeze(-1) > tie_tolerance.squeeze(-1)) & (tt > 0)  # else nothing is left to remove
        inv_tt = torch.where(active, 1 / torch.where(active, tt, torch.ones_like(tt)), torch.zeros_like(tt))
        t_row = t[:, None, :]  # [H, 1, r]
        coefficients = torch.bmm(C_r, t[..., None]).mul_(inv_tt[:, None, None])  # [H, n, 1] = C t / |t|^2
        C_r.baddbmm_(coefficients, t_row, alpha=-1)  # C <- C - (C t / |t|^2) t^T
        text_coefficients = torch.bmm(T_r, t[..., None]).mul_(inv_tt[:, None, None])  # [H, M, 1]
        T_r.baddbmm_(text_coefficients, t_row, alpha=-1)  # T <- T - (T t / |t|^2) t^T
        # S <- P S P = S - t u^T - u t^T  with  u = S t / |t|^2 - (t^T S t) / (2 |t|^4) t
        s = torch.bmm(covariance, t[..., None]).squeeze(-1)  # [H, r]
        u = s * inv_tt[:, None] - ((t * s).sum(-1) * inv_tt**2 / 2)[:, None] * t
        covariance.baddbmm_(t[..., None], u[:, None, :], alpha=-1).baddbmm_(u[..., None], t_row, alpha=-1)
        indices[:, i] = j
        removed_variance = coefficients.squeeze(-1).pow(2).sum(-1) * tt * active  # |C t|^2 / |t|^2
        variance_explained[:, i] = torch.where(total_variance > 0, removed_variance / safe_total, 0.0)
        if i + 1 in prefix_ks:
            snapshot = torch.baddbmm(mean[:, None, :], C_r_start - C_r, V)
            prefix_reconstructions[i + 1] = snapshot.reshape(*heads_shape, n, D)

    # Step 4: reconstruction = mean + what the picks removed (only span(V_r) changed).
    reconstruction = torch.baddbmm(mean[:, None, :], C_r_start - C_r, V)  # [H, n, D]

    picked_texts = None
    if texts is not None:
        picked_texts = _nest([[texts[j] for j in row] for row in indices.tolist()], heads_shape)
    return TextSpanResult(
        indices=indices.reshape(*heads_shape, k),
        variance_explained=variance_explained.reshape(*heads_shape, k),
        reconstruction=reconstruction.reshape(*heads_shape, n, D),
        mean=mean.reshape(*heads_shape, D),
        ranks=ranks.reshape(heads_shape),
        texts=picked_texts,
        prefix_reconstructions=prefix_reconstructions,
    )


def _nest(flat: list[Any], shape: Sequence[int]) -> Any:
    """Turn a flat row-major list of per-head items into nested lists with the given head shape."""
    if len(shape) == 0:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0]
    return [_nest(flat[a * step : (a + 1) * step], shape[1:]) for a in range(shape[0])]
