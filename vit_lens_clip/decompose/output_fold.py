"""The fold from the pooled vector r to the output, for every kind of tower.

``y = LN(r)·P + b``: the LayerNorm fold of ``fold.LNFold`` when the tower has a final LayerNorm, the plain
linear map ``ĉ = c·P`` when it has none (SigLIP: the MAP head feeds the projection directly); a projection
bias b (timm classifier heads, open_clip linear projections with a bias) is split by the shares like β:
each piece gets ``w_c·b``, so the pieces still sum to y exactly. The text tower's projection bias follows the
same rule (it is not a separate part).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.decompose.fold import Convention, LNFold
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.pooling import compute_dtype


@dataclass(frozen=True)
class ProjectionFold:
    """No final LayerNorm: ĉ = c·P."""

    proj: Float[Tensor, "d d_out"]

    @property
    def dtype(self) -> torch.dtype:
        return self.proj.dtype

    def fold(self, pieces: Float[Tensor, "batch *parts d"], share: float) -> Float[Tensor, "batch *parts d_out"]:
        return pieces.to(self.proj.dtype) @ self.proj

    def pull_back(self, texts: Float[Tensor, "n_texts d_out"]) -> Float[Tensor, "d n_texts_plus_1"]:
        g = self.proj @ texts.to(self.proj.dtype).T
        return torch.cat([g, torch.ones_like(g[:, :1])], dim=1)

    def scores(self, dots: Tensor, texts: Tensor, share: float) -> Tensor:
        return dots[..., :-1].to(self.proj.dtype)


@dataclass(frozen=True)
class BiasedFold:
    """Any fold, plus the share w_c·b of the projection bias b on each piece."""

    inner: Union[LNFold, ProjectionFold]
    bias: Float[Tensor, " d_out"]

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def fold(self, pieces: Tensor, share: float) -> Tensor:
        return self.inner.fold(pieces, share) + share * self.bias

    def pull_back(self, texts: Tensor) -> Tensor:
        return self.inner.pull_back(texts)

    def scores(self, dots: Tensor, texts: Tensor, share: float) -> Tensor:
        return self.inner.scores(dots, texts, share) + share * (self.bias @ texts.to(self.bias.dtype).T)


OutputFold = Union[LNFold, ProjectionFold, BiasedFold]


def output_fold(
    model: Union[HookedViT, HookedTextTransformer], pooled: Float[Tensor, "batch d_pool"],
    convention: Convention = "equal_share",
) -> OutputFold:
    """The fold of the tower's ln_final (if any), projection and projection bias (if any) at pooled vector r.

    Both towers use it, so the projection bias is split the same way for images and texts: by the shares.
    """
    ln = model.ln_final
    work = compute_dtype(model.W_proj.dtype)
    fold: Union[LNFold, ProjectionFold]
    if ln is not None:
        fold = LNFold.from_residual(pooled, ln.w, ln.b, model.W_proj, ln.eps, convention)
    else:
        fold = ProjectionFold(model.W_proj.detach().to(work))
    bias: Optional[Tensor] = model.b_proj
    return fold if bias is None else BiasedFold(fold, bias.detach().to(work))
