"""Readouts: the one place that knows which tokens exist and which row the embedding is read from.

The residual stream is [prefix tokens | patches]: an optional class token at position 0, then the register
tokens (DINOv2-style), then the grid of patches. A tower's embedding is read by one readout:

- ``TokenReadout``: one position, the class token (position 0) or a per-sequence index (a text's EOT token);
- ``MeanReadout``: the mean over the patch positions (prefix tokens excluded, as open_clip's CLIPA and timm do);
- an attentional pooler (CoCa, SigLIP / timm ``global_pool="map"``, PE-Core): the pooler's query 0 attends over
  the trunk's tokens; its own ``Attention`` reads that query with a ``TokenReadout``, and the trunk has no
  pooled row (``readout_for`` returns None and the trunk's attention has no pooled hooks).

A readout does three things for a per-position tensor x [B, pos, d] (or a pattern [B, H, query, source]):
``pool(x)`` (the pooled row), ``pooled_pattern`` (the pooled query's attention row) and ``add_to_pooled``
(write a change of the pooled output back into the row(s) it is read from: pooled = Σ_q w_q out_q with
Σ_q w_q = 1 over the support, so adding the change to every row of the support moves the pool by exactly it).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

PoolType = Literal["tok", "avg", "map"]
POOL_TYPES = ("tok", "avg", "map")


class NoPooledTokenError(ValueError):
    """The trunk of an attention-pooled tower (SigLIP, MAP) has no pooled token to read a row from."""


def n_prefix_tokens(class_token: bool, n_registers: int) -> int:
    """Tokens before the patches: the class token (if any) and the register tokens."""
    return int(class_token) + n_registers


def patch_slice(n_prefix: int) -> slice:
    """Positions of the patches in the residual stream."""
    return slice(n_prefix, None)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of internal statistics and patterns: float32 at least, float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


def _scores(q: Tensor, k: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Attention logits of given query rows q [B, H, e] against keys k [B, S, H, e] (+ the mask rows)."""
    dtype = compute_dtype(q.dtype)
    scores = torch.einsum("bhe,bshe->bhs", q.to(dtype), k.to(dtype)) / math.sqrt(q.shape[-1])
    return scores if mask is None else scores + mask.to(dtype)


class TokenReadout:
    """The embedding is read from one position: ``position`` (0: the class token), or per sequence from the
    ``pool_index`` given with the forward (a text's EOT token)."""

    needs_full_pattern = False
    is_position = True  # the pooled row is a row of the stream: an edit of it can be written back before a norm

    def __init__(self, position: int = 0):
        self.position = position

    def pool(self, x: Float[Tensor, "batch *mid pos d"], pool_index: Optional[Int[Tensor, " batch"]] = None
             ) -> Float[Tensor, "batch *mid d"]:
        """x at the pooled position (the second-to-last axis; ``pool_index`` picks one per batch row)."""
        if pool_index is None:
            return x[..., self.position, :]
        return x.movedim(-2, 1)[torch.arange(x.shape[0], device=x.device), pool_index]

    def pooled_pattern(
        self,
        q: Float[Tensor, "batch n_query n_heads d_head"],
        k: Float[Tensor, "batch n_src n_heads d_head"],
        pattern: Optional[Float[Tensor, "batch n_heads n_query n_src"]] = None,
        attn_mask: Optional[Tensor] = None,
        pool_index: Optional[Int[Tensor, " batch"]] = None,
    ) -> Float[Tensor, "batch n_heads n_src"]:
        """A[h, m] of the pooled query: its row of the pattern, or softmax(q_pool · k / √e + mask) alone."""
        if pattern is not None:
            return self.pool(pattern, pool_index).to(compute_dtype(pattern.dtype))
        mask = None
        if attn_mask is not None:  # [B|1, H|1, Q, S] → the pooled query's rows [B, H|1, S]
            full = attn_mask.expand(q.shape[0], -1, q.shape[1], -1)
            mask = self.pool(full, pool_index)
        return _scores(self.pool(q.transpose(1, 2), pool_index), k, mask).softmax(-1)

    def add_to_pooled(self, out: Float[Tensor, "batch pos d"], change: Float[Tensor, "batch d"],
                      pool_index: Optional[Int[Tensor, " batch"]] = None) -> Float[Tensor, "batch pos d"]:
        """``out`` with ``change`` added at the pooled position."""
        out = out.clone()
        if pool_index is None:
            out[:, self.position] += change.to(out.dtype)
        else:
            out[torch.arange(out.shape[0], device=out.device), pool_index] += change.to(out.dtype)
        return out

    def replace_pooled(self, x: Float[Tensor, "batch pos d"], pooled: Float[Tensor, "batch d"],
                       pool_index: Optional[Int[Tensor, " batch"]] = None) -> Float[Tensor, "batch pos d"]:
        """``x`` with its pooled row replaced (an edit of ``hook_pooled`` written back before ln_final)."""
        x = x.clone()
        if pool_index is None:
            x[:, self.position] = pooled.to(x.dtype)
        else:
            x[torch.arange(x.shape[0], device=x.device), pool_index] = pooled.to(x.dtype)
        return x


class MeanReadout:
    """The embedding is read from the mean over the patch positions (after ``n_prefix`` prefix tokens)."""

    needs_full_pattern = True
    is_position = False  # a mean of rows: a per-position norm after it cannot be undone row by row

    def __init__(self, n_prefix: int):
        self.n_prefix = n_prefix

    def pool(self, x: Float[Tensor, "*batch pos d"], pool_index: Optional[Tensor] = None) -> Float[Tensor, "*batch d"]:
        """Mean of x over the patch positions (the second-to-last axis)."""
        return x[..., self.n_prefix:, :].mean(-2)

    def pooled_pattern(self, q: Tensor, k: Tensor, pattern: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                       pool_index: Optional[Tensor] = None) -> Float[Tensor, "batch n_heads n_src"]:
        """The mean of the patch queries' attention rows (needs the full pattern)."""
        if pattern is None:
            raise RuntimeError("average pooling reads the full pattern")
        return self.pool(pattern).to(compute_dtype(pattern.dtype))

    def add_to_pooled(self, out: Float[Tensor, "batch pos d"], change: Float[Tensor, "batch d"],
                      pool_index: Optional[Tensor] = None) -> Float[Tensor, "batch pos d"]:
        """``out`` with ``change`` added at every patch position (which moves their mean by exactly ``change``)."""
        out = out.clone()
        out[:, self.n_prefix:] += change.to(out.dtype)[:, None]
        return out

    def replace_pooled(self, x: Tensor, pooled: Tensor, pool_index: Optional[Tensor] = None) -> Tensor:
        """``x`` with every patch moved so that their mean is ``pooled``."""
        return self.add_to_pooled(x, pooled - self.pool(x), pool_index)


Readout = Union[TokenReadout, MeanReadout]


def readout_for(pool_type: str, n_prefix: int) -> Optional[Readout]:
    """The trunk's readout for a pool type: the class token, the patch mean, or None (an attentional pooler)."""
    if pool_type == "tok":
        return TokenReadout(0)
    if pool_type == "avg":
        return MeanReadout(n_prefix)
    if pool_type == "map":
        return None
    raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {pool_type!r}")


def trunk_readout(pool_type: str, n_prefix: int) -> Readout:
    """``readout_for``, raising ``NoPooledTokenError`` where the trunk has no pooled row."""
    readout = readout_for(pool_type, n_prefix)
    if readout is None:
        raise NoPooledTokenError(
            f"pool_type {pool_type!r}: the embedding is read by the attention pooler (attn_pool.*), not from a trunk token"
        )
    return readout


def pool_tokens(x: Float[Tensor, "*batch pos d"], pool_type: str, n_prefix: int) -> Float[Tensor, "*batch d"]:
    """Token pooling of any per-position tensor: CLS (position 0) or the mean over patch positions."""
    return trunk_readout(pool_type, n_prefix).pool(x)
