"""The final-LayerNorm fold: the one place where that math lives.

The image embedding is ``y = LN(r) · P`` with ``LN(r) = γ ⊙ (r − μ)/σ + β``, μ and σ = sqrt(var(r) + ε) taken
over the FULL pooled residual r (one scalar each per image). Write r = Σ_c c as a sum of pieces, and give
each piece a share w_c with Σ w_c = 1. Then, exactly,

    y = Σ_c ĉ,     ĉ = (γ ⊙ (c − w_c·μ)/σ + w_c·β) · P            ("equal_share", the paper's default)

Alternatively, as TransformerLens' ``apply_ln_to_stack`` does, each piece is centred by its own mean:

    ĉ = (γ ⊙ (c − mean_d(c))/σ + w_c·β) · P                        ("own_mean")

Both sum to y exactly (Σ_c mean_d(c) = μ); they differ per piece. β is split by the shares in both.
Published shares: K = 2L+1 components (embedding, L attention layers, L MLPs), w = 1/K each; a head gets
1/(K·H) and a (head, source token) piece 1/(K·H·N).

A text score of a piece is ĉ · t. With g_t = γ ⊙ (P t) (the text pulled back to width d) it is

    ĉ · t = (c·g_t − m_c·Σ_d g_t)/σ + w_c·(β · P t),   m_c = w_c·μ (equal_share) or mean_d(c) (own_mean)

so per-piece scores never need the D-dimensional pieces themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.errors import BadInputError
from vit_lens_clip.model.pooling import compute_dtype
from vit_lens_clip.validation import host_check

Convention = Literal["equal_share", "own_mean"]
CONVENTIONS = ("equal_share", "own_mean")


def ln_statistics(x: Float[Tensor, "*batch d"], eps: float) -> tuple[Float[Tensor, "*batch"], Float[Tensor, "*batch"]]:
    """A LayerNorm's statistics of x: μ = mean_d(x) and σ = sqrt(var_d(x) + ε), in ``compute_dtype`` (float32
    at least, float64 for float64 input) like the model's LayerNorm. The one place they are recomputed."""
    x = x.to(compute_dtype(x.dtype))
    mean = x.mean(-1)
    return mean, ((x - mean[..., None]).pow(2).mean(-1) + eps).sqrt()


@dataclass(frozen=True)
class LNFold:
    """Statistics of the pooled residual and the final LayerNorm + projection, ready to fold into pieces."""

    mean: Float[Tensor, " batch"]
    scale: Float[Tensor, " batch"]
    gamma: Float[Tensor, " d"]
    beta: Float[Tensor, " d"]
    proj: Float[Tensor, "d d_out"]
    convention: Convention = "equal_share"

    @classmethod
    def from_residual(
        cls,
        pooled_residual: Float[Tensor, "batch d"],
        gamma: Float[Tensor, " d"],
        beta: Float[Tensor, " d"],
        proj: Float[Tensor, "d d_out"],
        eps: float,
        convention: Convention = "equal_share",
    ) -> "LNFold":
        """μ(r) and σ(r) = sqrt(var(r) + ε) (``ln_statistics``), in float32, or float64 for a float64 model."""
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        mean, scale = ln_statistics(pooled_residual, eps)
        work = compute_dtype(torch.promote_types(pooled_residual.dtype, proj.dtype))
        return cls(mean.to(work), scale.to(work), gamma.detach().to(work), beta.detach().to(work),
                   proj.detach().to(work), convention)

    @property
    def dtype(self) -> torch.dtype:
        """The precision the fold works in (float32, or float64 for a float64 model)."""
        return self.proj.dtype

    def _per_batch(self, x: Tensor, ndim: int) -> Tensor:
        return x.reshape(-1, *([1] * (ndim - 1)))

    def fold(self, pieces: Float[Tensor, "batch *parts d"], share: float) -> Float[Tensor, "batch *parts d_out"]:
        """ĉ = (γ ⊙ (c − m_c)/σ + w·β) · P for every piece c (batch first)."""
        pieces = pieces.to(self.proj.dtype)
        if self.convention == "equal_share":
            centred = pieces - share * self._per_batch(self.mean, pieces.ndim)
        else:
            centred = pieces - pieces.mean(-1, keepdim=True)
        normed = self.gamma * centred / self._per_batch(self.scale, pieces.ndim) + share * self.beta
        return normed @ self.proj

    def pull_back(self, texts: Float[Tensor, "n_texts d_out"]) -> Float[Tensor, "d n_texts_plus_1"]:
        """Width-d directions [g_t for each text, 1]: dot a piece with them to score it (see ``scores``)."""
        g = self.gamma[:, None] * (self.proj @ texts.to(self.proj.dtype).T)
        return torch.cat([g, torch.ones_like(g[:, :1])], dim=1)

    def scores(
        self,
        dots: Float[Tensor, "batch *parts n_texts_plus_1"],
        texts: Float[Tensor, "n_texts d_out"],
        share: float,
    ) -> Float[Tensor, "batch *parts n_texts"]:
        """ĉ · t from c · [g_t, 1] (``dots``, from ``pull_back``), without forming ĉ."""
        texts, dots = texts.to(self.proj.dtype), dots.to(self.proj.dtype)
        g_sum = (self.gamma[:, None] * (self.proj @ texts.T)).sum(0)  # Σ_d g_t  [K]
        beta_t = self.beta @ self.proj @ texts.T  # β · P t   [K]
        c_dot_g, c_sum = dots[..., :-1], dots[..., -1:]
        if self.convention == "equal_share":
            offset = share * self._per_batch(self.mean, dots.ndim)
        else:
            offset = c_sum / self.gamma.shape[0]
        return (c_dot_g - offset * g_sum) / self._per_batch(self.scale, dots.ndim) + share * beta_t


def embedding_norms(embedding: Float[Tensor, "batch d_out"], normalize: bool) -> Float[Tensor, " batch"]:
    """‖y‖ per image (what ``normalize=True`` divides every part by), or ones; a zero embedding raises, at once or,
    inside ``validation.deferred_checks()``, when the run reads its checks (no host read per batch)."""
    if not normalize:
        return torch.ones(embedding.shape[0], device=embedding.device, dtype=embedding.dtype)
    norm = embedding.norm(dim=-1)
    host_check(norm == 0, _zero_embedding_verdict)
    return norm


def _zero_embedding_verdict(zero: Tensor, where: Optional[Tensor]) -> None:
    if bool(zero.any()):
        rows = zero.nonzero().flatten()
        named = rows.tolist() if where is None else where[rows].tolist()
        which = "image(s)" if where is None else "dataset image(s)"
        raise BadInputError(f"normalize=True: {which} {named[:20]} have a zero embedding, "
                            "so their parts cannot be divided by its norm; use normalize=False")
