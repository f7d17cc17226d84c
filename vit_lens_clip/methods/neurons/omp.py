"""Sparse text decomposition of neuron directions: orthogonal matching pursuit, batched over neurons in torch.

For a target r ∈ R^D and a dictionary of text atoms X [M, D], OMP picks k atoms greedily: at each step the
atom with the largest |⟨x_m, residual⟩|, then the residual of the least-squares fit on all picked atoms
(min ‖r − Σ c_i x_i‖), kept as r − Q Qᵀ r with an orthonormal basis Q of the picks grown by one step each.
Every neuron runs in lockstep, so the whole batch is one matrix product per step (GPU-ready). Same algorithm
as scikit-learn's ``OrthogonalMatchingPursuit``; the coefficients come from one least-squares solve at the end.

The pool is prepared as the paper's code does (text embeddings, unit norm, ×100, minus the pool mean), and
then either each TEXT is scaled to unit norm ("text", the default: atoms compete on direction, not length)
or each embedding DIMENSION is scaled to norm 100 ("dimension", the published behaviour, which favours
long atoms).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

Normalization = Literal["text", "dimension"]


def prepare_pool(embeddings: Float[Tensor, "n_texts d_out"],
                 normalization: Normalization = "text") -> Float[Tensor, "n_texts d_out"]:
    """Centred pool atoms: unit text embeddings ×100 minus their mean, then per-text or per-dimension scaling."""
    if normalization not in ("text", "dimension"):
        raise ValueError(f"normalization must be 'text' or 'dimension', got {normalization!r}")
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"need a pool of at least 2 text embeddings [n, D], got {tuple(embeddings.shape)}")
    atoms = 100 * F.normalize(embeddings.float(), dim=-1)
    atoms = atoms - atoms.mean(0)
    if normalization == "text":
        return F.normalize(atoms, dim=-1)
    return 100 * atoms / atoms.norm(dim=0).clamp_min(1e-12)


@dataclass
class SparseCode:
    """k atoms per target, in the order OMP picked them, with their least-squares coefficients."""

    atoms: Int[Tensor, "batch k"]
    coefs: Float[Tensor, "batch k"]

    def reconstruct(self, dictionary: Float[Tensor, "n_atoms d"]) -> Float[Tensor, "batch d"]:
        """Σ_i c_i x_{a_i}."""
        return torch.einsum("bk,bkd->bd", self.coefs, dictionary.to(self.coefs)[self.atoms])

    def describe(self, texts: Sequence[str], top: int | None = None) -> list[list[tuple[str, float]]]:
        """(text, coefficient) per target, sorted by |coefficient| (signs kept: negative = points away)."""
        out = []
        for atoms, coefs in zip(self.atoms.tolist(), self.coefs.tolist()):
            pairs = sorted(zip(atoms, coefs), key=lambda p: -abs(p[1]))[:top]
            out.append([(texts[a], c) for a, c in pairs])
        return out


def omp(
    dictionary: Float[Tensor, "n_atoms d"],
    targets: Float[Tensor, "batch d"],
    k: int,
    batch_size: int = 1024,
    progress: bool = False,
) -> SparseCode:
    """Orthogonal matching pursuit of every target over the dictionary rows (float64 least squares)."""
    if not 1 <= k <= dictionary.shape[0]:
        raise ValueError(f"k must be in [1, {dictionary.shape[0]}] (the pool size), got {k}")
    if dictionary.shape[-1] != targets.shape[-1]:
        raise ValueError(f"dictionary width {dictionary.shape[-1]} != target width {targets.shape[-1]}")
    atoms, coefs = [], []
    starts = range(0, targets.shape[0], batch_size)
    for start in tqdm(starts, desc="OMP", disable=not progress or len(starts) < 2):
        a, c = _omp_batch(dictionary.double(), targets[start : start + batch_size].double(), k)
        atoms.append(a)
        coefs.append(c)
    return SparseCode(torch.cat(atoms), torch.cat(coefs).to(targets.dtype if targets.is_floating_point() else torch.float32))


def _omp_batch(X: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The residual after each pick is y − Q Qᵀ y, Q an orthonormal basis of the picked atoms grown by one
    Gram-Schmidt step (done twice, so Q stays orthonormal to rounding) per pick: the least-squares residual,
    without a solve per step. The coefficients are one least-squares solve on the k picked atoms at the end."""
    B, D = y.shape
    residual = y.clone()
    chosen = torch.zeros(B, k, dtype=torch.long, device=y.device)
    basis = y.new_zeros(B, k, D)  # rows q_1..q_s: orthonormal, spanning the picked atoms (a dependent atom adds 0)
    scale = X.norm(dim=-1).max()
    corr = y.new_empty(B, X.shape[0])  # reused: a fresh [B, M] buffer per step costs page faults
    for step in range(k):
        torch.mm(residual, X.T, out=corr).abs_()
        corr.scatter_(1, chosen[:, :step], -1.0)  # never pick an atom twice
        chosen[:, step] = corr.argmax(-1)
        v = X[chosen[:, step]]  # [B, D]
        for _ in range(2):  # classical Gram-Schmidt, twice
            v = v - torch.bmm(torch.bmm(v[:, None], basis[:, :step].transpose(1, 2)), basis[:, :step])[:, 0]
        norm = v.norm(dim=-1, keepdim=True)
        independent = norm > 1e-10 * scale
        q = torch.where(independent, v / torch.where(independent, norm, torch.ones_like(norm)), torch.zeros_like(v))
        basis[:, step] = q
        residual = residual - (residual * q).sum(-1, keepdim=True) * q
    with _one_cpu_thread(y):
        coefs = _least_squares(X[chosen].transpose(1, 2), y[..., None])
    return chosen, coefs


def _least_squares(A: Tensor, b: Tensor) -> Tensor:
    """min ‖A c − b‖ per batch item: QR (LAPACK gels, ~10× faster on CPU than the default gelsy, equal to
    ~1e-15 for the full-rank systems OMP builds); gelsy (rank-revealing) where QR gives a non-finite result."""
    coefs = torch.linalg.lstsq(A, b, driver="gels").solution[..., 0]
    if not torch.isfinite(coefs).all() and A.device.type == "cpu":
        coefs = torch.linalg.lstsq(A, b, driver="gelsy").solution[..., 0]
    return coefs


@contextmanager
def _one_cpu_thread(t: Tensor) -> Iterator[None]:
    """One intra-op thread for the batched tiny least-squares solves: with two threads, torch's batch loop and the
    library's own threads contend and the same work takes several times the CPU time (each solve is sequential
    either way: the result is the same). The per-step products run on every thread."""
    threads = torch.get_num_threads()
    if t.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
