"""Helpers every converter may use: the refusal, identity and LayerNorm checks, and the per-head weight layouts.

A converter imports these (and nothing private of another converter); the registry adds the supported families
to a refusal's message, so a converter names only its tower, its origin and the reason.
"""

from __future__ import annotations

from typing import Optional

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens_clip.errors import UnsupportedTowerError


def unsupported_tower(tower: str, origin: str, why: str = "") -> UnsupportedTowerError:
    """An UnsupportedTowerError naming the tower, where it comes from and why it is refused."""
    reason = f" ({why})" if why else ""
    return UnsupportedTowerError(f"{origin} image tower {tower} is not supported{reason}")


def is_identity(module: Optional[nn.Module]) -> bool:
    """True for a missing module, ``nn.Identity`` and ``nn.Dropout`` (the identity at evaluation)."""
    return module is None or isinstance(module, (nn.Identity, nn.Dropout))


def affine_layer_norm(module: Optional[nn.Module], where: str, tower: str, origin: str = "timm") -> Optional[nn.Module]:
    """The LayerNorm itself (None for an identity); any other norm (RMSNorm, a LayerNorm without γ/β) is refused."""
    if is_identity(module):
        return None
    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        raise unsupported_tower(tower, origin, f"{where} is {type(module).__name__}, not an affine LayerNorm")
    return module


def heads_in(
    weight: Float[Tensor, "d_heads d_in"], bias: Optional[Float[Tensor, " d_heads"]], n_heads: int, prefix: str,
    letter: str,
) -> dict[str, Tensor]:
    """A fused q, k or v projection as TransformerLens' ``W_{letter}`` [head, d_in, d_head] and ``b_{letter}``."""
    out = {f"{prefix}.W_{letter}": einops.rearrange(weight, "(h e) i -> h i e", h=n_heads)}
    b = bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    out[f"{prefix}.b_{letter}"] = einops.rearrange(b, "(h e) -> h e", h=n_heads)
    return out


def heads_out(
    weight: Float[Tensor, "d_out d_heads"], bias: Optional[Float[Tensor, " d_out"]], n_heads: int, prefix: str,
    gamma: Optional[Float[Tensor, " d_out"]] = None,
) -> dict[str, Tensor]:
    """The output projection as ``W_O`` [head, d_head, d_out] and ``b_O``, a LayerScale γ folded in:
    (x·W + b)·γ = x·(W·γ) + b·γ."""
    W = einops.rearrange(weight, "j (h e) -> h e j", h=n_heads)
    b = bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    if gamma is not None:
        W, b = W * gamma, b * gamma
    return {f"{prefix}.W_O": W, f"{prefix}.b_O": b}
