"""Pooling: the one place that knows which tokens exist and which one the embedding is read from.

The residual stream is [prefix tokens | patches]: an optional class token at position 0, then the register
tokens (DINOv2-style), then the grid of patches. The embedding is read from

- ``"tok"``: the class token (position 0);
- ``"avg"``: the mean over the patch positions (prefix tokens excluded, as open_clip's CLIPA and timm do);
- ``"map"``: an attentional pooler on top of the tower (SigLIP, timm ``global_pool="map"``); the trunk has no
  pooled token, the pooler's query attends over its source tokens.

Everything that needs "the pooled row" or "the patch positions" (the model, the decomposition, the spatial
baselines and maps) asks the functions here.
"""

from __future__ import annotations

from typing import Literal

from jaxtyping import Float
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


def pool_tokens(x: Float[Tensor, "... pos d"], pool_type: str, n_prefix: int) -> Float[Tensor, "... d"]:
    """Token pooling of any per-position tensor: CLS (position 0) or the mean over patch positions."""
    if pool_type == "tok":
        return x[..., 0, :]
    if pool_type == "avg":
        return x[..., n_prefix:, :].mean(-2)
    raise NoPooledTokenError(
        f"pool_type {pool_type!r}: the embedding is read by the attention pooler (attn_pool.*), not from a trunk token"
    )


def pooled_row(
    matrix: Float[Tensor, "*batch n_query n_src"], pool_type: str, n_prefix: int
) -> Float[Tensor, "*batch n_src"]:
    """Row of the pooled query in a [query, source] matrix: CLS, or the mean over the patch queries."""
    return pool_tokens(matrix, pool_type, n_prefix)
