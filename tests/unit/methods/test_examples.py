"""TopExamples keeps exactly the brute-force top-k (ties by index), streamed, resumed and merged over ranks."""

from __future__ import annotations

import pytest
import torch

from vit_lens_clip import HookedViT, ViTConfig
from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.decompose.reducers import run_reducers
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.examples import (
    HeadUnit,
    HookFeatures,
    HookUnit,
    TopExamples,
    brute_force_top,
    principal_directions,
)


def _brute(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column: sort all (score, index) pairs, higher score first, lower index on ties (Python's sort)."""
    return brute_force_top(scores, torch.arange(len(scores)), k)


def _scores(n: int = 203, units: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 12, (n, units), generator=g).double() / 4  # many exact ties
    scores[:, 0] = torch.randn(n, generator=g, dtype=torch.float64)
    return scores


def _units(n: int) -> list[HeadUnit]:
    return [HeadUnit(0, h, torch.zeros(4)) for h in range(n)]


def test_streamed_top_and_bottom_equal_brute_force_with_ties_by_index():
    scores = _scores()
    reducer = TopExamples(_units(scores.shape[1]), k=7, bottom=True)
    for start in range(0, len(scores), 17):
        reducer.add(scores[start:start + 17], torch.arange(start, min(start + 17, len(scores))))
    out = reducer.result()
    values, indices = _brute(scores, 7)
    assert torch.equal(out["top_scores"], values) and torch.equal(out["top_indices"], indices)
    low_values, low_indices = _brute(-scores, 7)
    assert torch.equal(out["bottom_scores"], -low_values) and torch.equal(out["bottom_indices"], low_indices)


def test_merge_across_ranks_and_resume_give_the_single_process_result():
    scores, k = _scores(), 9
    single = TopExamples(_units(5), k=k, bottom=True)
    single.add(scores, torch.arange(len(scores)))
    ranks = [TopExamples(_units(5), k=k, bottom=True) for _ in range(3)]
    for r, reducer in enumerate(ranks):  # strided split, as a distributed sampler does
        reducer.add(scores[r::3], torch.arange(len(scores))[r::3])
    merged = ranks[2]
    merged.merge(ranks[0])
    merged.merge(ranks[1])
    for key, value in single.result().items():
        assert value == merged.result()[key] if key == "names" else torch.equal(value, merged.result()[key]), key
    first = TopExamples(_units(5), k=k, bottom=True)
    first.add(scores[:100], torch.arange(100))
    resumed = TopExamples(_units(5), k=k, bottom=True)
    resumed.load_state_dict({key: v.clone() for key, v in first.state_dict().items()})
    resumed.add(scores[100:], torch.arange(100, len(scores)))
    assert all(torch.equal(a, b) for a, b in zip(single.state_dict().values(), resumed.state_dict().values()))


def test_nan_scores_are_never_kept():
    reducer = TopExamples(_units(1), k=3)
    reducer.add(torch.tensor([[float("nan")], [1.0], [2.0], [0.5]]), torch.arange(4))
    assert reducer.result()["top_indices"].tolist() == [[2, 1, 3]]


def test_head_and_hook_units_in_run_reducers_match_direct_scores():
    torch.manual_seed(0)
    cfg = ViTConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, output_dim=16, image_size=16, patch_size=8)
    model = HookedViT(cfg).eval()
    images = torch.randn(11, 3, 16, 16)
    text = torch.randn(16)
    hook_direction = torch.randn(32)
    units = [HeadUnit(1, 2, text), HeadUnit(0, 1, -text), HookUnit("blocks.0.hook_resid_post", hook_direction, 0, "resid0")]
    reducer = TopExamples(units, k=4, bottom=True)
    run_reducers(model, TensorImages(images), [reducer], batch_size=3, extra_hooks=reducer.hooks(), progress=False)
    dec = decompose(model, images)
    _, cache = model.run_with_cache(images)
    scores = torch.stack([dec.heads[:, 1, 2] @ text, dec.heads[:, 0, 1] @ -text,
                          cache["blocks.0.hook_resid_post"][:, 0] @ hook_direction], 1).double()
    out = reducer.result()
    assert out["names"] == ["L1H2", "L0H1", "resid0"]
    _, indices = _brute(scores, 4)
    assert torch.equal(out["top_indices"], indices)
    torch.testing.assert_close(out["top_scores"], scores.gather(0, indices.T).T, rtol=1e-5, atol=1e-5)


def test_principal_direction_is_the_top_singular_vector_with_the_tail_on_top():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(200, 1, 1, 8, generator=g, dtype=torch.float64) * 0.1
    axis = torch.nn.functional.normalize(torch.randn(8, generator=g, dtype=torch.float64), dim=0)
    tail = torch.distributions.Exponential(1.0).sample((200,)).double()
    heads = base + (-tail)[:, None, None, None] * axis  # the long tail points along -axis
    d = principal_directions(heads)[0, 0]
    assert torch.allclose(d, -axis, atol=0.05)


def test_hook_features_and_head_shares_match_brute_force_on_direct_scores():
    """Many features of one hook (neurons: the hook itself; an encoder: a ReLU of a projection), pooled by max, mean
    or the class token, and heads without a direction (their share ĉ·t/‖t‖² of each image's total t) are kept
    exactly as the brute-force top-k of the scores computed directly; a state merge equals one pass."""
    torch.manual_seed(0)
    cfg = ViTConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, output_dim=16, image_size=16, patch_size=8)
    model = HookedViT(cfg).eval()
    images = torch.randn(13, 3, 16, 16)
    enc = torch.randn(32, 5)
    units = [HeadUnit(1, 3), HookFeatures("blocks.0.mlp.hook_post", tuple(f"N{j}" for j in range(64))),
             HookFeatures("blocks.1.hook_resid_post", tuple(f"F{j}" for j in range(5)), lambda t: (t @ enc).relu(), "mean"),
             HookFeatures("blocks.1.hook_resid_post", ("cls0",), lambda t: t[..., :1], "cls")]
    whole = TopExamples(units, k=4)
    run_reducers(model, TensorImages(images), [whole], batch_size=5, extra_hooks=whole.hooks(), progress=False)
    dec = decompose(model, images, layers=[1])
    total = dec.total()
    _, cache = model.run_with_cache(images)
    resid = cache["blocks.1.hook_resid_post"]
    scores = torch.cat([(dec.heads[:, 0, 3] * total).sum(-1, keepdim=True) / total.pow(2).sum(-1, keepdim=True),
                        cache["blocks.0.mlp.hook_post"].amax(1), (resid @ enc).relu().mean(1), resid[:, 0, :1]], 1)
    out = whole.result()
    assert out["names"][:3] == ["L1H3", "N0", "N1"] and out["names"][-1] == "cls0" and len(out["names"]) == 71
    values, indices = _brute(scores.double(), 4)
    assert torch.equal(out["top_indices"], indices)
    torch.testing.assert_close(out["top_scores"], values, rtol=1e-5, atol=1e-6)
    halves = [TopExamples(units, k=4) for _ in range(2)]
    for half, rows in zip(halves, (range(0, 6), range(6, 13))):
        half.add(scores[list(rows)].double(), torch.tensor(list(rows)))
    halves[0].merge_state(halves[1].state_dict())
    assert torch.equal(halves[0].result()["top_indices"], indices)
    with pytest.raises(BadInputError, match="pool"):
        HookFeatures("h", ("a",), None, "median")


def test_brute_force_top_leaves_nan_out_and_breaks_ties_by_index():
    values, indices = brute_force_top(torch.tensor([[1.0], [float("nan")], [1.0], [3.0]]), torch.tensor([7, 5, 2, 9]), 3)
    assert indices.tolist() == [[9, 2, 7]] and values.tolist() == [[3.0, 1.0, 1.0]]
