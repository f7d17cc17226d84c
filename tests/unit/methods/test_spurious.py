"""methods/spurious.py: group accuracies, seeded random heads, the table's rows, and cue/class effects that add up
part by part (synthetic contributions, no model)."""

import json

import pytest
import torch
from conftest import assert_refused

from vit_lens_clip.decompose.contributions import HeadContributions
from vit_lens_clip.decompose.decomposition import Decomposition
from vit_lens_clip.methods.spurious import (
    cue_and_class_effects,
    effects_markdown,
    group_accuracy,
    random_heads,
    spurious_table,
)


def test_group_accuracy():
    out = group_accuracy(torch.tensor([0, 1, 1, 0, 1]), torch.tensor([0, 1, 0, 0, 0]), torch.tensor([0, 0, 1, 1, 2]))
    assert out.per_group == {0: 1.0, 1: 0.5, 2: 0.0} and out.worst_group == 0.0 and out.average == pytest.approx(0.6)
    z = torch.zeros(3, dtype=torch.long)
    assert_refused(lambda: group_accuracy(z[:2], z, z), "predictions, labels and groups must have the same shape")


def test_random_heads_are_seeded_distinct_draws():
    candidates = [(l, h) for l in range(3) for h in range(4)]
    a = random_heads(candidates, 5, seed=1)
    assert a == random_heads(candidates, 5, seed=1) and len(set(a)) == 5 and set(a) <= set(candidates)
    assert a != random_heads(candidates, 5, seed=2) and a == sorted(a)
    with pytest.raises(ValueError, match="cannot draw"):
        random_heads(candidates, 13, seed=0)


def _contributions(n=8, H=2, D=2):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    groups = labels * 2 + (torch.arange(n) // 2) % 2
    heads = torch.randn(n, 1, H, D, generator=g) * 0.1
    heads[:, 0, 1, 1] += 3 * (2 * (groups % 2).float() - 1)  # head (1, 1) carries the spurious cue onto class 1
    embed = torch.zeros(n, D)
    embed[:, 0] = 1 - 2 * labels.float()  # the class signal lives in the embedding term
    embed[:, 1] = -(1 - 2 * labels.float())
    means = {"heads": heads.mean(0), "embed": embed.mean(0), "mlps": torch.zeros(2, D), "attns": torch.zeros(2, D)}
    contributions = HeadContributions(heads=heads, layers=[1], embed=embed, embedding=embed + heads.sum((1, 2)),
                                      labels=labels, indices=torch.arange(n), means=means, normalized=False, n_layers=2)
    return contributions, labels, groups


def test_spurious_table_rows_and_outputs():
    contributions, labels, groups = _contributions()
    table = spurious_table(contributions, labels, groups, torch.eye(2), role_heads=[(1, 1)], n_random_seeds=2)
    settings = [r.setting for r in table.rows]
    assert settings[0] == "baseline" and settings[1] == "extra ablations only"
    role = next(r for r in table.rows if r.heads == [(1, 1)])
    # the cue outweighs the class where they disagree; ablating the cue head makes every group right
    assert table.row("baseline").worst_group == 0.0 and table.row("baseline").average == 0.5
    assert role.worst_group == 1.0
    assert json.loads(table.to_json())["rows"][0]["setting"] == "baseline"
    assert "baseline" in table.to_markdown()
    with pytest.raises(KeyError):
        table.row("no such setting")


def test_cue_and_class_effects_add_up():
    g = torch.Generator().manual_seed(1)
    n, L, H, D = 8, 2, 2, 3
    labels, cues = torch.arange(n) % 2, (torch.arange(n) // 2) % 2
    heads = torch.randn(n, 1, H, D, generator=g)
    attns, mlps, embed = torch.randn(n, L, D, generator=g), torch.randn(n, L, D, generator=g), torch.randn(n, D, generator=g)
    attns[:, 1] = heads[:, 0].sum(1)
    parts = Decomposition(embed=embed, attns=attns, mlps=mlps, heads=heads, layers=[1],
                          embedding=embed + attns.sum(1) + mlps.sum(1), convention="equal_share", normalized=False)
    rows = cue_and_class_effects(parts, torch.randn(D, 2, generator=g), labels, cues)
    by = {r.component: r for r in rows}
    assert [r.component for r in rows] == ["embed", "L0.attn", "L0.mlp", "L1.attn", "L1.H0", "L1.H1", "L1.mlp", "total"]
    parts_sum = sum(by[c].cue for c in ("embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp"))
    assert parts_sum == pytest.approx(by["total"].cue, abs=1e-5)
    assert by["L1.H0"].label + by["L1.H1"].label == pytest.approx(by["L1.attn"].label, abs=1e-5)
    table = effects_markdown(rows, top=2)
    assert table.count("\n") == 2 + 2 and "L1.attn" not in table and table.splitlines()[-1].startswith("| total")
    with pytest.raises(ValueError, match="both values"):
        cue_and_class_effects(parts, torch.randn(D, 2), labels, torch.zeros(n, dtype=torch.long))
