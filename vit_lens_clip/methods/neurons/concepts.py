"""Concepts from neurons: the texts of the neurons active on an image, and spurious words for a class pair.

Concept discovery (per image I): neurons active on I = those with ‖δ_n(I)‖ > τ_n; each text w of their sparse
decompositions scores Σ_{active n} coef_{n,w}·‖δ_n(I)‖; the top texts describe I.

Spurious words (the in-scope half of the paper's semantic adversarial images): for classes c0 (target) and
c1 (true), Δ = t̂(c0) − t̂(c1); rank neurons by |⟨r_n, Δ⟩|, keep the top ``n_neurons``; every decomposition
entry (coef, w) of those neurons scores coef·⟨r_n, Δ⟩ (summed per word); words that name the classes, or
whose text embedding has cosine ≥ ``max_cosine`` with c0's, are dropped. High scores = words that push c1
images towards c0 through neurons.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.methods.neurons.omp import SparseCode


def image_concepts(
    norms: Float[Tensor, "images neurons"],
    threshold: Float[Tensor, " neurons"],
    code: SparseCode,
    texts: Sequence[str],
    top: int = 10,
) -> list[list[tuple[str, float]]]:
    """Per image, the ``top`` texts by Σ_{active n} coef_{n,w}·‖δ_n(I)‖ (empty when no neuron is active)."""
    out = []
    for row in norms:
        active = (row > threshold).nonzero()[:, 0]
        scores: dict[int, float] = defaultdict(float)
        for n in active.tolist():
            for a, c in zip(code.atoms[n].tolist(), code.coefs[n].tolist()):
                scores[a] += c * float(row[n])
        best = sorted(scores.items(), key=lambda kv: -kv[1])[:top]
        out.append([(texts[a], s) for a, s in best])
    return out


def spurious_words(
    directions: Float[Tensor, "neurons d_out"],
    code: SparseCode,
    texts: Sequence[str],
    target: Float[Tensor, " d_out"],
    true: Float[Tensor, " d_out"],
    blocked: Sequence[str] = (),
    text_embeddings: Optional[Float[Tensor, "n_texts d_out"]] = None,
    max_cosine: float = 0.6,
    n_neurons: int = 50,
    top: int = 20,
) -> list[tuple[str, float]]:
    """Words that neurons tie to ``target`` against ``true`` (unit class text embeddings), best first."""
    delta = (target - true).float()
    along = directions.float() @ delta  # [N]
    chosen = along.abs().topk(min(n_neurons, len(along))).indices
    scores: dict[int, float] = defaultdict(float)
    for n in chosen.tolist():
        for a, c in zip(code.atoms[n].tolist(), code.coefs[n].tolist()):
            scores[a] += c * float(along[n])
    blocked_lower = [b.lower() for b in blocked]
    keep = []
    for a, s in sorted(scores.items(), key=lambda kv: -kv[1]):
        if s <= 0 or any(b in texts[a].lower() for b in blocked_lower):
            continue
        if text_embeddings is not None and float(text_embeddings[a].float() @ target.float()) >= max_cosine:
            continue
        keep.append((texts[a], s))
    return keep[:top]
