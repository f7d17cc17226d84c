"""How TextSpan decides a head's numerical rank: which singular directions of its data carry data.

Step 1 of TextSpan keeps the top ``rank`` right singular vectors of a head's raw contributions C [n, D]. A
singular value σ_i counts only when it is above both floors:

* the rounding of the decomposition itself, σ_1 · max(n, D) · eps_work (LAPACK's usual cut; eps_work is the
  machine epsilon of the dtype TextSpan computes in);
* the rounding the data were stored with, 8 · eps_data · |C|_F. Rounding every entry of C to a precision with
  unit roundoff u = eps_data / 2 adds a matrix E with |E|_2 <= |E|_F <= u |C|_F, so no singular value that
  rounding creates exceeds 1/16 of this floor.

Why the second floor matters: a head writes through W_O, so its contribution has rank at most d_head plus a few
dimensions from the LayerNorm fold, below the published rank of 80 (d_head = 64 in ViT-B/L, 32 in the embedded
model). Stored in float32, C then has further directions at about 0.4 eps_32 σ_1 that are rounding noise.
Kept, they enter every projected text, its norm and, through the deflations, the later picks, which then
change with the summation order of the forward pass (batch size, device, thread count). Above the floor, the
picks are the same for any rounding of the same data.

eps_data is the machine epsilon of C's dtype, or float32's when every value of a float64 C is a float32 value
(float32 contributions cast up); ``storage_eps`` decides it and ``text_span(data_eps=...)`` overrides it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

DATA_FLOOR = 8.0  # singular values at or below DATA_FLOOR * eps_data * |C|_F are the data's rounding
_SAMPLED = 4096  # values checked first for being float32 values when a float64 C is given
_CHECKED_ROWS = 65536  # rows per block of the full check that follows a passing sample


def _all_float32_values(C: Tensor) -> bool:
    """Whether every value of a float64 tensor is a float32 value. A sample of 4096 values spread over the
    tensor decides for genuinely float64 data (they fail on the first few); a passing sample is confirmed on
    every value, block by block, so data that are float32 values only in part count as float64."""
    m = min(_SAMPLED, C.numel())
    index = torch.arange(m, device=C.device) * (C.numel() - 1) // max(m - 1, 1)
    sample = torch.take(C, index)
    if not bool((sample.float().double() == sample).all()):
        return False
    rows = C.reshape(-1, C.shape[-1]) if C.ndim else C.reshape(1, 1)
    return all(bool((block.float().double() == block).all()) for block in rows.split(_CHECKED_ROWS))


def storage_eps(contributions: Tensor | np.ndarray) -> float:
    """Machine epsilon of the precision the values of ``contributions`` are stored in: the dtype's, except for
    float64 data whose values are all float32 values (float32 contributions cast up): float32's."""
    C = torch.as_tensor(contributions)
    if not C.is_floating_point():
        raise TypeError(f"contributions must be floating point, not {C.dtype}")
    if C.dtype == torch.float64 and C.numel() and _all_float32_values(C):
        return torch.finfo(torch.float32).eps
    return torch.finfo(C.dtype).eps


def rank_cut(
    sigma_1: Tensor | float, frobenius: Tensor | float, n: int, D: int, eps_work: float, eps_data: float
) -> Tensor | float:
    """The σ below which a singular direction is rounding: max(σ_1 max(n, D) eps_work, 8 eps_data |C|_F)."""
    algorithmic = sigma_1 * max(n, D) * eps_work
    stored = frobenius * DATA_FLOOR * eps_data
    if isinstance(algorithmic, Tensor):
        return torch.maximum(algorithmic, torch.as_tensor(stored, dtype=algorithmic.dtype, device=algorithmic.device))
    return max(algorithmic, stored)


def numerical_rank(
    singular_values: np.ndarray, n_rows: int, n_cols: int, eps: float | np.floating, eps_data: float | np.floating = 0.0
) -> int:
    """Number of singular values above ``rank_cut`` (all singular values of C given, so |C|_F = |σ|_2)."""
    if singular_values.size == 0 or singular_values[0] <= 0:
        return 0
    frobenius = float(np.sqrt(np.sum(np.asarray(singular_values, dtype=np.float64) ** 2)))
    cut = rank_cut(float(singular_values[0]), frobenius, n_rows, n_cols, float(eps), float(eps_data))
    return int(np.sum(singular_values > cut))
