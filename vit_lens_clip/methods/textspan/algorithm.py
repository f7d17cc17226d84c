"""TextSpan, batched over heads and worked in each head's rank-r coordinates.

The algorithm is the one of ``reference.py`` (docs/textspan.md). What makes this version fast:

* After step 1 every text lies in span(V_r), so t = V_r^T t_r with t_r = V_r t (r numbers), and for any data
  C: C t = (C V_r^T) t_r. Deflating by such a t never touches the part of C outside span(V_r). So the picks
  only need C_r = (C - mean) V_r^T [n, r] and T_r = T V_r^T [M, r].
* The score of text j is std over images of C t_j = sqrt(t_j^T S t_j), with S = C_r^T C_r / n the r x r
  covariance of the centred projected data (the data stay centred under deflation).
* Deflation by t is a projection P = I - t t^T / |t|^2: S <- P S P = S - t u^T - u t^T with
  u = S t / |t|^2 - (t^T S t) / (2 |t|^4) t, C_r <- C_r P, T_r <- T_r P. Since P is idempotent, the new variance
  of every text is v_j <- v_j - 2 (t_j . t)(t_j . u): two matrix-vector products per pick instead of the
  O(M r^2) recomputation, and T_r t is needed for the text deflation anyway.
* The incrementally updated v_j carry rounding that grows with the number of picks, so each pick is decided
  on exact values: every text whose running variance is within a rounding guard of the tie band around the
  best is rescored exactly as t_j^T S t_j (all texts, for a head where more than ``_RESCORED`` are close).

A pick costs O(M r) and all heads of a chunk run at once; the one-off costs are the Gram matrix and its
eigendecomposition (or SVD) per head and the projections. Heads are processed in chunks sized from
``max_memory``. Ties are broken by lowest index (``ties.py``); once the best score is tied with zero a pick
removes nothing, as in the reference.

float32: with ``redecide=True`` (the default for float32) a head is recomputed in float64 whenever one of its
float32 picks was not clear: its best and second-best texts (outside the tie band) lay within
``redecide_rtol`` (relative to the head's spread) of each other. The other heads keep their float32 results.
Picks then equal float64 picks unless float32 rounding moves a score by more than ``redecide_rtol`` times the
spread (docs/textspan.md).

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
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.textspan.gram_eigen import top_gram_eigen
from vit_lens_clip.methods.textspan.rank import rank_cut, storage_eps
from vit_lens_clip.methods.textspan.ties import default_tie_rtol
from vit_lens_clip.validation import check_embeddings


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
    redecided: [*heads] True where a float32 run was redone in float64 because a pick was not clear.
    """

    indices: Int[Tensor, "*heads k"]
    variance_explained: Float[Tensor, "*heads k"]
    reconstruction: Float[Tensor, "*heads n_images d_out"]
    mean: Float[Tensor, "*heads d_out"]
    ranks: Int[Tensor, "*heads"]
    texts: list[Any] | None = field(default=None)
    prefix_reconstructions: dict[int, Tensor] = field(default_factory=dict)
    redecided: Bool[Tensor, "*heads"] | None = field(default=None)

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
            redecided=None if self.redecided is None else self.redecided[index],
        )

    def rows(self) -> dict[tuple[int, ...], TextSpanResult]:
        """One single-head result per head, keyed by its index tuple (e.g. (layer, head) for [L, H] input)."""
        return {index: self[index] for index in itertools.product(*map(range, self.heads_shape))}


_RESCORED = 32  # texts per head rescored exactly at each pick before falling back to rescoring all
# bytes of working memory per chunk of heads (inputs and outputs excluded). Small chunks keep each chunk's texts'
# coordinates in cache through the picks: 48 MiB (5 paper-sized heads) ran 1.84 s against 1.98 s for 256 MiB (30
# heads) on the bench machine (48 heads x 2000 x 512, float64, one thread), at a fifth of the peak memory.
DEFAULT_MAX_MEMORY = 48 * 2**20


def _top_subspace(C: Tensor, r: int, eps_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each head's numerical rank (at most r, ``rank.py``), its top right singular vectors V [h, r, D] (rows beyond
    the rank zero), the eigenvalues σ² of CᵀC along them [h, r] (zero beyond the rank) and |C|_F² [h].

    When n ≥ D the vectors come from the top-r eigenpairs of CᵀC (``gram_eigen.py``), several times cheaper than
    an SVD, for every head whose rank the Gram matrix decides for certain (and whose eigensolver succeeded). Its
    eigenvalues are within g = (n + D) eps |C|_F² of the σ_i² (the rounding of forming CᵀC plus that of the
    eigensolver), so σ_i is surely above the cut when λ_i > cut² + g. The
    directions after the first a such are surely below it when λ_(a+1) + g ≤ cut², or when the residual
    |C - C V_aᵀ V_a|_F, an upper bound on σ_(a+1) (Eckart-Young), is below the cut. The kept eigenvectors are
    off by about eps λ_1 / λ_a, so the route also needs λ_a ≥ eps λ_1 / 1e-5. Heads that miss any of this get a
    full SVD, so the rank is always that of the true singular values.
    """
    H, n, D = C.shape
    eps = torch.finfo(C.dtype).eps
    device, dtype = C.device, C.dtype
    positions = torch.arange(r, device=device)
    if n < D:  # every head by SVD
        decided = torch.zeros(H, dtype=torch.bool, device=device)
        ranks = torch.zeros(H, dtype=torch.long, device=device)
        V = torch.zeros(H, r, D, dtype=dtype, device=device)
        eigenvalues = torch.zeros(H, r, dtype=dtype, device=device)
        squared_norm = torch.zeros(H, dtype=dtype, device=device)
    else:
        evals, vectors, squared_norm, solved = top_gram_eigen(C, r)  # [H, r] descending, [H, r, D], [H], [H]
        frobenius = squared_norm.clamp_min(0).sqrt()
        cut = rank_cut(evals[:, 0].clamp_min(0).sqrt(), frobenius, n, D, eps, eps_data)  # [H]
        error = (n + D) * eps * squared_norm  # [H], bound on |λ_i - σ_i²|
        above = (evals > (cut**2 + error)[:, None]).sum(-1)  # [H], surely above the cut (a prefix)
        next_eval = evals.gather(1, above.clamp(max=r - 1)[:, None])[:, 0]
        # a Gram eigenvector is off by about eps λ_1 / λ_i (the SVD's by eps σ_1 / σ_i): keep it below 1e-5
        smallest_kept = evals.gather(1, (above - 1).clamp(min=0)[:, None])[:, 0]
        accurate = (above == 0) | (smallest_kept * _GRAM_ANGLE >= eps * evals[:, 0])
        accurate &= solved
        decided = accurate & ((above == r) | (next_eval + error <= cut**2))
        for i in (accurate & ~decided & (above > 0)).nonzero().flatten().tolist():
            a = int(above[i])
            Va = vectors[i, :a]
            residual = torch.linalg.vector_norm(C[i] - (C[i] @ Va.T) @ Va)
            decided[i] = residual + (2 * a + 1) * eps * D**0.5 * frobenius[i] <= cut[i]
        ranks = torch.where(decided, above, 0)  # the SVD below fills the undecided heads
        keep = positions < ranks[:, None]  # [H, r]
        V, eigenvalues = vectors * keep[..., None], evals.clamp_min(0) * keep
    rest = (~decided).nonzero().flatten()
    if len(rest):  # r ≤ min(n, D): the SVD has at least r singular values
        _, singular_values, Vh = torch.linalg.svd(C[rest], full_matrices=False)
        norm2 = singular_values.pow(2).sum(-1)
        cut = rank_cut(singular_values[:, 0], norm2.sqrt(), n, D, eps, eps_data)
        rest_ranks = (singular_values > cut[:, None]).sum(-1).clamp(max=r)
        keep = positions < rest_ranks[:, None]
        ranks[rest] = rest_ranks
        squared_norm[rest] = norm2
        V[rest] = Vh[:, :r] * keep[..., None]
        eigenvalues[rest] = singular_values[:, :r].pow(2) * keep
    return ranks, V, eigenvalues, squared_norm


_GRAM_ANGLE = 1e-5  # largest rounding angle accepted for the Gram route's eigenvectors (eps λ_1 / λ_a)


def working_bytes_per_head(n: int, D: int, M: int, rank: int, itemsize: int, converts: bool) -> int:
    """Estimated working memory of one head in a chunk: Gram + eigenvectors, T_r, scores, a cast copy."""
    r = min(n, D, rank)
    elements = 3 * D * D + M * r + 8 * M + (n * D if converts else 0)
    return elements * itemsize


@dataclass
class _ChunkResult:
    indices: Tensor  # [h, k]
    variance_explained: Tensor  # [h, k]
    mean: Tensor  # [h, D]
    ranks: Tensor  # [h]
    margin: Tensor  # [h], smallest clearness of a pick relative to the head's spread


def _exact_variances(T_r: Tensor, covariance: Tensor) -> Tensor:
    """t_j^T S t_j for every text of every head: [h, M]."""
    return torch.bmm(T_r, covariance).mul_(T_r).sum(-1)


def _centred_variance(C: Tensor, mean: Tensor, squared_norm: Tensor) -> Tensor:
    """|C - mean|_F^2 per head as |C|_F^2 - n |mean|^2, recomputed directly where that cancels badly."""
    n = C.shape[1]
    total = (squared_norm - n * mean.pow(2).sum(-1)).clamp_min(0)
    for i in (total < 1e-3 * squared_norm).nonzero().flatten().tolist():
        total[i] = torch.linalg.vector_norm(C[i] - mean[i]) ** 2
    return total


def _deflated(t: Tensor, basis: Tensor) -> Tensor:
    """Rows of t [h, c, r] minus their parts in the span of the orthonormal rows of basis [h, i, r] (twice)."""
    for _ in range(2):
        t = t - torch.bmm(torch.bmm(t, basis.transpose(1, 2)), basis)
    return t


def _span_chunk(
    C: Float[Tensor, "h n d"],
    T: Float[Tensor, "m d"],
    k: int,
    rank: int,
    tie_rtol: float,
    prefix_ks: Sequence[int],
    reconstruction_out: Tensor,
    prefix_out: dict[int, Tensor],
    eps_data: float,
) -> _ChunkResult:
    """TextSpan of one chunk of heads in C's dtype; writes reconstructions into the given [h, n, D] outputs.

    Texts and data are never deflated in memory: with Q the projection off the picked directions q_i (an
    orthonormal basis B), the deflated text j is Q t_j, computed only for the texts rescored exactly (so the
    rounding left in S along removed directions is not seen), the running variances use
    (Q t_j) . x = t_j . x for x in range(Q), and the reconstruction is mean + (C - mean) V_r^T B^T B V_r.
    """
    h_count, n, D = C.shape
    M = T.shape[0]
    device, dtype = C.device, C.dtype
    # The greedy bookkeeping (r x r covariances, running variances, picked directions) is float64 whatever
    # ``dtype`` is: it costs O(M r) per pick, and float32's rounding guard would send most picks to a rescoring
    # of every text. ``dtype`` governs the costly parts: the Gram matrix, its eigenvectors, the projections
    # and the reconstruction.
    work = torch.float64

    # Step 1: top-r right singular vectors of the raw data, masked beyond each head's numerical rank.
    r = min(n, D, rank)
    ranks, V, eigenvalues, squared_norm = _top_subspace(C, r, eps_data)  # V [h, r, D], rows beyond the rank 0
    eigenvalues = eigenvalues.to(work)  # [h, r], of the uncentred C^T C
    # [h, M, r], coordinates of T V_r^T V_r in the V_r basis; stored [h, r, M] so that the per-pick products
    # with all texts read contiguous rows (about 2.5x faster on CPU than with M outermost)
    T_r = torch.matmul(V, T.T).to(work).transpose(1, 2)

    # Step 2: centre. In the V_r basis the uncentred second moment is diag(eigenvalues), so the covariance of
    # the centred projected data is S = (diag(eigenvalues) - n (V m)(V m)^T) / n.
    mean = C.mean(dim=1)  # [h, D]
    total_variance = _centred_variance(C, mean, squared_norm).to(work)  # [h]
    spread = (total_variance / n).sqrt()  # [h], no unit text scores above it
    tie_tolerance = tie_rtol * spread[:, None]  # [h, 1]
    mean_r = torch.bmm(V, mean[..., None]).to(work)  # [h, r, 1]
    covariance = torch.diag_embed(eigenvalues / n) - mean_r * mean_r.transpose(1, 2)  # [h, r, r]
    # [h, M], t^T S t = sum_i (eigenvalue_i / n) t_i^2 - (t . V m)^2 (S is diagonal plus rank one), then updated per pick
    variances = torch.bmm((eigenvalues / n)[:, None, :], T_r.transpose(1, 2).square())[:, 0]
    variances.sub_(torch.bmm(mean_r.transpose(1, 2), T_r.transpose(1, 2))[:, 0].square_())
    eps = torch.finfo(work).eps

    # Step 3: k greedy picks, all heads at once; only the r x r covariance is deflated.
    head_ids = torch.arange(h_count, device=device)
    text_ids = torch.arange(M, device=device)
    indices = torch.zeros(h_count, k, dtype=torch.long, device=device)
    basis = torch.zeros(h_count, k, r, dtype=work, device=device)  # picked unit directions q_i (0 if none)
    variance_explained = torch.zeros(h_count, k, dtype=work, device=device)
    margin = torch.full((h_count,), float("inf"), dtype=work, device=device)
    safe_total = torch.where(total_variance > 0, total_variance, torch.ones_like(total_variance))
    safe_spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    n_rescored = min(_RESCORED, M)
    picked_directions = torch.zeros(h_count, dtype=torch.long, device=device)  # picks that removed something
    for i in range(k):
        # Rescore exactly every text whose running variance may lie in the tie band of the best.
        guard = 8 * (r + 2) * (i + 1) * eps * spread**2  # [h], bound on the running variances' drift
        best_running = variances.max(dim=-1).values
        floor = ((best_running - guard).clamp_min(0).sqrt() - tie_tolerance[:, 0]).clamp_min(0) ** 2 - guard
        close = (variances >= floor[:, None]).sum(-1)  # [h]
        top = variances.topk(n_rescored, dim=-1).indices  # [h, R]
        t_top = _deflated(T_r.transpose(1, 2).gather(2, top[:, None, :].expand(-1, r, -1)).transpose(1, 2), basis[:, :i])
        variances.scatter_(1, top, _exact_variances(t_top, covariance))
        # A head with as many directions picked as its rank is used up: its texts, deflated by an orthonormal
        # basis of their whole span, are rounding (|t| ~ 2 r eps), so every exact variance is below
        # (2 r eps)^2 spread^2, far under the tie tolerance^2: all its texts tie, the pick is index 0 and removes
        # nothing. Its variances are set to 0 instead of rescored.
        used_up = picked_directions >= ranks
        crowded = (close > n_rescored) & ~used_up
        if bool(crowded.any()):
            variances[crowded] = _exact_variances(_deflated(T_r[crowded], basis[crowded, :i]), covariance[crowded])
        variances.masked_fill_(used_up[:, None], 0.0)

        scores = variances.clamp_min(0).sqrt()  # std over images of C t
        best = scores.max(dim=-1, keepdim=True).values
        tied = scores >= best - tie_tolerance
        j = torch.where(tied, text_ids, M).min(dim=-1).values  # [h], lowest index among the best
        runner_up = torch.where(tied, torch.zeros_like(scores), scores).max(dim=-1).values
        clearness = torch.minimum(best[:, 0] - runner_up, (best[:, 0] - tie_tolerance[:, 0]).abs())
        margin = torch.minimum(margin, clearness / safe_spread)

        t = _deflated(T_r[head_ids, j][:, None], basis[:, :i])[:, 0]  # [h, r], the picked text after the earlier deflations
        tt = (t * t).sum(-1)  # [h]
        active = (best.squeeze(-1) > tie_tolerance.squeeze(-1)) & (tt > 0)  # else nothing is left to remove
        inv_tt = torch.where(active, 1 / torch.where(active, tt, torch.ones_like(tt)), torch.zeros_like(tt))
        # S <- P S P = S - t u^T - u t^T  with  u = S t / |t|^2 - (t^T S t) / (2 |t|^4) t
        s = torch.bmm(covariance, t[..., None]).squeeze(-1)  # [h, r]
        tst = (t * s).sum(-1)  # [h], variance of the data along t, times |t|^2
        u = s * inv_tt[:, None] - (tst * inv_tt**2 / 2)[:, None] * t
        covariance.baddbmm_(t[..., None], u[:, None, :], alpha=-1).baddbmm_(u[..., None], t[:, None, :], alpha=-1)
        dots = torch.bmm(torch.stack([t, u], dim=1), T_r.transpose(1, 2))  # [h, 2, M]: t_j . t and t_j . u
        variances.sub_(dots[:, 0].mul_(dots[:, 1]), alpha=2)  # v_j <- v_j - 2 (t_j . t)(t_j . u)
        basis[:, i] = t * inv_tt.sqrt()[:, None]
        picked_directions += active
        indices[:, i] = j
        removed_variance = n * tst * inv_tt * active  # |C t|^2 / |t|^2 = n t^T S t / |t|^2
        variance_explained[:, i] = torch.where(total_variance > 0, removed_variance / safe_total, 0.0)

    # Step 4: reconstruction = mean + the centred data projected on the picked directions (in span(V_r)).
    # One product per output, the mean folded in: [coefficients | 1] @ [directions ; mean].
    directions = torch.bmm(basis.to(dtype), V)  # [h, k, D], the q_i back in D dimensions
    # [h, n, k], as the transpose of directions @ Cᵀ: with the k-long side first the product runs about 2x faster
    coefficients = torch.bmm(directions, C.transpose(1, 2)).sub_(torch.bmm(directions, mean[..., None])).transpose(1, 2)
    ones = torch.ones(h_count, n, 1, dtype=dtype, device=device)
    for kk, out in [*prefix_out.items(), (k, reconstruction_out)]:
        torch.bmm(torch.cat([coefficients[..., :kk], ones], -1), torch.cat([directions[:, :kk], mean[:, None, :]], 1),
                  out=out)  # [h, n, D]
    return _ChunkResult(indices, variance_explained, mean, ranks, margin)


def _chunks(n_heads: int, per_head_bytes: int, max_memory: int | None) -> list[slice]:
    size = n_heads if max_memory is None else max(1, min(n_heads, max_memory // max(per_head_bytes, 1)))
    return [slice(a, min(a + size, n_heads)) for a in range(0, n_heads, size)]


def text_span(
    contributions: Float[Tensor, "*heads n_images d_out"],
    text_embeddings: Float[Tensor, "n_texts d_out"],
    k: int = 10,
    rank: int = 80,
    dtype: torch.dtype = torch.float64,
    texts: Sequence[str] | None = None,
    tie_rtol: float | None = None,
    prefix_ks: Sequence[int] = (),
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    redecide: bool | None = None,
    redecide_rtol: float = 1e-4,
    data_eps: float | None = None,
) -> TextSpanResult:
    """Pick k texts per head that greedily explain the most variance of that head's contributions.

    ``contributions`` holds each head's direct contribution to the image embeddings (after the LayerNorm fold
    and the projection); ``text_embeddings`` are unit text embeddings of a pool (used as given, not
    renormalised; rows off unit norm by more than 1e-3 raise, as do non-finite inputs). Heads are processed in
    chunks; see the module docstring for the math.

    * rank: the number of top right singular vectors of each head's raw data kept, capped at
      min(n_images, d_out, rank) and at the head's numerical rank (``ranks`` in the result): singular values
      at or below max(σ_1 max(n, D) eps, 8 data_eps |C|_F) are rounding (``rank.py``).
    * data_eps: the relative rounding of the stored data; default the machine epsilon of contributions'
      dtype, or float32's for float64 contributions that hold only float32 values. Directions below the
      data's rounding would make the picks depend on the forward pass's summation order.
    * variance_explained[..., i] = |C^(i-1) t_i|^2 / |t_i|^2 / |C - mean(C)|_F^2: the fraction of the head's
      total centred variance (all d_out dimensions) removed by pick i, C^(i-1) being the centred data after
      the earlier deflations. Summed over picks it equals 1 - |C - reconstruction|_F^2 / |C - mean(C)|_F^2.
    * ties (scores within tie_rtol * head spread, see ``ties.py``) go to the lowest text index.
    * computed and returned in ``dtype`` (float64 or float32) on the device of ``contributions``. For float32,
      ``redecide`` (default on) reruns in float64 every head that had a pick closer than ``redecide_rtol``
      (relative to the head's spread), and the tie rule is float64's, so the picks are float64's.
    * max_memory: bytes of working memory per chunk of heads (inputs and outputs not counted); None runs all
      heads at once.
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
    check_embeddings(text_embeddings, D, "text_embeddings", unit=True)  # the picks assume unit texts
    # one summing pass (a NaN or inf anywhere makes the sum non-finite); the element-wise test only on failure
    if not bool(torch.isfinite(contributions.sum())) and not bool(torch.isfinite(contributions).all()):
        raise BadInputError("contributions contain NaN or inf: TextSpan of such a head is undefined")
    if isinstance(k, bool) or not isinstance(k, int) or isinstance(rank, bool) or not isinstance(rank, int):
        raise BadInputError(f"k and rank must be integers, got k={k!r}, rank={rank!r}")
    if not 1 <= k <= M:
        raise ValueError(f"k must be between 1 and the number of texts ({M}); got {k}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1; got {rank}")
    if n < 1:
        raise ValueError("need at least one image")
    if texts is not None and len(texts) != M:
        raise ValueError(f"got {len(texts)} texts for {M} text embeddings")
    if any(not 1 <= kk <= k for kk in prefix_ks):
        raise ValueError(f"prefix_ks must lie in 1..k={k}; got {list(prefix_ks)}")
    if max_memory is not None and max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes or None; got {max_memory}")
    if data_eps is None:
        data_eps = storage_eps(contributions)
    elif not 0 <= data_eps < 1:
        raise ValueError(f"data_eps must lie in [0, 1); got {data_eps}")
    redecide = dtype == torch.float32 if redecide is None else redecide and dtype == torch.float32
    if tie_rtol is None:
        tie_rtol = default_tie_rtol("float64" if redecide else str(dtype))

    device = contributions.device
    flat = contributions.reshape(-1, n, D)  # [H, n, D], a view when possible
    H = flat.shape[0]
    result = _run_chunks(flat, text_embeddings, k, rank, dtype, tie_rtol, prefix_ks, max_memory, data_eps)
    if redecide:
        unclear = (result["margin"] < redecide_rtol).nonzero().squeeze(-1)
        if len(unclear):
            exact = _run_chunks(flat[unclear], text_embeddings, k, rank, torch.float64, tie_rtol, prefix_ks, max_memory,
                                data_eps)
            for key, value in exact.items():
                result[key][unclear] = value.to(result[key].dtype)
    result["redecided"] = torch.zeros(H, dtype=torch.bool, device=device)
    if redecide and len(unclear):
        result["redecided"][unclear] = True

    indices = result["indices"]
    picked_texts = None
    if texts is not None:
        picked_texts = _nest([[texts[j] for j in row] for row in indices.tolist()], heads_shape)
    return TextSpanResult(
        indices=indices.reshape(*heads_shape, k),
        variance_explained=result["variance_explained"].reshape(*heads_shape, k),
        reconstruction=result["reconstruction"].reshape(*heads_shape, n, D),
        mean=result["mean"].reshape(*heads_shape, D),
        ranks=result["ranks"].reshape(heads_shape),
        texts=picked_texts,
        prefix_reconstructions={kk: result[f"prefix_{kk}"].reshape(*heads_shape, n, D) for kk in sorted(set(prefix_ks))},
        redecided=result["redecided"].reshape(heads_shape),
    )


def _run_chunks(
    flat: Tensor,
    text_embeddings: Tensor,
    k: int,
    rank: int,
    dtype: torch.dtype,
    tie_rtol: float,
    prefix_ks: Sequence[int],
    max_memory: int | None,
    eps_data: float,
) -> dict[str, Tensor]:
    """Every head of ``flat`` [H, n, D] in chunks; outputs are allocated once and filled chunk by chunk."""
    H, n, D = flat.shape
    M = text_embeddings.shape[0]
    device = flat.device
    T = text_embeddings.to(device=device, dtype=dtype)
    itemsize = torch.finfo(dtype).bits // 8
    per_head = working_bytes_per_head(n, D, M, rank, itemsize, flat.dtype != dtype)
    out = {
        "indices": torch.zeros(H, k, dtype=torch.long, device=device),
        "variance_explained": torch.zeros(H, k, dtype=dtype, device=device),
        "reconstruction": torch.empty(H, n, D, dtype=dtype, device=device),
        "mean": torch.empty(H, D, dtype=dtype, device=device),
        "ranks": torch.zeros(H, dtype=torch.long, device=device),
        "margin": torch.empty(H, dtype=dtype, device=device),
    }
    for kk in sorted(set(prefix_ks)):
        out[f"prefix_{kk}"] = torch.empty(H, n, D, dtype=dtype, device=device)
    chunks = _chunks(H, per_head, max_memory)
    for chunk in tqdm(chunks, desc="TextSpan head chunks", disable=len(chunks) < 4, leave=False):
        prefix_out = {kk: out[f"prefix_{kk}"][chunk] for kk in sorted(set(prefix_ks))}
        part = _span_chunk(flat[chunk].to(dtype), T, k, rank, tie_rtol, prefix_ks, out["reconstruction"][chunk], prefix_out,
                           eps_data)
        for key in ("indices", "variance_explained", "mean", "ranks", "margin"):
            out[key][chunk] = getattr(part, key)
    return out



def _nest(flat: list[Any], shape: Sequence[int]) -> Any:
    """Turn a flat row-major list of per-head items into nested lists with the given head shape."""
    if len(shape) == 0:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0]
    return [_nest(flat[a * step : (a + 1) * step], shape[1:]) for a in range(shape[0])]
