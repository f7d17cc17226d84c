"""methods/textspan/ranking.py: rank_heads_by_text scores each head by the fraction of its centred variance along
a text direction (checked against a per-head computation written out here), in [0, 1], invariant to the
direction's length and sign and to a head's mean; ties keep the label order; malformed inputs are refused."""

from __future__ import annotations

import pytest
import torch
from conftest import type_checks_off

from vit_lens_clip.methods.textspan.ranking import rank_heads_by_text

N, D = 30, 6


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fraction(C: torch.Tensor, t: torch.Tensor) -> float:
    """Σ_i ((c_i − c̄)·t)² / |t|² over Σ_i |c_i − c̄|², one head at a time, in float64."""
    C, t = C.double(), t.double()
    centred = C - C.mean(0)
    return float(((centred @ t) ** 2).sum() / (t @ t) / (centred**2).sum())


def test_fractions_match_the_definition_and_are_sorted():
    heads = torch.randn(5, N, D, generator=gen(0))
    t = torch.randn(D, generator=gen(1))
    heads[3] += torch.randn(N, 1, generator=gen(2)) * 4 * t  # head 3 varies mostly along t
    labels = [f"L0.H{h}" for h in range(5)]
    ranked = rank_heads_by_text(heads, t, labels)
    assert ranked[0][0] == "L0.H3"
    assert sorted(label for label, _ in ranked) == sorted(labels)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    for label, score in ranked:
        assert score == pytest.approx(fraction(heads[labels.index(label)], t), rel=1e-12)
        assert 0 <= score <= 1


def test_a_head_along_the_direction_scores_one_and_an_orthogonal_one_zero():
    t = torch.randn(D, generator=gen(3))
    along = torch.randn(N, 1, generator=gen(4)) * t + torch.randn(D, generator=gen(5))  # any offset
    ortho_dir = torch.randn(D, generator=gen(6))
    ortho_dir -= (ortho_dir @ t) / (t @ t) * t
    orthogonal = torch.randn(N, 1, generator=gen(7)) * ortho_dir
    ranked = dict(rank_heads_by_text(torch.stack([orthogonal, along]), t, ["ortho", "along"]))
    assert ranked["along"] == pytest.approx(1.0, abs=1e-12)
    assert ranked["ortho"] == pytest.approx(0.0, abs=1e-12)


def test_invariant_to_the_directions_length_and_sign_and_to_each_heads_mean():
    heads = torch.randn(4, N, D, generator=gen(8), dtype=torch.float64)
    t = torch.randn(D, generator=gen(9), dtype=torch.float64)
    labels = ["a", "b", "c", "d"]
    base = rank_heads_by_text(heads, t, labels)
    shifted = heads + torch.randn(4, 1, D, generator=gen(10), dtype=torch.float64) * 100
    for other in (rank_heads_by_text(heads, -7.5 * t, labels), rank_heads_by_text(shifted, t, labels)):
        assert [label for label, _ in other] == [label for label, _ in base]
        assert [s for _, s in other] == pytest.approx([s for _, s in base], rel=1e-9)


def test_float32_inputs_are_scored_in_float64():
    heads = torch.randn(2, N, D, generator=gen(11))
    t = torch.randn(D, generator=gen(12))
    assert rank_heads_by_text(heads.float(), t.float(), ["x", "y"]) == rank_heads_by_text(heads.double(),
                                                                                          t.double(), ["x", "y"])


def test_constant_heads_score_zero_and_ties_keep_the_label_order():
    t = torch.randn(D, generator=gen(13))
    constant = torch.ones(N, D)
    varying = torch.randn(N, D, generator=gen(14))
    heads = torch.stack([constant, varying, constant * 3, varying])
    ranked = rank_heads_by_text(heads, t, ["c1", "v1", "c2", "v2"])
    assert [label for label, _ in ranked] == ["v1", "v2", "c1", "c2"]
    assert ranked[2][1] == 0.0 and ranked[3][1] == 0.0
    labels = [("L", 1), ("L", 0)]  # any hashable labels, returned as given
    assert [label for label, _ in rank_heads_by_text(heads[[1, 3]], t, labels)] == labels


@pytest.mark.parametrize("heads, direction, labels, message", [
    (torch.zeros(N, D), torch.ones(D), ["a"], "need head_contributions"),
    (torch.zeros(1, N, D), torch.ones(D + 1), ["a"], "need head_contributions"),
    (torch.zeros(1, N, D), torch.ones(1, D), ["a"], "need head_contributions"),
    (torch.zeros(2, N, D), torch.ones(D), ["a"], "got 1 labels for 2 heads"),
    (torch.randn(1, N, D), torch.zeros(D), ["a"], "zero vector"),
])
def test_malformed_inputs_are_refused(heads, direction, labels, message):
    with type_checks_off(), pytest.raises(ValueError, match=message):
        rank_heads_by_text(heads, direction, labels)
